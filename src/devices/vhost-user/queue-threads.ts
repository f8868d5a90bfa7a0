/**
 * The queue threads of a virtio-fs device (QEMU's num-request-queues served in parallel):
 * request queue q belongs to thread (q - 1) % count. A thread does the ring work of its
 * queues — kicks, chain walks and checks, used-ring updates, interrupts — and the main
 * thread, which owns the FUSE session and the backend, serves the requests and writes the
 * replies into the guest memory both share.
 *
 * Ring set-up and tear-down are synchronous, as vhost-user requires (GET_VRING_BASE answers
 * with the ring's position): the main thread posts the change and waits on a shared control
 * block until the thread has made it. Threads never wait on the main thread.
 */
import { Worker } from 'node:worker_threads';
import type { Logger } from '../../util/log.js';
import type { GuestMemory } from './guest-memory.js';
import { CTL_SEQ, CTL_SLOTS, CTL_STATUS, CTL_VALUE, type FromQueueThread, type RingStart, type ToQueueThread } from './queue-thread-messages.js';

import { type BusyPollCounts, busyPollSetting } from '../../util/busy-poll.js';
/** What the queue threads hand to the device. */
export interface QueueThreadSink {
  request(q: number, gen: number, head: number, request: Buffer, writableGpa: number[], writeSrcGpa?: number[]): void;
  badChain(q: number, head: number, message: string): void;
  broken(q: number, gen: number, message: string): void;
  notifyFailed(q: number, message: string): void;
  /** A queue thread died (a bug, never a guest's doing): its rings are gone; it is being replaced. */
  threadFailed(reason: string): void;
}

interface QueueThread {
  worker: Worker;
  ctl: Int32Array;
  /** Completions not yet posted, per queue: generation and (head, len) pairs. */
  done: Map<number, { gen: number; c: number[] }>;
  flushScheduled: boolean;
  failed?: string;
}

const CONTROL_TIMEOUT_MS = 5000;

export class QueueThreads {
  private readonly threads: QueueThread[] = [];

  /**
   * Each thread's busy polling so far, refreshed by the thread every second: waits caught
   * at 3i, spins that ran out at 3i + 1, ns spun at 3i + 2 (thread i; a replaced thread
   * starts again from 0).
   */
  readonly busyPoll = new Float64Array(new SharedArrayBuffer(8 * 3 * 64));

  /** The threads' busy polling, summed. */
  busyPollTotals(): BusyPollCounts {
    const t: BusyPollCounts = { hits: 0, misses: 0, spinSeconds: 0 };
    for (let i = 0; i < this.count; i++) {
      t.hits += this.busyPoll[3 * i]!;
      t.misses += this.busyPoll[3 * i + 1]!;
      t.spinSeconds += this.busyPoll[3 * i + 2]! / 1e9;
    }
    return t;
  }

  private handles?: SharedArrayBuffer;
  private inodes?: SharedArrayBuffer;
  private nextGen = 1;
  private terminating = false;
  sink?: QueueThreadSink;

  constructor(
    readonly count: number,
    private readonly log: Logger,
    /** What the threads' native data path served (VhostUserFsDevice.served; shared memory). */
    private readonly served: Float64Array,
  ) {
    for (let i = 0; i < count; i++) this.threads.push(this.spawn(i));
  }

  private spawn(i: number): QueueThread {
    const ctl = new Int32Array(new SharedArrayBuffer(CTL_SLOTS * 4));
    // A clean execArgv: the parent's flags (inspectors, -e) mean nothing to a queue thread.
    const worker = new Worker(new URL('./queue-worker.js', import.meta.url), { workerData: { ctl: ctl.buffer, served: this.served.buffer, handles: this.handles, inodes: this.inodes, busyPollUs: busyPollSetting(), busyPoll: this.busyPoll.buffer, index: i }, execArgv: [] });
    const t: QueueThread = { worker, ctl, done: new Map(), flushScheduled: false };
    worker.on('message', (m: FromQueueThread) => this.onMessage(m));
    const failed = (reason: string) => {
      if (t.failed || this.terminating) return;
      t.failed = reason;
      this.log.error({ thread: i, err: reason }, 'queue thread failed; replacing it');
      // The connection it served loses its rings: end it, so the VMM reconnects to a whole device.
      this.threads[i] = this.spawn(i);
      this.sink?.threadFailed(reason);
    };
    worker.on('error', (err) => failed(err.message));
    worker.on('exit', (code) => failed(`exited (${code})`));
    return t;
  }

