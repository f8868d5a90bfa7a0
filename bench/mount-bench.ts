/**
 * Benchmark of a dpfs mount against a reference FUSE file system measured in the same run:
 * dpfs's memory backend vs bindfs over tmpfs (both FUSE daemons serving RAM).
 * Prints ops/s or MiB/s for each workload, the daemon's CPU time per operation, and the
 * ratio dpfs/reference. Machines are noisy: read the ratios, not the absolute figures.
 *
 *   npm run bench                     (defaults)
 *   node dist/bench/mount-bench.js --files 5000 --json out.json
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { mountAt } from '../src/devices/devfuse/mounts.js';
import { projectRoot } from '../src/native/native.js';

const execFileP = promisify(execFile);
const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] ? args[i + 1]! : dflt;
};
const FILES = Number(opt('files', '3000'));
const JSON_OUT = opt('json', '');
const CLK_TCK = 100;

interface Target {
  name: string;
  dir: string;
  proc: ChildProcess;
}

async function waitMounted(dir: string, fstype: RegExp): Promise<void> {
  const until = Date.now() + 15000;
  while (!fstype.test(mountAt(dir)?.fstype ?? '')) {
    if (Date.now() > until) throw new Error(`${dir} did not mount`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function cpuTicks(pid: number): number {
  // utime + stime of every thread of the process (fields 14 and 15 of /proc/pid/stat).
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]);
}

async function startDpfs(): Promise<Target> {
  const dir = mkdtempSync(join(tmpdir(), 'bench-dpfs-'));
  const proc = spawn(process.execPath, [join(projectRoot, 'dist/src/cli/main.js'), 'mount', dir, '--capacity', '8GiB'], { stdio: 'ignore', env: { ...process.env, DPFS_LOG: 'warn' } });
  await waitMounted(dir, /^fuse\.dpfs$/);
  return { name: 'dpfs (memory)', dir, proc };
}

async function startBindfs(src: string): Promise<Target> {
  const dir = mkdtempSync(join(tmpdir(), 'bench-bindfs-'));
  const proc = spawn('bindfs', ['-f', '-o', 'allow_other', src, dir], { stdio: 'ignore' });
  await waitMounted(dir, /fuse/);
  return { name: 'bindfs over tmpfs', dir, proc };
}

async function stop(t: Target): Promise<void> {
  t.proc.kill('SIGTERM');
  await new Promise((r) => (t.proc.exitCode !== null ? r(null) : t.proc.once('exit', r)));
  if (mountAt(t.dir)) await execFileP('umount', ['-l', t.dir]).catch(() => undefined);
  rmSync(t.dir, { recursive: true, force: true });
}

interface Row {
  workload: string;
  unit: string;
  value: number;
  cpuUsPerOp: number;
}

/** Runs a workload in a separate process; returns its rate and the daemon's CPU per op. */
async function measure(t: Target, workload: string, unit: string, ops: number, cmd: string[], rate: (stdout: string, secs: number) => number): Promise<Row> {
  const pid = t.proc.pid!;
  const cpu0 = cpuTicks(pid);
  const t0 = process.hrtime.bigint();
  const r = await execFileP(cmd[0]!, cmd.slice(1), { maxBuffer: 16 << 20, timeout: 600000 });
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = (cpuTicks(pid) - cpu0) / CLK_TCK;
  return { workload, unit, value: rate(r.stdout, secs), cpuUsPerOp: (cpu * 1e6) / ops };
}

const META = `
import os, sys, time
d = sys.argv[1]; n = int(sys.argv[2])
os.makedirs(d, exist_ok=True)
names = [os.path.join(d, 'f%d' % i) for i in range(n)]
res = []
t = time.perf_counter()
for p in names: os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))
res.append(n / (time.perf_counter() - t))
t = time.perf_counter()
for p in names: os.stat(p)
res.append(n / (time.perf_counter() - t))
t = time.perf_counter()
for p in names: os.unlink(p)
res.append(n / (time.perf_counter() - t))
print(' '.join('%.1f' % r for r in res))
`;

