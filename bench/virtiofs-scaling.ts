/**
 * Multi-queue scaling of the virtio-fs device without a VM: the guest driver negotiates N
 * request queues and hands each to its own worker thread (one "guest CPU" per queue); dpfs
 * serves them as it does by default (queue threads where the cores allow). Rows give the
 * aggregate rate and the speed-up over one queue of the same server (each queue on its own file), for the null backend
 * (the framework's own cost) and the passthrough, with Debian's virtiofsd at the queue
 * counts it offers (one request queue) as the reference.
 *
 *   npm run bench:scaling -- --queues 1,2,4,8 --rounds 3
 *   options: --targets null,dpfs,virtiofsd,virtiofsd-pool (its one request queue served by a
 *   thread pool of one thread per CPU),null-threads (null on a queue thread per queue),dpfs-threads (the passthrough likewise)  --virtiofsd-sandbox namespace|chroot  --seconds S  --depth D (per queue)  --threads N (dpfs
 *   queue threads; default: the daemon's own choice)  --source-parent DIR  --out DIR  --virtiofsd PATH
 */
import { availableParallelism } from 'node:os';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import * as hdr from 'hdr-histogram-js';
import { projectRoot } from '../src/native/native.js';
import { FuseClient } from '../src/harness/fuse-client.js';
import { GuestDriver } from '../src/harness/guest-driver.js';
import type { LoadSetup, Phase, PhaseResult, Workload } from './ring-load-worker.js';
import { option } from './options.js';
import { formatTable, median, roundsOption } from './rounds.js';
import { CLK_TCK, cpuTicks, type Server, startServer, stopServer, threadTicks, VIRTIOFSD, virtiofsdArgs } from './servers.js';
import { latencyHistogram } from './latency.js';

const SECONDS = Number(option('seconds', '3'));
const DEPTH = Number(option('depth', '32'));
const ROUNDS = roundsOption(option('rounds', '1'));
const OUT = option('out', 'bench-results');
const SOURCE_PARENT = option('source-parent', '/var/tmp');
const TARGETS = option('targets', 'null,dpfs,virtiofsd,virtiofsd-pool').split(',');
// Each queue takes a driver thread and a queue thread: past half the cores they contend.
const defaultQueues = [1, 2, 4, 8, 16].filter((n) => n === 1 || 2 * n <= availableParallelism()).join(',');
const QUEUE_COUNTS = option('queues', defaultQueues).split(',').map(Number);
/** dpfs queue threads (-t); unset: the daemon's default for the queue count and the cores. */
const THREADS = option('threads', '');
const WORKLOADS: Workload[] = ['read4k', 'write4k', 'getattr'];
const LABEL: Record<Workload, string> = { read4k: '4 KiB random read', write4k: '4 KiB random write', getattr: 'GETATTR' };
const FILE_BYTES = 64 * 1024 * 1024;
const WORKER = new URL('./ring-load-worker.js', import.meta.url);

const progress = (m: string) => process.stderr.write(`${m}\n`);

interface Row {
  target: string;
  queues: number;
  workload: Workload;
  ops: number;
  p50: number;
  p99: number;
  cpuUsPerOp: number;
  /** Share of the window the server's main thread was on a CPU (dpfs serves every request there). */
  mainBusy: number;
}

function command(target: string, src: string, queues: number, sock: string): [string, string[]] {
  const cli = join(projectRoot, 'dist/src/cli/main.js');
  const q = ['-q', String(queues), ...(THREADS ? ['-t', THREADS] : [])];
  if (target === 'null') return [process.execPath, [cli, 'vhost-user', sock, '-b', 'null', ...q]];
  // The queue-thread configuration beside the default: a thread per queue.
  if (target === 'null-threads') return [process.execPath, [cli, 'vhost-user', sock, '-b', 'null', '-q', String(queues), '-t', String(queues)]];
  if (target === 'dpfs') return [process.execPath, [cli, 'vhost-user', sock, '-b', 'passthrough', '-s', src, ...q]];
  if (target === 'dpfs-threads') return [process.execPath, [cli, 'vhost-user', sock, '-b', 'passthrough', '-s', src, '-q', String(queues), '-t', String(queues)]];
  const pool = target === 'virtiofsd-pool' ? [`--thread-pool-size=${availableParallelism()}`] : [];
  return [VIRTIOFSD, virtiofsdArgs(sock, src, pool)];
}

