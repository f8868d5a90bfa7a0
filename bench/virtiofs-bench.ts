/**
 * virtio-fs device benchmark without a VM: the guest-driver harness drives dpfs and
 * Debian's virtiofsd (C) over vhost-user, in the same run, over the same directory;
 * then dpfs's null backend (the framework's own cost) on 1 queue and on N queues.
 *
 * Per row: ops/s or MiB/s, latency p50/p99/p99.9 (HDR histogram), CPU µs of the serving
 * process per operation (from /proc), and the ratio dpfs/virtiofsd. Writes a JSON result and
 * an SVG chart at the end.
 *
 *   npm run bench:virtiofs
 *   node dist/bench/virtiofs-bench.js --seconds 3 --queues 2 --out bench-results
 *   options: --targets dpfs,virtiofsd,null  --threads N (dpfs queue threads)  --source-parent DIR
 *   (where the served directory is made; default /var/tmp, a disk file system)  --rounds N
 *   (every server measured N times, interleaved: medians, and each ratio's range)
 *   --virtiofsd PATH  --virtiofsd-sandbox namespace|chroot  --busy-poll US (dpfs's spin limit)
 *   --rows 'QD32,64 KiB' (only the rows whose names contain one of these)
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { projectRoot } from '../src/native/native.js';
import { FuseClient, ioRequest } from '../src/harness/fuse-client.js';
import { Opcode } from '../src/fuse/opcodes.js';
import { GuestDriver } from '../src/harness/guest-driver.js';
import { CLK_TCK, cpuTicks, type Server, startServer, stopServer, VIRTIOFSD, virtiofsdArgs } from './servers.js';
import { formatRatio, formatTable, medianRows, ratioOf, roundsOption } from './rounds.js';
import { option } from './options.js';
import { latencyHistogram } from './latency.js';

const SECONDS = Number(option('seconds', '3'));
const QUEUES = Number(option('queues', '2'));
const OUT = option('out', 'bench-results');
/** Where the served directory is made: a disk file system by default, as most exports are. */
const SOURCE_PARENT = option('source-parent', '/var/tmp');
/** Which servers to run: dpfs (passthrough), virtiofsd, null (1 queue, and --queues queues on as many threads). */
const TARGETS = new Set(option('targets', 'dpfs,virtiofsd,null').split(','));
/** dpfs queue threads (-t); unset: the daemon's default. */
const THREADS = option('threads', '');
const ROUNDS = roundsOption(option('rounds', '1'));
/** dpfs's busy polling limit in µs (--busy-poll); unset: the daemon's default. */
const BUSY_POLL = option('busy-poll', '');
const threadArgs = [...(THREADS ? ['-t', THREADS] : []), ...(BUSY_POLL ? ['--busy-poll', BUSY_POLL] : [])];
/** Only the rows whose names contain one of these (comma-separated); unset: every row. */
const ROW_FILTER = option('rows', '').split(',').filter(Boolean);
const FILE_BYTES = 64 * 1024 * 1024;

const progress = (m: string) => process.stderr.write(`${m}\n`);

interface Row {
  workload: string;
  unit: string;
  value: number;
  p50: number;
  p99: number;
  p999: number;
  cpuUsPerOp: number;
}

/**
 * Measures one row: `load` runs for SECONDS, records each request's latency (µs) in the
 * histogram it is given and returns how many requests it completed. Rows the --rows filter
 * leaves out are not run (undefined).
 */
async function measure(server: Server, workload: string, unit: 'IOPS' | 'MiB/s' | 'ops/s', bytesPerOp: number, load: (h: ReturnType<typeof latencyHistogram>) => Promise<number>): Promise<Row | undefined> {
  if (ROW_FILTER.length && !ROW_FILTER.some((f) => workload.includes(f))) return undefined;
  const h = latencyHistogram();
  const cpu0 = cpuTicks(server.proc.pid!);
  const t0 = process.hrtime.bigint();
  const ops = await load(h);
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = (cpuTicks(server.proc.pid!) - cpu0) / CLK_TCK;
  const rate = unit === 'MiB/s' ? (ops * bytesPerOp) / secs / (1024 * 1024) : ops / secs;
  const row = { workload, unit, value: rate, p50: h.getValueAtPercentile(50), p99: h.getValueAtPercentile(99), p999: h.getValueAtPercentile(99.9), cpuUsPerOp: (cpu * 1e6) / ops };
  progress(`    ${workload.padEnd(28)} ${row.value.toFixed(0).padStart(8)} ${unit}  p50 ${row.p50}µs p99 ${row.p99}µs`);
  return row;
}

