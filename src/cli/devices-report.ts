/**
 * `dpfs devices`: what this machine can serve. The generalisation of DPFS's
 * list_emulation_managers: FUSE, vhost-user, and RDMA devices that may be DPUs, and the
 * kernel features the backends use when present.
 */
import { closeSync, existsSync, readdirSync, readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { availableParallelism, release } from 'node:os';
import { devFuseUsable } from '../devices/devfuse/device.js';
import { fuseUringEnabled, possibleCpus } from '../devices/devfuse/uring-channel.js';
import { native } from '../native/native.js';
import { Uring } from '../native/uring.js';

export interface DeviceReport {
  transport: string;
  usable: boolean;
  detail: string;
}

function read(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}

/** PCI device ids of NVIDIA/Mellanox BlueField DPUs, whose firmware can emulate virtio-fs. */
const BLUEFIELD = new Map([
  ['0xa2d2', 'BlueField'],
  ['0xa2d6', 'BlueField-2'],
  ['0xa2dc', 'BlueField-3'],
]);

export function reportDevices(): DeviceReport[] {
  const out: DeviceReport[] = [];
  const fuse = devFuseUsable();
  out.push({ transport: 'fuse (/dev/fuse)', usable: fuse.ok, detail: fuse.ok ? `kernel FUSE available; ${process.getuid?.() === 0 ? 'mounting as root' : 'not root: needs fusermount3'}` : fuse.reason });

  let qemu = '';
  try {
    qemu = execFileSync('qemu-system-x86_64', ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).split('\n')[0] ?? '';
  } catch {
    /* not installed */
  }
  let shared = '';
  try {
    closeSync(native().memfdCreate('dpfs-probe', 4096));
  } catch (err) {
    shared = (err as Error).message;
  }
  const cores = availableParallelism();
  out.push({
    transport: 'vhost-user-fs',
    usable: shared === '',
    detail: shared
      ? `no shared guest memory: ${shared}`
      : `virtio-fs devices for QEMU's vhost-user-fs-pci; ${cores} cores: ` +
        'request queues on the event loop (queue threads with -t)' +
        (qemu ? `; ${qemu}` : '; no QEMU found'),
  });

  const [major = 0, minor = 0] = release().split('.').map((n) => parseInt(n, 10));
  const passthrough = major > 6 || (major === 6 && minor >= 9);
  out.push({
    transport: 'kernel FUSE passthrough',
    usable: passthrough,
    detail: passthrough ? `Linux ${release()}: the kernel does reads and writes of open passthrough files` : `Linux ${release()}: needs 6.9 or later`,
  });
  const fuseRing = existsSync('/sys/module/fuse/parameters/enable_uring');
  out.push({
    transport: 'FUSE over io_uring',
    usable: fuseRing && fuseUringEnabled(),
    detail: !fuseRing
      ? `Linux ${release()}: no FUSE io_uring (6.14 or later, CONFIG_FUSE_IO_URING)`
      : fuseUringEnabled()
        ? `io = "uring" takes requests from ${possibleCpus()} CPU queues`
        : 'available but off: echo Y > /sys/module/fuse/parameters/enable_uring to allow io = "uring"',
  });
  const ring = Uring.get();
  out.push({
    transport: 'io_uring',
    usable: ring !== null,
    detail: ring ? 'file I/O that may wait goes to the kernel\'s workers' : "refused here (or DPFS_IO_URING=0): file I/O that may wait goes to libuv's pool",
  });

  const ib = '/sys/class/infiniband';
  const rdma = existsSync(ib) ? readdirSync(ib) : [];
  if (rdma.length === 0) {
    out.push({ transport: 'DPU virtio-fs emulation', usable: false, detail: 'no RDMA devices under /sys/class/infiniband' });
  }
  for (const dev of rdma) {
    const pciDevice = read(`${ib}/${dev}/device/device`) ?? '?';
    const model = BLUEFIELD.get(pciDevice);
    const fw = read(`${ib}/${dev}/fw_ver`) ?? '?';
    out.push({
      transport: `DPU virtio-fs emulation (${dev})`,
      usable: false,
      detail: model
        ? `${model}, firmware ${fw}: virtio-fs emulation capable; needs the DPU SDK transport (not in this build)`
        : `RDMA device ${pciDevice}, firmware ${fw}: no virtio-fs emulation`,
    });
  }
  return out;
}