  /** Queue thread i's worker (for metrics and tests). */
  worker(i: number): Worker {
    return this.threads[i]!.worker;
  }

  private onMessage(m: FromQueueThread): void {
    const sink = this.sink;
    if (!sink) return;
    switch (m.t) {
      case 'requests': {
        const data = Buffer.from(m.data);
        let from = 0;
        for (let i = 0; i < m.heads.length; i++) {
          const to = m.ends[i]!;
          sink.request(m.q, m.gen, m.heads[i]!, data.subarray(from, to), m.gpa[i]!, m.wsrc[i] ?? undefined);
          from = to;
        }
        break;
      }
      case 'badChain':
        sink.badChain(m.q, m.head, m.message);
        break;
      case 'broken':
        sink.broken(m.q, m.gen, m.message);
        break;
      case 'notifyFailed':
        sink.notifyFailed(m.q, m.message);
        break;
    }
  }

  private owner(q: number): QueueThread {
    return this.threads[(q - 1) % this.count]!;
  }

  /** Posts a change and waits until the thread has made it; returns its value. */
  private control(t: QueueThread, m: ToQueueThread): number {
    if (t.failed) throw new Error(`queue thread unavailable (${t.failed})`);
    const seq = Atomics.load(t.ctl, CTL_SEQ);
    t.worker.postMessage(m);
    if (Atomics.wait(t.ctl, CTL_SEQ, seq, CONTROL_TIMEOUT_MS) === 'timed-out') {
      t.failed = 'did not answer';
      throw new Error(`queue thread did not answer "${m.t}"`);
    }
    if (Atomics.load(t.ctl, CTL_STATUS) !== 0) throw new Error(`queue thread could not "${m.t}"`);
    return Atomics.load(t.ctl, CTL_VALUE);
  }

  /** Lets every thread serve READ and WRITE on the backend's shared open files. */
  setHandles(buffer: SharedArrayBuffer, inodes?: SharedArrayBuffer): void {
    this.handles = buffer;
    this.inodes = inodes;
    for (const t of this.threads) if (!t.failed) this.control(t, { t: 'handles', buffer, inodes });
  }

  /** Gives every thread the guest memory (or takes it away). */
  setMemory(mem: GuestMemory | undefined): void {
    const regions = mem ? mem.shared() : null;
    for (const t of this.threads) if (!t.failed) this.control(t, { t: 'memory', regions });
  }

  /** Starts serving ring q on its thread; returns the generation its messages carry. */
  start(spec: Omit<RingStart, 'gen'>): number {
    const gen = this.nextGen++;
    this.control(this.owner(spec.q), { t: 'start', ...spec, gen });
    return gen;
  }

  setCallFd(q: number, callFd: number): void {
    this.control(this.owner(q), { t: 'call', q, callFd });
  }

  /** Stops ring q; returns its next avail index (-1 if it was not running). */
  stop(q: number): number {
    const t = this.owner(q);
    t.done.delete(q);
    return this.control(t, { t: 'stop', q });
  }

  /** Queues the completion of chain `head`; posted to the thread once per event-loop turn. */
  complete(q: number, gen: number, head: number, len: number): void {
    const t = this.owner(q);
    let d = t.done.get(q);
    if (!d || d.gen !== gen) t.done.set(q, (d = { gen, c: [] }));
    d.c.push(head, len);
    if (t.flushScheduled) return;
    t.flushScheduled = true;
    setImmediate(() => {
      t.flushScheduled = false;
      for (const [q, d] of t.done) t.worker.postMessage({ t: 'done', q, gen: d.gen, c: d.c } satisfies ToQueueThread);
      t.done.clear();
    });
  }

  async terminate(): Promise<void> {
    this.terminating = true;
    this.sink = undefined;
    await Promise.all(this.threads.map((t) => t.worker.terminate()));
  }
}
