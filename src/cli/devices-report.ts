/**
 * `dpfs devices`: what this machine can serve. The generalisation of DPFS's
 * list_emulation_managers: FUSE, vhost-user, and RDMA devices that may be DPUs.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { devFuseUsable } from '../devices/devfuse/device.js';

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
  out.push({
    transport: 'vhost-user-fs',
    usable: false,
    detail: `not in this build yet (unix sockets and memfd available${qemu ? `; ${qemu}` : '; no QEMU found'})`,
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
