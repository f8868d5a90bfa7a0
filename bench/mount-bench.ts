/**
 * FUSE mount benchmark: dpfs against reference FUSE daemons measured in the same run, on
 * the same machine and (for passthrough) the same source directory on tmpfs.
 *
 *   memory backend       vs bindfs over tmpfs
 *   passthrough backend  vs bindfs and libfuse's passthrough_ll over the same directory,
 *                        the latter as shipped and with default_permissions ("libfuse dp"),
 *                        the kernel's permission checks dpfs mounts with
 *
 * Prints, per workload, ops/s or MiB/s, the CPU time the serving process spent per
 * operation (utime+stime of all its threads, from /proc), and dpfs's ratio to each
 * reference. Machines are noisy: read the ratios; `--rounds N` measures every target N times,
 * interleaved, and shows medians with each ratio's range.
 *
 *   npm run bench
 *   node dist/bench/mount-bench.js --backend passthrough --libfuse /path/to/passthrough_ll
 *   options: --backend memory|passthrough|both  --files N  --runtime SECONDS  --json FILE
 *            --io poll|uring  (how dpfs takes requests; uring needs the fuse module's enable_uring)
 *            --rounds N  (default 1)
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { mountAt } from '../src/devices/devfuse/mounts.js';
import { fuseUringEnabled } from '../src/devices/devfuse/uring-channel.js';
import { projectRoot } from '../src/native/native.js';
import { formatRatio, formatTable, medianRows, ratioOf, roundsOption } from './rounds.js';
import { option } from './options.js';

const execFileP = promisify(execFile);
const BACKEND = option('backend', 'both');
const FILES = Number(option('files', '10000'));
const RUNTIME = Number(option('runtime', '5'));
const JSON_OUT = option('json', '');
const LIBFUSE = option('libfuse', process.env.DPFS_BENCH_LIBFUSE ?? '');
const IO = option('io', 'poll');
const ROUNDS = roundsOption(option('rounds', '1'));
if (IO !== 'poll' && IO !== 'uring') throw new Error(`--io ${IO}: poll or uring`);
if (IO === 'uring' && !fuseUringEnabled()) throw new Error('--io uring: FUSE over io_uring is off in this kernel (echo Y > /sys/module/fuse/parameters/enable_uring)');
const CLK_TCK = 100;

interface Target {
  name: string;
  dir: string;
  proc: ChildProcess;
}

interface Row {
  workload: string;
  unit: string;
  value: number;
  cpuUsPerOp: number;
}

const progress = (msg: string) => process.stderr.write(`${msg}\n`);

async function waitMounted(dir: string, proc: ChildProcess): Promise<void> {
  const until = Date.now() + 20000;
  while (!/fuse/.test(mountAt(dir)?.fstype ?? '')) {
    if (proc.exitCode !== null) throw new Error(`the daemon for ${dir} exited (${proc.exitCode})`);
    if (Date.now() > until) throw new Error(`${dir} did not mount`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]); // utime + stime, all threads
}

async function start(name: string, cmd: string, cmdArgs: (dir: string) => string[], env: Record<string, string> = {}): Promise<Target> {
  const dir = mkdtempSync(join(tmpdir(), 'bench-mnt-'));
  const proc = spawn(cmd, cmdArgs(dir), { stdio: 'ignore', env: { ...process.env, DPFS_LOG: 'warn', ...env } });
  await waitMounted(dir, proc);
  return { name, dir, proc };
}

async function stop(t: Target): Promise<void> {
  t.proc.kill('SIGTERM');
  const exited = new Promise((r) => (t.proc.exitCode !== null ? r(null) : t.proc.once('exit', r)));
  await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
  if (mountAt(t.dir)) await execFileP('umount', ['-l', t.dir]).catch(() => undefined);
  if (t.proc.exitCode === null) t.proc.kill('SIGKILL');
  rmSync(t.dir, { recursive: true, force: true });
}

async function measure(t: Target, workload: string, unit: string, cmd: string[], parse: (stdout: string) => { value: number; ops: number }): Promise<Row> {
  const pid = t.proc.pid!;
  const cpu0 = cpuTicks(pid);
  const r = await execFileP(cmd[0]!, cmd.slice(1), { maxBuffer: 16 << 20, timeout: 600000 });
  const cpu = (cpuTicks(pid) - cpu0) / CLK_TCK;
  const { value, ops } = parse(r.stdout);
  return { workload, unit, value, cpuUsPerOp: (cpu * 1e6) / Math.max(ops, 1) };
}

// One phase of create, stat or unlink over FILES files; prints "ops_per_second ops".
const META = `
import os, sys, time
d, n, phase = sys.argv[1], int(sys.argv[2]), sys.argv[3]
os.makedirs(d, exist_ok=True)
names = [os.path.join(d, 'f%d' % i) for i in range(n)]
t = time.perf_counter()
if phase == 'create':
    for p in names: os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))
elif phase == 'stat':
    for p in names: os.lstat(p)
else:
    for p in names: os.unlink(p)
print(n / (time.perf_counter() - t), n)
`;

function fio(dir: string, name: string, rw: string, bs: string, size: string, qd: number, timed: boolean): string[] {
  return [
    'fio',
    `--name=${name}`,
    `--directory=${dir}`,
    `--rw=${rw}`,
    `--bs=${bs}`,
    `--size=${size}`,
    `--ioengine=${qd > 1 ? 'libaio' : 'psync'}`,
    `--iodepth=${qd}`,
    '--direct=1',
    ...(timed ? ['--time_based', `--runtime=${RUNTIME}`] : []),
    '--output-format=json',
  ];
}

function fioResult(kind: 'iops' | 'bw') {
  return (stdout: string) => {
    const j = JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: { read: Record<string, number>; write: Record<string, number> }[] };
    const job = j.jobs[0]!;
    const ops = (job.read.total_ios ?? 0) + (job.write.total_ios ?? 0);
    const value = kind === 'iops' ? job.read.iops! + job.write.iops! : (job.read.bw_bytes! + job.write.bw_bytes!) / (1024 * 1024);
    return { value, ops };
  };
}

async function runAll(t: Target): Promise<Row[]> {
  progress(`  ${t.name}`);
  const rows: Row[] = [];
  const meta = join(t.dir, 'meta');
  // Warm-up, not measured: a JIT compiles its hot paths in the first seconds, and every
  // daemon's caches fill; the rows are meant to show the steady state.
  const warm = join(t.dir, 'warm');
  for (const phase of ['create', 'stat', 'unlink']) await execFileP('python3', ['-c', META, warm, '3000', phase]);
  for (const phase of ['create', 'stat', 'unlink']) {
    // Every daemon here gives the kernel 1 s entry and attribute timeouts: wait them out, so
    // that each stat is served by the daemon, not by the kernel's cache of what create left
    // (which would favour whoever created fastest).
    if (phase === 'stat') await new Promise((r) => setTimeout(r, 1500));
    rows.push(
      await measure(t, `${phase} (${FILES} files)`, 'ops/s', ['python3', '-c', META, meta, String(FILES), phase], (s) => {
        const [rate, n] = s.trim().split(' ').map(Number);
        return { value: rate!, ops: n! };
      }),
    );
  }
  // Lay the file out once so random reads hit data, then time each pattern.
  await execFileP('fio', fio(t.dir, 'rand', 'write', '1m', '256m', 1, false).slice(1));
  for (const qd of [1, 32]) {
    rows.push(await measure(t, `4 KiB random read, QD${qd}`, 'IOPS', fio(t.dir, 'rand', 'randread', '4k', '256m', qd, true), fioResult('iops')));
    rows.push(await measure(t, `4 KiB random write, QD${qd}`, 'IOPS', fio(t.dir, 'rand', 'randwrite', '4k', '256m', qd, true), fioResult('iops')));
  }
  rows.push(await measure(t, '1 MiB sequential write', 'MiB/s', fio(t.dir, 'seq', 'write', '1m', '512m', 1, false), fioResult('bw')));
  rows.push(await measure(t, '1 MiB sequential read', 'MiB/s', fio(t.dir, 'seq', 'read', '1m', '512m', 1, false), fioResult('bw')));
  await execFileP('rm', ['-rf', join(t.dir, 'rand.0.0'), join(t.dir, 'seq.0.0'), meta, warm]);
  return rows;
}

/** Medians over the rounds; each ratio is dpfs's over the reference's of the same round. */
function table(dpfs: Row[][], refs: [string, Row[][]][]): string {
  const mid = medianRows(dpfs);
  const refMid = refs.map(([n, r]) => [n, medianRows(r)] as const);
  const head = ['workload', 'dpfs', ...refs.map(([n]) => n), ...refs.map(([n]) => `ratio vs ${n}`), 'CPU µs/op dpfs', ...refs.map(([n]) => `CPU µs/op ${n}`)];
  return formatTable([
    head,
    ...mid.map((row, i) => [
      row.workload,
      `${row.value.toFixed(0)} ${row.unit}`,
      ...refMid.map(([, r]) => `${r[i]!.value.toFixed(0)} ${row.unit}`),
      ...refs.map(([, r]) => formatRatio(ratioOf(dpfs, r, i), ROUNDS)),
      row.cpuUsPerOp.toFixed(1),
      ...refMid.map(([, r]) => r[i]!.cpuUsPerOp.toFixed(1)),
    ]),
  ]);
}

