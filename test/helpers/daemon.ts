/** Starts the dpfs CLI as a separate process, waits for its mount, and always cleans up. */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { mountAt } from '../../src/devices/devfuse/mounts.js';
import { projectRoot } from '../../src/native/native.js';

export const CLI = join(projectRoot, 'dist', 'src', 'cli', 'main.js');
const execFileP = promisify(execFile);

export interface Daemon {
  child: ChildProcess;
  stderr: () => string;
  exited: Promise<number | null>;
}

export function startDaemon(args: string[], env: Record<string, string> = {}): Daemon {
  return startDaemonScript(CLI, args, env);
}

/** Starts any node script as a daemon process (the CLI, an example file system). */
export function startDaemonScript(script: string, args: string[], env: Record<string, string> = {}): Daemon {
  const child = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, DPFS_LOG: 'warn', ...env } });
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  child.stdout!.on('data', () => undefined);
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  return { child, stderr: () => err, exited };
}

export async function waitFor(cond: () => boolean, what: string, ms = 15000): Promise<void> {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export const isDpfsMount = (dir: string) => mountAt(dir)?.fstype === 'fuse.dpfs';

/** Stops a daemon by pid (SIGTERM, then SIGKILL) and makes sure nothing stays mounted. */
export async function stopDaemon(d: Daemon, dirs: string[]): Promise<number | null> {
  if (d.child.exitCode === null && d.child.signalCode === null) {
    d.child.kill('SIGTERM');
    const t = setTimeout(() => d.child.kill('SIGKILL'), 10000);
    await d.exited;
    clearTimeout(t);
  }
  for (const dir of dirs) {
    if (mountAt(dir)) await execFileP('umount', ['-l', dir]).catch(() => undefined);
  }
  return d.child.exitCode;
}

/** Mounts the memory backend with the CLI in its own process for the duration of `fn`. */
export async function withMount(fn: (dir: string, d: Daemon) => Promise<void>, extraArgs: string[] = [], env: Record<string, string> = {}): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'dpfs-test-'));
  await mounted(dir, ['mount', dir, ...extraArgs], fn, env);
}

/** Serves a fresh host directory with the passthrough backend for the duration of `fn`. */
export async function withPassthrough(fn: (dir: string, src: string, d: Daemon) => Promise<void>, extraArgs: string[] = [], srcParent = tmpdir(), env: Record<string, string> = {}): Promise<void> {
  const src = mkdtempSync(join(srcParent, 'dpfs-src-'));
  const dir = mkdtempSync(join(tmpdir(), 'dpfs-test-'));
  try {
    await mounted(dir, ['mount', dir, '-b', 'passthrough', '-s', src, ...extraArgs], (mnt, d) => fn(mnt, src, d), env);
  } finally {
    rmSync(src, { recursive: true, force: true });
  }
}

async function mounted(dir: string, args: string[], fn: (dir: string, d: Daemon) => Promise<void>, env: Record<string, string> = {}): Promise<void> {
  const d = startDaemon(args, env);
  try {
    await Promise.race([
      waitFor(() => isDpfsMount(dir), `mount on ${dir}`),
      d.exited.then((c) => {
        throw new Error(`daemon exited (${c}) before mounting: ${d.stderr()}`);
      }),
    ]);
    await fn(dir, d);
  } finally {
    await stopDaemon(d, [dir]);
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Runs a bash script (in its own process) and returns its stdout; rejects with stderr on failure. */
export async function sh(script: string, opts: { cwd?: string; timeout?: number; env?: Record<string, string> } = {}): Promise<string> {
  try {
    const r = await execFileP('bash', ['-euo', 'pipefail', '-c', script], {
      cwd: opts.cwd,
      timeout: opts.timeout ?? 120000,
      maxBuffer: 64 * 1024 * 1024,
      env: { ...process.env, ...opts.env },
    });
    return r.stdout;
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; code?: number; message: string };
    throw new Error(`script failed (${e.code}): ${e.message}\nstdout: ${e.stdout?.slice(-2000)}\nstderr: ${e.stderr?.slice(-2000)}`);
  }
}