/** Runs `op` from `depth` concurrent loops over the FUSE clients (one per queue). */
function run(server: Server, clients: FuseClient[], workload: string, unit: 'IOPS' | 'MiB/s' | 'ops/s', depth: number, bytesPerOp: number, op: (c: FuseClient, i: number) => Promise<void>): Promise<Row | undefined> {
  return measure(server, workload, unit, bytesPerOp, async (h) => {
    let ops = 0;
    const until = Date.now() + SECONDS * 1000;
    await Promise.all(
      Array.from({ length: depth }, async (_, w) => {
        const c = clients[w % clients.length]!;
        for (let i = w; Date.now() < until; i += depth) {
          const s = process.hrtime.bigint();
          await op(c, i);
          h.recordValue(Number(process.hrtime.bigint() - s) / 1000);
          ops++;
        }
      }),
    );
    return ops;
  });
}

/**
 * Runs a closed-loop load straight on the driver's rings (DriverRing.load): `depth` requests
 * kept in flight, spread over the request queues (depth 1: the first), laid out once with
 * only their offset rewritten per request — so that the driver, one JavaScript thread,
 * costs little per request and the rows measure the server.
 */
function runRing(server: Server, drv: GuestDriver, queues: number, workload: string, unit: 'IOPS' | 'MiB/s', depth: number, bytesPerOp: number, request: (q: number, i: number) => Uint8Array, replyBytes: number, offsetAt: (n: number) => number): Promise<Row | undefined> {
  return measure(server, workload, unit, bytesPerOp, async (h) => {
    const qs = depth === 1 ? [1] : Array.from({ length: Math.min(queues, depth) }, (_, i) => i + 1);
    const results = await Promise.all(
      qs.map((q, k) =>
        drv.queues[q]!.load({
          depth: Math.floor(depth / qs.length) + (k < depth % qs.length ? 1 : 0),
          seconds: SECONDS,
          request: (i) => request(q, i),
          replyBytes,
          next: (v, n) => {
            v.setUint32(48, offsetAt(n * qs.length + k), true); // the files here are < 4 GiB
            v.setUint32(52, 0, true);
          },
          record: (us) => h.recordValue(Math.max(1, Math.round(us))),
        }),
      ),
    );
    const errors = results.reduce((n, r) => n + r.errors, 0);
    if (errors) throw new Error(`${workload}: ${errors} requests failed`);
    return results.reduce((n, r) => n + r.ops, 0);
  });
}

function check(r: { error: number; body: Buffer }, what: string): void {
  if (r.error) throw new Error(`${what}: errno ${-r.error}`);
}