const CLI = join(projectRoot, 'dist/src/cli/main.js');

type Launch = [name: string, launch: () => Promise<Target>];

/** Per round, mounts each target in turn, runs every workload on it, and always unmounts it. */
async function runTargets(targets: Launch[]): Promise<Record<string, Row[][]>> {
  const results: Record<string, Row[][]> = {};
  for (let round = 1; round <= ROUNDS; round++) {
    if (ROUNDS > 1) progress(` round ${round} of ${ROUNDS}`);
    for (const [name, launch] of targets) {
      const t = await launch();
      try {
        (results[name] ??= []).push(await runAll(t));
      } finally {
        await stop(t);
      }
    }
  }
  return results;
}

/** What the JSON result holds per target: the medians and every round. */
function forJson(results: Record<string, Row[][]>): object {
  return Object.fromEntries(Object.entries(results).map(([n, r]) => [n, { median: medianRows(r), rounds: r }]));
}

const bindfs = (shm: string): Launch => ['bindfs', () => start('bindfs', 'bindfs', (d) => ['-f', '-o', 'allow_other', shm, d])];

async function benchMemory(): Promise<object> {
  progress('memory backend vs bindfs over tmpfs');
  const shm = mkdtempSync('/dev/shm/bench-src-');
  let results: Record<string, Row[][]>;
  try {
    results = await runTargets([['dpfs', () => start('dpfs memory', process.execPath, (d) => [CLI, 'mount', d, '--io', IO, '--capacity', '8GiB'])], bindfs(shm)]);
  } finally {
    rmSync(shm, { recursive: true, force: true });
  }
  console.log(`\nmemory backend (dpfs, requests over ${IO === 'uring' ? 'io_uring' : '/dev/fuse'}) vs bindfs over tmpfs${roundsNote()}\n`);
  console.log(table(results.dpfs!, [['bindfs', results.bindfs!]]));
  return forJson(results);
}

