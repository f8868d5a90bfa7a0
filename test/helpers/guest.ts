/**
 * A Linux guest under QEMU that mounts a virtio-fs device and runs a workload script:
 * Debian's kernel, a busybox initramfs that loads the virtio and virtiofs modules, guest
 * memory shared as a memfd (which vhost-user needs). Output comes back on the serial console.
 */
import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Modules in load order (each after what it depends on). */
const MODULES = ['virtio_ring', 'virtio', 'virtio_pci_modern_dev', 'virtio_pci_legacy_dev', 'virtio_pci', 'fuse', 'virtiofs'];

export interface GuestKernel {
  vmlinuz: string;
  modules: string[];
}

/** The newest Debian kernel on this machine that has every module we need, if any. */
export function findKernel(): GuestKernel | undefined {
  if (!existsSync('/boot')) return undefined;
  const versions = readdirSync('/boot')
    .filter((f) => f.startsWith('vmlinuz-'))
    .map((f) => f.slice('vmlinuz-'.length))
    .sort()
    .reverse();
  for (const v of versions) {
    const depFile = `/lib/modules/${v}/modules.dep`;
    if (!existsSync(depFile)) continue;
    const dep = readFileSync(depFile, 'utf8');
    const paths = MODULES.map((m) => {
      const line = dep.split('\n').find((l) => l.split(':')[0]!.endsWith(`/${m}.ko`));
      return line ? `/lib/modules/${v}/${line.split(':')[0]}` : undefined;
    });
    if (paths.every(Boolean)) return { vmlinuz: `/boot/vmlinuz-${v}`, modules: paths as string[] };
  }
  return undefined;
}

export function guestToolsAvailable(): boolean {
  try {
    execFileSync('qemu-system-x86_64', ['--version'], { stdio: 'ignore' });
  } catch {
    return false;
  }
  return findKernel() !== undefined && existsSync('/bin/busybox') && existsSync('/usr/bin/cpio');
}

const INIT = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in ${MODULES.join(' ')}; do insmod /lib/modules/$m.ko || echo "GUEST: insmod $m failed"; done
mkdir -p /mnt
if mount -t virtiofs "$(cat /tag)" /mnt; then
  echo "GUEST: mounted"
  cd /mnt && sh /workload.sh; echo "GUEST: workload exit $?"
  cd / && umount /mnt && echo "GUEST: unmounted"
else
  echo "GUEST: mount failed"
fi
dmesg | grep -iE 'virtio|fuse' | sed 's/^/KMSG: /' | tail -20
poweroff -f
`;

/** Builds a gzip'd cpio initramfs around busybox, the modules and the workload. */
export function buildInitramfs(kernel: GuestKernel, tag: string, workload: string): { path: string; dispose: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'dpfs-initramfs-'));
  const root = join(dir, 'root');
  for (const d of ['bin', 'proc', 'sys', 'dev', 'mnt', 'lib/modules']) mkdirSync(join(root, d), { recursive: true });
  copyFileSync('/bin/busybox', join(root, 'bin/busybox'));
  chmodSync(join(root, 'bin/busybox'), 0o755);
  kernel.modules.forEach((m, i) => copyFileSync(m, join(root, 'lib/modules', `${MODULES[i]}.ko`)));
  writeFileSync(join(root, 'init'), INIT, { mode: 0o755 });
  writeFileSync(join(root, 'tag'), tag);
  writeFileSync(join(root, 'workload.sh'), workload, { mode: 0o755 });
  const path = join(dir, 'initramfs.cpio.gz');
  execFileSync('sh', ['-c', `cd "${root}" && find . | cpio -o -H newc --quiet | gzip -1 > "${path}"`]);
  return { path, dispose: () => rmSync(dir, { recursive: true, force: true }) };
}

export interface GuestRun {
  output: string;
  exitCode: number | null;
  timedOut: boolean;
}

/** Boots the guest against the vhost-user socket and returns its console output. */
export function runGuest(opts: { socket: string; tag: string; workload: string; timeoutMs: number; memMiB?: number; cpus?: number; requestQueues?: number }): Promise<GuestRun> {
  const kernel = findKernel();
  if (!kernel) throw new Error('no guest kernel with virtiofs modules');
  const initrd = buildInitramfs(kernel, opts.tag, opts.workload);
  const mem = opts.memMiB ?? 512;
  const args = [
    '-machine', 'q35,accel=tcg', '-cpu', 'max', '-smp', String(opts.cpus ?? 1), '-m', `${mem}M`,
    '-object', `memory-backend-memfd,id=mem,size=${mem}M,share=on`, '-numa', 'node,memdev=mem',
    '-chardev', `socket,id=vfs,path=${opts.socket}`,
    '-device', `vhost-user-fs-pci,chardev=vfs,tag=${opts.tag},queue-size=256${opts.requestQueues ? `,num-request-queues=${opts.requestQueues}` : ''}`,
    '-kernel', kernel.vmlinuz, '-initrd', initrd.path,
    '-append', 'console=ttyS0 panic=-1 quiet loglevel=3',
    '-display', 'none', '-serial', 'stdio', '-monitor', 'none', '-no-reboot', '-nodefaults',
  ];
  return new Promise((resolve) => {
    const qemu = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    qemu.stdout.on('data', (d) => (output += d));
    qemu.stderr.on('data', (d) => (output += d));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      qemu.kill('SIGKILL');
    }, opts.timeoutMs);
    qemu.on('exit', (code) => {
      clearTimeout(timer);
      initrd.dispose();
      resolve({ output, exitCode: code, timedOut });
    });
  });
}
