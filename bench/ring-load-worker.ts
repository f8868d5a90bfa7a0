/**
 * A worker thread that drives one virtqueue of the guest driver, as one guest CPU drives its
 * own queue: the main thread negotiates the device and hands each request queue to a worker,
 * then asks every worker for the same phase at once.
 */
import { parentPort, workerData } from 'node:worker_threads';
import * as hdr from 'hdr-histogram-js';
import { DriverRing, type RingLayout } from '../src/harness/driver-ring.js';
import { Opcode } from '../src/fuse/opcodes.js';
import { ioRequest } from '../src/harness/fuse-client.js';
import { encodeRequest } from '../src/fuse/request-codec.js';
import { RequestSpecs } from '../src/fuse/request-specs.js';
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
const blocks = Math.max(1, Math.floor(setup.fileBytes / 4096));
const data = Buffer.alloc(4096, 7);
/** Request ids of this worker: its own range, one per slot (a slot's request is in flight once at a time). */
const unique = (i: number) => BigInt(setup.firstUnique) + BigInt(2 * i + 2);

/** Each workload's request, laid out once per slot; READ and WRITE get a new offset per send. */
const requests: Record<Workload, { request: (i: number) => Uint8Array; replyBytes: number; random: boolean }> = {
  read4k: {
    request: (i) => ioRequest(unique(i), setup.ino, setup.fh, 0, 4096),
    replyBytes: 16 + 4096,
    random: true,
  },
  write4k: {
    request: (i) => ioRequest(unique(i), setup.ino, setup.fh, 0, data),
    replyBytes: 16 + 8,
    random: true,
  },
  getattr: {
    request: (i) => encodeRequest({ opcode: Opcode.FUSE_GETATTR, unique: unique(i), nodeid: setup.ino, uid: 0, gid: 0, pid: 1 }, RequestSpecs[Opcode.FUSE_GETATTR], { getattr_flags: 0, dummy: 0, fh: 0n }),
    replyBytes: 16 + 104,
    random: false,
  },
};

/** One phase as a closed loop on the ring (DriverRing.load): nothing allocated per request. */
async function runPhase(p: Phase): Promise<PhaseResult> {
  const h = latencyHistogram();
  const w = requests[p.workload];
  const r = await ring.load({
    depth: p.depth,
    seconds: p.seconds,
    request: w.request,
    replyBytes: w.replyBytes,
    next: w.random
      ? (v, n) => {
          v.setUint32(48, (((n * 2654435761) >>> 0) % blocks) * 4096, true);
          v.setUint32(52, 0, true);
        }
      : undefined,
    record: (us) => h.recordValue(Math.max(1, Math.round(us))),
  });
  if (r.errors) throw new Error(`${r.errors} of ${r.ops} requests failed`);
  return { ops: r.ops, secs: r.secs, histogram: hdr.encodeIntoCompressedBase64(h) };
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
