/**
 * A worker thread that drives one virtqueue of the guest driver, as one guest CPU drives its
 * own queue: the main thread negotiates the device and hands each request queue to a worker,
 * then asks every worker for the same phase at once.
 */
import { parentPort, workerData } from 'node:worker_threads';
import * as hdr from 'hdr-histogram-js';
import { DriverRing, type RingLayout } from '../src/harness/driver-ring.js';
import { FuseClient, type FuseReply } from '../src/harness/fuse-client.js';
import { latencyHistogram } from './latency.js';

export type Workload = 'read4k' | 'write4k' | 'getattr';

export interface LoadSetup {
  layout: RingLayout;
  /** Request ids of this worker start here (decimal string: a bigint cannot be posted to every Node). */
  firstUnique: string;
  ino: number;
  fh: number;
  fileBytes: number;
}

export interface Phase {
  workload: Workload;
  seconds: number;
  depth: number;
}

export interface PhaseResult {
  ops: number;
  secs: number;
  /** The latency histogram (µs), compressed. */
  histogram: string;
  error?: string;
}

const setup = workerData as LoadSetup;
const ring = new DriverRing(setup.layout);
ring.start();
const client = new FuseClient({ request: (_q, req, n) => ring.request(req, n) }, 1, BigInt(setup.firstUnique));
const blocks = Math.max(1, Math.floor(setup.fileBytes / 4096));
const data = Buffer.alloc(4096, 7);

function ok(r: FuseReply): void {
  if (r.error) throw new Error(`errno ${-r.error}`);
}

const ops: Record<Workload, (i: number) => Promise<void>> = {
  read4k: async (i) => ok(await client.read(setup.ino, setup.fh, (((i * 2654435761) >>> 0) % blocks) * 4096, 4096)),
  write4k: async (i) => ok(await client.write(setup.ino, setup.fh, (((i * 2654435761) >>> 0) % blocks) * 4096, data)),
  getattr: async () => ok(await client.getattr(setup.ino)),
};

async function runPhase(p: Phase): Promise<PhaseResult> {
  const h = latencyHistogram();
  const op = ops[p.workload];
  let n = 0;
  const t0 = process.hrtime.bigint();
  const until = Date.now() + p.seconds * 1000;
  await Promise.all(
    Array.from({ length: p.depth }, async (_, w) => {
      for (let i = w; Date.now() < until; i += p.depth) {
        const s = process.hrtime.bigint();
        await op(i);
        h.recordValue(Number(process.hrtime.bigint() - s) / 1000);
        n++;
      }
    }),
  );
  return { ops: n, secs: Number(process.hrtime.bigint() - t0) / 1e9, histogram: hdr.encodeIntoCompressedBase64(h) };
}

parentPort!.on('message', (m: Phase | 'stop') => {
  if (m === 'stop') {
    ring.stop();
    parentPort!.close();
    return;
  }
  runPhase(m).then(
    (r) => parentPort!.postMessage(r),
    (e: Error) => parentPort!.postMessage({ ops: 0, secs: 0, histogram: '', error: e.message } satisfies PhaseResult),
  );
});
parentPort!.postMessage('ready');