async function benchPassthrough(): Promise<object> {
  const shm = mkdtempSync('/dev/shm/bench-src-');
  const refs: Launch[] = [bindfs(shm)];
  if (LIBFUSE && existsSync(LIBFUSE)) {
    const libDir = join(dirname(LIBFUSE), '..', 'lib');
    const libfuse = (opts: string) => () => start(`libfuse passthrough${opts}`, LIBFUSE, (d) => ['-f', '-o', `source=${shm},allow_other${opts}`, d], { LD_LIBRARY_PATH: libDir });
    refs.push(['libfuse', libfuse('')]);
    // As shipped the example leaves permissions to the host alone, which its callers never
    // reach through cached entries; dpfs mounts with the kernel's checks (default_permissions),
    // which cost a request more per create and unlink. The example with them too:
    refs.push(['libfuse dp', libfuse(',default_permissions')]);
  } else {
    progress('  (libfuse passthrough example not given: --libfuse PATH to compare with it too)');
  }
  progress(`passthrough backend vs ${refs.map(([n]) => n).join(' and ')} over the same tmpfs directory`);
  let results: Record<string, Row[][]>;
  try {
    results = await runTargets([['dpfs', () => start('dpfs passthrough', process.execPath, (d) => [CLI, 'mount', d, '--io', IO, '-b', 'passthrough', '-s', shm])], ...refs]);
  } finally {
    rmSync(shm, { recursive: true, force: true });
  }
  console.log(`\npassthrough backend (dpfs, requests over ${IO === 'uring' ? 'io_uring' : '/dev/fuse'}) vs C references over the same directory${roundsNote()}\n`);
  console.log(table(results.dpfs!, refs.map(([n]) => [n, results[n]!])));
  return forJson(results);
}

const roundsNote = () => (ROUNDS > 1 ? `; medians of ${ROUNDS} rounds, ratio ranges in brackets` : '');

async function main(): Promise<void> {
  const out: Record<string, object> = {};
  if (BACKEND === 'memory' || BACKEND === 'both') out.memory = await benchMemory();
  if (BACKEND === 'passthrough' || BACKEND === 'both') out.passthrough = await benchPassthrough();
  console.log('\nI/O uses O_DIRECT (psync at QD1, libaio at QD32); metadata runs one process, one file at a time;\nstat starts once the entries create left have expired (every daemon here uses 1 s timeouts).');
  if (JSON_OUT) writeFileSync(JSON_OUT, JSON.stringify({ date: new Date().toISOString(), files: FILES, runtime: RUNTIME, rounds: ROUNDS, results: out }, null, 2));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