async function suite(server: Server, queues: number, fileName: string, quick: boolean): Promise<Row[]> {
  const drv = new GuestDriver({ socket: server.socket, queues, depth: 32, queueSize: 256, slotBytes: 1024 * 1024 + 4096 });
  await drv.connect();
  try {
    const base = new FuseClient(drv, 1);
    await base.init();
    const clients = Array.from({ length: queues }, (_, q) => new FuseClient(drv, q + 1));
    const ino = await base.lookup(1, fileName);
    const fh = await base.open(ino, 2 /* O_RDWR */);
    const blocks4k = FILE_BYTES / 4096;
    const rand = (i: number) => ((i * 2654435761) >>> 0) % blocks4k;
    const data4k = Buffer.alloc(4096, 7);
    const data64k = Buffer.alloc(65536, 9);
    const data1m = Buffer.alloc(1024 * 1024, 3);
    const rows: (Row | undefined)[] = [];
    const read = (size: number, at: (i: number) => number) => async (c: FuseClient, i: number) => check(await c.read(ino, fh, at(i), size), 'READ');
    const write = (buf: Buffer, at: (i: number) => number) => async (c: FuseClient, i: number) => check(await c.write(ino, fh, at(i), buf), 'WRITE');
    // Warm-up, not measured: a JIT compiles its hot paths in the first second; the rows are
    // meant to show the steady state of every server alike.
    const until = Date.now() + 1500;
    await Promise.all(
      Array.from({ length: 8 }, async (_, w) => {
        const c = clients[w % clients.length]!;
        for (let i = w; Date.now() < until; i += 8) {
          await read(4096, (k) => rand(k) * 4096)(c, i);
          if (quick) continue;
          await write(data4k, (k) => rand(k) * 4096)(c, i);
          const n = await c.lookup(1, fileName);
          check(await c.getattr(n), 'GETATTR');
          await c.forget(n, 1);
        }
      }),
    );
    // READ and WRITE rows: requests laid out once per slot (unique per queue and slot), only
    // their offsets rewritten; replies not copied out.
    const io = (op: Opcode.FUSE_READ | Opcode.FUSE_WRITE, data: Buffer) => (q: number, i: number) =>
      ioRequest((BigInt(q) << 32n) + BigInt(2 * i + 2), ino, fh, 0, op === Opcode.FUSE_READ ? data.length : data);
    const at = (n: number) => rand(n) * 4096;
    const seq = (size: number) => (n: number) => (n * size) % FILE_BYTES;
    const R = Opcode.FUSE_READ;
    const W = Opcode.FUSE_WRITE;
    rows.push(await runRing(server, drv, queues, '4 KiB random read QD1', 'IOPS', 1, 4096, io(R, data4k), 16 + 4096, at));
    rows.push(await runRing(server, drv, queues, '4 KiB random read QD32', 'IOPS', 32, 4096, io(R, data4k), 16 + 4096, at));
    if (!quick) {
      rows.push(await runRing(server, drv, queues, '4 KiB random write QD1', 'IOPS', 1, 4096, io(W, data4k), 16 + 8, at));
      rows.push(await runRing(server, drv, queues, '4 KiB random write QD32', 'IOPS', 32, 4096, io(W, data4k), 16 + 8, at));
      rows.push(await runRing(server, drv, queues, '64 KiB sequential read', 'MiB/s', 4, 65536, io(R, data64k), 16 + 65536, seq(65536)));
      rows.push(await runRing(server, drv, queues, '64 KiB sequential write', 'MiB/s', 4, 65536, io(W, data64k), 16 + 8, seq(65536)));
      rows.push(await runRing(server, drv, queues, '1 MiB sequential read', 'MiB/s', 4, 1 << 20, io(R, data1m), 16 + (1 << 20), seq(1 << 20)));
      rows.push(await runRing(server, drv, queues, '1 MiB sequential write', 'MiB/s', 4, 1 << 20, io(W, data1m), 16 + 8, seq(1 << 20)));
      rows.push(
        await run(server, clients, 'LOOKUP+GETATTR+FORGET', 'ops/s', 8, 0, async (c) => {
          const n = await c.lookup(1, fileName);
          check(await c.getattr(n), 'GETATTR');
          await c.forget(n, 1);
        }),
      );
    }
    return rows.filter((r) => r !== undefined);
  } finally {
    drv.close();
  }
}