/** A server that stopped answering or exited: its row is skipped, the run goes on. */
class ServerLost extends Error {}

function ask(w: Worker, msg: Phase, lost: Promise<never>): Promise<PhaseResult> {
  let timer: NodeJS.Timeout | undefined;
  const answer = new Promise<PhaseResult>((resolve, reject) => {
    w.once('message', resolve);
    w.once('error', reject);
    w.postMessage(msg);
    timer = setTimeout(() => reject(new ServerLost(`no answer within ${msg.seconds + 15} s`)), (msg.seconds + 15) * 1000);
  });
  return Promise.race([answer, lost]).finally(() => clearTimeout(timer));
}

/** One server at one queue count: every workload, each from all queues at once. */
async function measure(server: Server, target: string, queues: number, fileName: string): Promise<Row[]> {
  const drv = new GuestDriver({ socket: server.socket, queues, depth: DEPTH, queueSize: Math.max(256, 4 * DEPTH), slotBytes: 8192 });
  const lost = new Promise<never>((_, reject) => server.proc.once('exit', (code, signal) => reject(new ServerLost(`exited (${signal ?? code})`))));
  lost.catch(() => undefined); // observed by every phase; unhandled only once the server is stopped on purpose
  const workers: Worker[] = [];
  try {
    await Promise.race([drv.connect(), lost]);
    const base = new FuseClient(drv, 1);
    // Each queue its own file, as fio's jobs would: writes to one file meet the host file
    // system's per-inode lock (ext4 serializes buffered writes to an inode), not the server.
    const files = await Promise.race([
      (async () => {
        await base.init();
        const out: { ino: number; fh: number }[] = [];
        for (let q = 1; q <= queues; q++) {
          const ino = await base.lookup(1, `${fileName}-${q}`);
          out.push({ ino, fh: await base.open(ino, 2 /* O_RDWR */) });
        }
        return out;
      })(),
      lost,
    ]);
    for (let q = 1; q <= queues; q++) {
      const { ino, fh } = files[q - 1]!;
      const setup: LoadSetup = { layout: drv.queues[q]!.handOff(), firstUnique: String(BigInt(q) << 40n), ino, fh, fileBytes: FILE_BYTES };
      const w = new Worker(WORKER, { workerData: setup });
      await new Promise((resolve, reject) => (w.once('message', resolve), w.once('error', reject)));
      workers.push(w);
    }
    const phase = async (workload: Workload, seconds: number) => {
      const pid = server.proc.pid!;
      const cpu0 = cpuTicks(pid);
      const main0 = threadTicks(pid);
      const t0 = process.hrtime.bigint();
      const results = await Promise.all(workers.map((w) => ask(w, { workload, seconds, depth: DEPTH }, lost)));
      const cpu = (cpuTicks(pid) - cpu0) / CLK_TCK;
      const mainBusy = (threadTicks(pid) - main0) / CLK_TCK / (Number(process.hrtime.bigint() - t0) / 1e9);
      const failed = results.find((r) => r.error);
      if (failed) throw new Error(`${target} ${workload}: ${failed.error}`);
      return { results, cpu, mainBusy };
    };
    await phase('read4k', 1); // warm-up: JIT and caches, not measured
    const rows: Row[] = [];
    for (const workload of WORKLOADS) {
      const { results, cpu, mainBusy } = await phase(workload, SECONDS);
      const h = latencyHistogram();
      for (const r of results) h.add(hdr.decodeFromCompressedBase64(r.histogram));
      const total = results.reduce((s, r) => s + r.ops, 0);
      const secs = Math.max(...results.map((r) => r.secs));
      const row: Row = { target, queues, workload, ops: total / secs, p50: h.getValueAtPercentile(50), p99: h.getValueAtPercentile(99), cpuUsPerOp: (cpu * 1e6) / total, mainBusy };
      progress(`    ${LABEL[workload].padEnd(20)} ${row.ops.toFixed(0).padStart(9)} ops/s  p50 ${row.p50}µs p99 ${row.p99}µs  ${row.cpuUsPerOp.toFixed(1)} CPU µs/op  main thread ${(100 * mainBusy).toFixed(0)}% busy`);
      rows.push(row);
    }
    return rows;
  } finally {
    // A worker whose requests went unanswered may not stop on request: then it is terminated.
    await Promise.all(
      workers.map((w) => {
        const gone = new Promise((r) => w.once('exit', r));
        w.postMessage('stop');
        return Promise.race([gone, new Promise((r) => setTimeout(r, 2000))]).then(() => w.terminate());
      }),
    );
    drv.close();
  }
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(SOURCE_PARENT, 'dpfs-scaling-'));
  const src = join(dir, 'src');
  mkdirSync(src);
  const block = Buffer.alloc(FILE_BYTES, 1);
  for (let q = 1; q <= Math.max(...QUEUE_COUNTS); q++) writeFileSync(join(src, `data-${q}`), block);
  const all: Row[][] = [];
  const skipped = new Set<string>();
  try {
    for (let round = 1; round <= ROUNDS; round++) {
      if (ROUNDS > 1) progress(`round ${round} of ${ROUNDS}`);
      const rows: Row[] = [];
      for (const target of TARGETS) {
        for (const queues of QUEUE_COUNTS) {
          if (skipped.has(`${target}/${queues}`)) continue;
          progress(`${target}, ${queues} request queue${queues > 1 ? 's' : ''}`);
          const sock = join(dir, `${target}.sock`);
          rmSync(sock, { force: true });
          const [cmd, argv] = command(target, src, queues, sock);
          let server: Server;
          try {
            server = await startServer(target, cmd, argv, sock);
          } catch (e) {
            progress(`    skipped: ${(e as Error).message}`);
            skipped.add(`${target}/${queues}`);
            continue;
          }
          try {
            rows.push(...(await measure(server, target, queues, target.startsWith('null') ? 'null' : 'data')));
          } catch (e) {
            // virtiofsd offers one request queue: more is a device's refusal, not a failure;
            // nor is a server that hangs or dies (its rows are missing, the others stand).
            if (!(e instanceof ServerLost) && !/queues,? \d+ needed/.test((e as Error).message)) throw e;
            progress(`    skipped: ${(e as Error).message}`);
            skipped.add(`${target}/${queues}`);
          } finally {
            await stopServer(server);
          }
        }
      }
      all.push(rows);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  // Medians over the rounds, keyed by target/queues/workload.
  const key = (r: Row) => `${r.target}/${r.queues}/${r.workload}`;
  const mid = new Map<string, Row>();
  for (const r of all[0]!) {
    const same = all.map((rows) => rows.find((x) => key(x) === key(r))).filter((x): x is Row => !!x);
    mid.set(key(r), { ...r, ops: median(same.map((x) => x.ops)), p50: median(same.map((x) => x.p50)), p99: median(same.map((x) => x.p99)), cpuUsPerOp: median(same.map((x) => x.cpuUsPerOp)), mainBusy: median(same.map((x) => x.mainBusy)) });
  }
  const lines = [['server', 'queues', 'workload', 'ops/s', 'speed-up vs 1 queue', 'CPU µs/op', 'main thread busy', 'p50 µs', 'p99 µs']];
  for (const r of mid.values()) {
    const one = mid.get(`${r.target}/1/${r.workload}`);
    lines.push([r.target, String(r.queues), LABEL[r.workload], r.ops.toFixed(0), one ? `${(r.ops / one.ops).toFixed(2)}x` : '-', r.cpuUsPerOp.toFixed(1), r.target.startsWith('virtiofsd') ? '-' : `${(100 * r.mainBusy).toFixed(0)}%`, String(r.p50), String(r.p99)]);
  }
  if (ROUNDS > 1) console.log(`\nmedians of ${ROUNDS} rounds`);
  console.log(`\n${availableParallelism()} CPUs; depth ${DEPTH} per queue; each queue driven by its own thread\n`);
  console.log(formatTable(lines));
  mkdirSync(OUT, { recursive: true });
  const file = join(OUT, 'virtiofs-scaling.json');
  writeFileSync(file, JSON.stringify({ date: new Date().toISOString(), cpus: availableParallelism(), seconds: SECONDS, depth: DEPTH, rounds: ROUNDS, median: [...mid.values()], results: all }, null, 2));
  console.log(`wrote ${file}`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
