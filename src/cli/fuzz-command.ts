/**
 * `dpfs fuzz`: the long fuzzing run of a virtio-fs device. Against a running device's socket,
 * or a daemon started for the run (a child process, so that a crash shows as its exit).
 * Every case is replayable from its seed: `dpfs fuzz --seed S --cases 1`.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { fuzz } from '../harness/fuzz.js';

export interface FuzzOptions {
  cases: number;
  seed: number;
  backend: 'memory' | 'null' | 'passthrough';
  threads: number;
  /** A file in the device's root to aim READs and WRITEs at (fuzz.ts). */
  file?: string;
}

const MAIN = fileURLToPath(new URL('./main.js', import.meta.url));

/** Runs the cases; resolves with the exit code (0: every case passed and the daemon lives). */
export async function runFuzz(socket: string | undefined, o: FuzzOptions): Promise<number> {
  const dir = socket ? undefined : mkdtempSync(join(tmpdir(), 'dpfs-fuzz-'));
  let child: ChildProcess | undefined;
  let stderr = '';
  try {
    if (!socket) {
      socket = join(dir!, 'fuzz.sock');
      const backend = ['-b', o.backend];
      if (o.backend === 'passthrough') {
        mkdirSync(join(dir!, 'src'));
        // A file whose READs and WRITEs the cases aim at (served off the rings natively).
        writeFileSync(join(dir!, 'src', 'f'), Buffer.alloc(256 * 1024, 0x61));
        backend.push('-s', join(dir!, 'src'));
      }
      child = spawn(process.execPath, [MAIN, 'vhost-user', socket, ...backend, '-t', String(o.threads)], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, DPFS_LOG: 'error' } });
      child.stderr!.on('data', (b: Buffer) => (stderr = (stderr + b.toString()).slice(-4000)));
      for (let i = 0; i < 400 && !existsSync(socket); i++) {
        if (child.exitCode !== null) throw new Error(`the daemon exited (${child.exitCode}): ${stderr}`);
        await new Promise((r) => setTimeout(r, 25));
      }
    }
    if (!existsSync(socket)) throw new Error(`no device socket at ${socket}`);
    const t0 = Date.now();
    const res = await fuzz(socket, { cases: o.cases, seed: o.seed, file: o.file ?? (child && o.backend !== 'memory' ? 'f' : undefined), log: (m) => process.stderr.write(`${m}\n`) });
    const died = child && child.exitCode !== null ? `the daemon exited (${child.exitCode ?? child.signalCode}): ${stderr}` : '';
    console.log(`${res.cases} cases from seed ${o.seed} in ${((Date.now() - t0) / 1000).toFixed(1)} s: ${res.reconnects} reconnects, ${res.failures.length} failures`);
    for (const f of res.failures) console.log(`  seed ${f.seed} (${f.kind}): ${f.error} — replay: dpfs fuzz --seed ${f.seed} --cases 1`);
    if (died) console.log(died);
    return res.failures.length || died || res.cases < o.cases ? 1 : 0;
  } finally {
    if (child && child.exitCode === null) {
      child.kill('SIGTERM');
      await new Promise((r) => (child!.exitCode !== null ? r(null) : child!.once('exit', r)));
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
  }
}