function svg(results: Record<string, Row[]>): string {
  const names = Object.keys(results);
  const rows = results[names[0]!]!.map((r) => r.workload);
  const w = 900;
  const rowH = 16 * names.length + 14;
  const h = 40 + rows.length * rowH;
  const colors = ['#2f6fd0', '#d07a2f', '#3a9a4a', '#9a3a8a'];
  // Relative to virtiofsd when it ran, else to the first server measured.
  const refName = results.virtiofsd ? 'virtiofsd' : names[0]!;
  let out = `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" font-family="sans-serif" font-size="11">`;
  out += `<text x="10" y="18" font-size="14">virtio-fs over vhost-user: throughput relative to ${refName} (1.0 = equal)</text>`;
  names.forEach((n, i) => (out += `<rect x="${520 + i * 95}" y="26" width="10" height="10" fill="${colors[i % 4]}"/><text x="${534 + i * 95}" y="35">${n}</text>`));
  rows.forEach((label, ri) => {
    const y0 = 44 + ri * rowH;
    out += `<text x="10" y="${y0 + 12}">${label}</text>`;
    const ref = results[refName]![ri]?.value ?? 1;
    names.forEach((n, i) => {
      const v = results[n]![ri]?.value;
      if (v === undefined) return;
      const ratio = v / ref;
      const bw = Math.min(640, ratio * 160);
      out += `<rect x="200" y="${y0 + i * 16}" width="${bw.toFixed(1)}" height="13" fill="${colors[i % 4]}"/><text x="${205 + bw}" y="${y0 + i * 16 + 11}">${ratio.toFixed(2)}x</text>`;
    });
  });
  out += `<line x1="360" y1="40" x2="360" y2="${h}" stroke="#888" stroke-dasharray="3,3"/></svg>\n`;
  return out;
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(SOURCE_PARENT, 'dpfs-vbench-'));
  const src = join(dir, 'src');
  mkdirSync(src);
  writeFileSync(join(src, 'data'), Buffer.alloc(FILE_BYTES, 1));
  const cli = join(projectRoot, 'dist/src/cli/main.js');
  const results: Record<string, Row[][]> = {};
  try {
    const targets: [string, string, (sock: string) => string[], number, string, boolean][] = [];
    if (TARGETS.has('dpfs')) targets.push(['dpfs', process.execPath, (s) => [cli, 'vhost-user', s, '-b', 'passthrough', '-s', src, ...threadArgs], 1, 'data', false]);
    if (TARGETS.has('virtiofsd') && existsSync(VIRTIOFSD)) targets.push(['virtiofsd', VIRTIOFSD, (s) => virtiofsdArgs(s, src), 1, 'data', false]);
    else if (TARGETS.has('virtiofsd')) progress(`(no ${VIRTIOFSD}: the C reference is skipped)`);
    if (TARGETS.has('null')) {
      targets.push(['dpfs-null', process.execPath, (s) => [cli, 'vhost-user', s, '-b', 'null', ...threadArgs], 1, 'null', !TARGETS.has('dpfs')]);
      // N queues as the daemon serves them by default (or on --threads queue threads). This
      // harness drives every queue from one thread: npm run bench:scaling drives one per queue.
      if (QUEUES > 1) targets.push([`dpfs-null-${QUEUES}q${THREADS ? `-${THREADS}t` : ''}`, process.execPath, (s) => [cli, 'vhost-user', s, '-b', 'null', '-q', String(QUEUES), ...threadArgs], QUEUES, 'null', true]);
    }
    for (let round = 1; round <= ROUNDS; round++) {
      if (ROUNDS > 1) progress(`round ${round} of ${ROUNDS}`);
      for (const [name, cmd, argv, queues, file, quick] of targets) {
        progress(`${name} (${queues} request queue${queues > 1 ? 's' : ''})`);
        const sock = join(dir, `${name}.sock`);
        rmSync(sock, { force: true }); // an earlier round's: the new server's must be waited for
        const server = await startServer(name, cmd, argv(sock), sock);
        try {
          (results[name] ??= []).push(await suite(server, queues, file, quick));
        } finally {
          await stopServer(server);
        }
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const mid: Record<string, Row[]> = Object.fromEntries(Object.entries(results).map(([n, r]) => [n, medianRows(r)]));
  const firstName = Object.keys(mid)[0]!;
  const first = mid[firstName]!;
  const ref = mid.virtiofsd;
  const head = ['workload', ...Object.keys(mid), ...(ref ? [`${firstName}/virtiofsd`] : []), `CPU µs/op ${firstName}`, ...(ref ? ['CPU µs/op virtiofsd'] : []), `p99 µs ${firstName}`, ...(ref ? ['p99 µs virtiofsd'] : [])];
  const lines = [head];
  first.forEach((r, i) => {
    lines.push([
      r.workload,
      ...Object.values(mid).map((rs) => (rs[i] ? `${rs[i]!.value.toFixed(0)} ${r.unit}` : '-')),
      ...(ref ? [formatRatio(ratioOf(results[firstName]!, results.virtiofsd!, i), ROUNDS)] : []),
      r.cpuUsPerOp.toFixed(1),
      ...(ref ? [ref[i]!.cpuUsPerOp.toFixed(1)] : []),
      String(r.p99),
      ...(ref ? [String(ref[i]!.p99)] : []),
    ]);
  });
  if (ROUNDS > 1) console.log(`\nmedians of ${ROUNDS} rounds; the ratio's range over the rounds in brackets`);
  console.log('\n' + formatTable(lines));
  console.log('\nThe harness and the server share this machine\'s cores; compare ratios, not absolute figures.');
  mkdirSync(OUT, { recursive: true });
  writeFileSync(join(OUT, 'virtiofs-bench.json'), JSON.stringify({ date: new Date().toISOString(), seconds: SECONDS, queues: QUEUES, rounds: ROUNDS, median: mid, results }, null, 2));
  writeFileSync(join(OUT, 'virtiofs-bench.svg'), svg(mid));
  console.log(`wrote ${join(OUT, 'virtiofs-bench.json')} and ${join(OUT, 'virtiofs-bench.svg')}`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
