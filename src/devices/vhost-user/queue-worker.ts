/**
 * A queue thread: owns some request queues of a virtio-fs device. It waits for their kicks,
 * walks and checks the descriptor chains in the guest memory it shares with the main
 * thread, posts the requests there in batches, and returns the chains the main thread has
 * answered to the used ring, signalling the driver.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { iovLength, rangesAfter } from '../../util/iov.js';
import { WRITE_HEAD, requestHead } from './fuse-request.js';
import { GuestMemory } from './guest-memory.js';
import { CTL_SEQ, CTL_STATUS, CTL_VALUE, type FromQueueThread, type RingStart, type ToQueueThread } from './queue-thread-messages.js';
import { RingRunner } from './ring-runner.js';
import { SharedHandles } from '../../fs/shared-handles.js';
import { native } from '../../native/native.js';
import { setBusyPoll } from '../../util/busy-poll.js';
import { type Chain, Virtqueue, fastCounts, ringViews } from './virtqueue.js';

const port = parentPort!;
const data = workerData as { ctl: SharedArrayBuffer; served: SharedArrayBuffer; handles?: SharedArrayBuffer; inodes?: SharedArrayBuffer; busyPollUs?: number; busyPoll: SharedArrayBuffer; index: number };
if (data.busyPollUs) {
  setBusyPoll(data.busyPollUs);
  // For metrics: this thread's spins, where the main thread can read them.
  const mine = new Float64Array(data.busyPoll, 8 * 3 * data.index, 3);
  setInterval(() => mine.set(native().busyPollStats().slice(0, 3)), 1000).unref();
}
const ctl = new Int32Array(data.ctl);
/** Requests served on this thread: READs at 2q, WRITEs at 2q + 1 (this thread alone writes its queues' entries). */
const served = new Float64Array(data.served);
let mem: GuestMemory | undefined;
let handles = data.handles ? new SharedHandles(data.handles) : undefined;
let inodes = data.inodes ? new SharedHandles(data.inodes) : undefined;
const rings = new Map<number, { runner: RingRunner; gen: number; spec: RingStart }>();

const post = (m: FromQueueThread, transfer?: ArrayBuffer[]) => port.postMessage(m, transfer);

function start(s: RingStart): void {
  if (!mem) throw new Error('no guest memory');
  stop(s.q);
  const vq = new Virtqueue(mem, s.num, ringViews(mem, s.addr, s.num), { eventIdx: s.eventIdx, indirect: s.indirect });
  vq.setBase(s.base);
  // READ and WRITE on the backend's published files, GETATTR of its published inodes:
  // served here, by native code. A write that waits holds up only this thread's queues, so
  // writes at once always may.
  if (handles) vq.enableFastPath({ handles, inodes, counts: fastCounts(served, s.q) });
  let batch: Chain[] = [];
  // The start of each request, copied once: the guest cannot change it under us. It decides
  // whether this thread serves the request and, if not, is the header posted.
  let heads: ReturnType<typeof requestHead>[] = [];
  const runner: RingRunner = new RingRunner(vq, s.kickFd, s.callFd, {
    request: (chain) => {
      batch.push(chain);
      heads.push(requestHead(chain.readable));
    },
    drained: () => {
      if (batch.length === 0) return;
      const chains = batch;
      const starts = heads;
      batch = [];
      heads = [];
      // One private copy of every request of the batch. A WRITE's data is not parsed: it
      // stays in guest memory (see splitRequest), and the header checked is the one posted.
      const wsrc = chains.map((c, i) => (starts[i]!.dataInPlace ? rangesAfter(c.readableGpa, WRITE_HEAD) : null));
      let total = 0;
      for (let i = 0; i < chains.length; i++) total += wsrc[i] ? WRITE_HEAD : iovLength(chains[i]!.readable);
      const data = new ArrayBuffer(total);
      const bytes = new Uint8Array(data);
      const ends: number[] = [];
      let at = 0;
      for (let i = 0; i < chains.length; i++) {
        for (const b of wsrc[i] ? [starts[i]!.head] : chains[i]!.readable) {
          bytes.set(b, at);
          at += b.length;
        }
        ends.push(at);
      }
      post({ t: 'requests', q: s.q, gen: s.gen, data, heads: chains.map((c) => c.head), ends, gpa: chains.map((c) => c.writableGpa), wsrc }, [data]);
    },
    badChain: (head, message) => post({ t: 'badChain', q: s.q, head, message }),
    broken: (message) => post({ t: 'broken', q: s.q, gen: s.gen, message }),
    notifyFailed: (message) => post({ t: 'notifyFailed', q: s.q, message }),
    writeAtOnceMax: () => 0xffffffff,
  });
  rings.set(s.q, { gen: s.gen, runner, spec: s });
  runner.start();
}

function stop(q: number): number {
  const ring = rings.get(q);
  if (!ring) return -1;
  rings.delete(q);
  return ring.runner.stop();
}

port.on('message', (m: ToQueueThread) => {
  if (m.t === 'done') {
    const ring = rings.get(m.q);
    if (!ring || ring.gen !== m.gen) return; // answers for a ring that has since stopped
    for (let i = 0; i < m.c.length; i += 2) ring.runner.complete(m.c[i]!, m.c[i + 1]!);
    return;
  }
  let status = 0;
  let value = 0;
  try {
    switch (m.t) {
      case 'memory':
        mem = m.regions ? GuestMemory.fromShared(m.regions) : undefined;
        // Running rings carry on over the new table (the main thread checked they fit it).
        for (const [q, ring] of rings) {
          if (!mem) stop(q);
          else ring.runner.remap(mem, ringViews(mem, ring.spec.addr, ring.spec.num));
        }
        break;
      case 'start':
        start(m);
        break;
      case 'handles':
        handles = new SharedHandles(m.buffer);
        inodes = m.inodes ? new SharedHandles(m.inodes) : undefined;
        break;
      case 'call':
        rings.get(m.q)?.runner.setCallFd(m.callFd);
        break;
      case 'stop':
        value = stop(m.q);
        break;
    }
  } catch {
    status = 1;
  }
  Atomics.store(ctl, CTL_STATUS, status);
  Atomics.store(ctl, CTL_VALUE, value);
  Atomics.add(ctl, CTL_SEQ, 1);
  Atomics.notify(ctl, CTL_SEQ);
});