function fio(dir: string, name: string, rw: string, bs: string, size: string): string[] {
  return ['fio', `--name=${name}`, `--directory=${dir}`, `--rw=${rw}`, `--bs=${bs}`, `--size=${size}`, '--ioengine=psync', '--direct=1', '--output-format=json'];
}
const fioBw = (stdout: string) => {
  const j = JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: { read: { bw_bytes: number }; write: { bw_bytes: number } }[] };
  const job = j.jobs[0]!;
  return (job.read.bw_bytes + job.write.bw_bytes) / (1024 * 1024);
};
const fioIops = (stdout: string) => {
  const j = JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: { read: { iops: number }; write: { iops: number } }[] };
  return j.jobs[0]!.read.iops + j.jobs[0]!.write.iops;
};

async function runAll(t: Target): Promise<Row[]> {
  const rows: Row[] = [];
  const metaDir = join(t.dir, 'meta');
  // One pass of create/stat/unlink; CPU is split evenly across the three phases.
  const m = await measure(t, 'metadata', 'ops/s', FILES * 3, ['python3', '-c', META, metaDir, String(FILES)], (s) => 0 * s.length);
  const [c, st, u] = (await execFileP('python3', ['-c', META, metaDir, String(FILES)])).stdout.trim().split(' ').map(Number);
  rows.push({ workload: `create (${FILES} files)`, unit: 'ops/s', value: c!, cpuUsPerOp: m.cpuUsPerOp });
  rows.push({ workload: `stat (${FILES} files)`, unit: 'ops/s', value: st!, cpuUsPerOp: m.cpuUsPerOp });
  rows.push({ workload: `unlink (${FILES} files)`, unit: 'ops/s', value: u!, cpuUsPerOp: m.cpuUsPerOp });
  const n4k = (32 * 1024 * 1024) / 4096;
  rows.push(await measure(t, '4 KiB sequential write', 'IOPS', n4k, fio(t.dir, 'w4k', 'write', '4k', '32m'), fioIops));
  rows.push(await measure(t, '4 KiB sequential read', 'IOPS', n4k, fio(t.dir, 'w4k', 'read', '4k', '32m'), fioIops));
  const n1m = 256;
  rows.push(await measure(t, '1 MiB sequential write', 'MiB/s', n1m, fio(t.dir, 'w1m', 'write', '1m', '256m'), fioBw));
  rows.push(await measure(t, '1 MiB sequential read', 'MiB/s', n1m, fio(t.dir, 'w1m', 'read', '1m', '256m'), fioBw));
  return rows;
}

async function main(): Promise<void> {
  const shm = mkdtempSync(join('/dev/shm', 'bench-src-'));
  const results: Record<string, Row[]> = {};
  let dpfs: Target | undefined;
  let ref: Target | undefined;
  try {
    process.stderr.write('benchmarking dpfs (memory backend)...\n');
    dpfs = await startDpfs();
    results.dpfs = await runAll(dpfs);
    await stop(dpfs);
    dpfs = undefined;
    process.stderr.write('benchmarking bindfs over tmpfs (reference)...\n');
    ref = await startBindfs(shm);
    results.reference = await runAll(ref);
  } finally {
    if (dpfs) await stop(dpfs);
    if (ref) await stop(ref);
    rmSync(shm, { recursive: true, force: true });
  }
  const d = results.dpfs!;
  const r = results.reference!;
  const lines = [
    ['workload', 'dpfs', 'bindfs/tmpfs', 'ratio', 'dpfs CPU µs/op', 'bindfs CPU µs/op'],
    ...d.map((row, i) => [
      row.workload,
      `${row.value.toFixed(0)} ${row.unit}`,
      `${r[i]!.value.toFixed(0)} ${row.unit}`,
      `${(row.value / r[i]!.value).toFixed(2)}x`,
      row.cpuUsPerOp.toFixed(1),
      r[i]!.cpuUsPerOp.toFixed(1),
    ]),
  ];
  const widths = lines[0]!.map((_, c) => Math.max(...lines.map((l) => l[c]!.length)));
  for (const l of lines) console.log(l.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join('  '));
  console.log('\n(metadata CPU is per create/stat/unlink averaged over the three phases; I/O uses O_DIRECT, psync, one job)');
  if (JSON_OUT) writeFileSync(JSON_OUT, JSON.stringify({ date: new Date().toISOString(), files: FILES, results }, null, 2));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
