/** Starting, stopping and metering the vhost-user servers that the virtio-fs benchmarks drive. */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { option } from './options.js';

export interface Server {
  name: string;
  proc: ChildProcess;
  socket: string;
}

/** Debian's C virtiofsd, the reference server (--virtiofsd PATH). */
export const VIRTIOFSD = option('virtiofsd', '/usr/lib/qemu/virtiofsd');

/**
 * virtiofsd's arguments for serving `source` on `socket`; --virtiofsd-sandbox chroot where
 * its default namespace sandbox is not allowed (some container runtimes).
 */
export function virtiofsdArgs(socket: string, source: string, extra: string[] = []): string[] {
  const sandbox = option('virtiofsd-sandbox', '');
  return [`--socket-path=${socket}`, '-o', `source=${source}`, '-o', 'cache=auto', ...(sandbox ? ['-o', `sandbox=${sandbox}`] : []), ...extra];
}

/** Clock ticks per second of /proc's utime and stime. */
export const CLK_TCK = 100;

/** utime+stime of a process and its descendants (virtiofsd serves from a sandboxed child). */
export function cpuTicks(pid: number): number {
  let total = 0;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    total = Number(f[11]) + Number(f[12]);
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const kids = readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim();
      for (const k of kids ? kids.split(' ') : []) total += cpuTicks(Number(k));
    }
  } catch {
    /* exited meanwhile */
  }
  return total;
}

/** utime+stime of one thread of a process (the main thread when tid is the pid). */
export function threadTicks(pid: number, tid = pid): number {
  try {
    const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(f[11]) + Number(f[12]);
  } catch {
    return 0; // exited meanwhile
  }
}

/** Starts a server and waits for its socket (remove a stale one first: it is waited for by name). */
export async function startServer(name: string, cmd: string, cmdArgs: string[], socket: string): Promise<Server> {
  const proc = spawn(cmd, cmdArgs, { stdio: 'ignore', env: { ...process.env, DPFS_LOG: 'warn' } });
  for (let i = 0; i < 200 && !existsSync(socket); i++) {
    if (proc.exitCode !== null) throw new Error(`${name} exited (${proc.exitCode})`);
    await new Promise((r) => setTimeout(r, 25));
  }
  if (!existsSync(socket)) throw new Error(`${name} did not create ${socket}`);
  return { name, proc, socket };
}

export async function stopServer(s: Server): Promise<void> {
  s.proc.kill('SIGTERM');
  await Promise.race([new Promise((r) => (s.proc.exitCode !== null ? r(null) : s.proc.once('exit', r))), new Promise((r) => setTimeout(r, 3000))]);
  if (s.proc.exitCode === null) s.proc.kill('SIGKILL');
}
