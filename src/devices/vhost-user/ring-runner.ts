/**
 * Serves one running virtqueue on the calling thread's event loop (the main thread or a
 * queue thread): waits for kicks, takes every available chain — READs and WRITEs on
 * published files and GETATTRs of published inodes through the ring's native data path,
 * where it has one — hands good ones on, returns bad ones unanswered, and signals the
 * driver once per event-loop turn for everything completed in it.
 */
import { errnoName } from '../../fuse/errno.js';
import { native } from '../../native/native.js';
import { busyPollSetting } from '../../util/busy-poll.js';
import type { GuestMemory } from './guest-memory.js';
import { type Chain, ChainError, type RingAddrs, type Virtqueue } from './virtqueue.js';

export interface RingEvents {
  /** A well-formed chain to serve; answer it with complete(). */
  request(chain: Chain): void;
  /** Everything available was taken (a batch ends). */
  drained?(): void;
  /** A chain that could not be served was returned unanswered. */
  badChain(head: number, message: string): void;
  /** The ring itself is broken; the runner has stopped and waits for the VMM to reset it. */
  broken(message: string): void;
  /** The driver could not be signalled. */
  notifyFailed(message: string): void;
  /**
   * The largest write that can wait a little (local disk) the ring's native data path
   * (Virtqueue.serveFast) may run now; absent: none.
   */
  writeAtOnceMax?(): number;
}

/**
 * Chains taken per event-loop turn before the completions so far are signalled (and the
 * loop's other work runs). With the JavaScript request path, small batches kept the driver
 * refilling while we worked (4 KiB reads at depth 32: 1.6x the throughput of unbounded
 * batches at 4); served natively, a request costs so little that the turn and its interrupt
 * dominated: each interrupt wakes the driver, an IPI in a VM (15–17% of the daemon's CPU in
 * 4 KiB writes at depth 32 at 4 per turn). At 16, depth-32 reads went from 1.10x to 1.30x
 * of virtiofsd and writes from 0.87x to 1.11x in the harness; shallower queues never fill a
 * batch, so nothing changes for them.
 */
const BATCH = 16;

/**
 * Interrupts are coalesced, as a NIC coalesces its own, by count and by time: one for what a
 * turn of the event loop completed, except that a completion more than this (ms) after the
 * last interrupt sent at once is signalled at once. After a long request (a 64 KiB copy) or a
 * run of short ones the driver then works on what is done while we go on, rather than both
 * sides taking turns: in the harness on 2 cores, 64 KiB reads at depth 4 ran 1.9x and
 * LOOKUP+GETATTR+FORGET 1.15x with it; small requests at depth 32 (whose batches take about
 * that long) about as before.
 */
const NOTIFY_WITHIN_MS = 0.01;

/**
 * ... but only while the driver has few requests waiting for us: with more than this many
 * available and not taken, it is busy enough, and an interrupt at once would only wake it
 * more often (each wake-up an IPI in a VM: 17% of the daemon's CPU in 4 KiB writes at depth
 * 32); the turn's interrupt comes soon anyway.
 */
const NOTIFY_AT_ONCE_BELOW = 8;

/**
 * How long (ms) a ring that just had work is watched for more before the driver is asked to
 * kick again, where the thread busy-polls at all (util/busy-poll.ts): a driver that keeps
 * requests coming adds them without a kick (for a guest, a VM exit less; for us an eventfd
 * read and an event-loop wake-up less). Short, since the rest of the thread's event loop
 * waits meanwhile (the thread's other rings are served from the spin).
 */
const SPIN_MS = 0.02;
const spinMs = () => Math.min(SPIN_MS, busyPollSetting() / 1000);

/** This thread's running rings: a spin serves any of them that gets work. */
const running = new Set<RingRunner>();
/** A spin is under way on this thread (rings served from it do not start their own). */
let spinning = false;

export class RingRunner {
  private kickWatch?: unknown;
  private notifyScheduled = false;
  /** Completions not yet signalled (scheduleNotify). */
  private notifyPending = false;
  /** When the driver was last signalled at once (performance.now()). */
  private lastNotify = 0;
  private continueScheduled = false;
  private stopped = false;
  /** Inside process() (a spin must not re-enter it). */
  private inProcess = false;

  constructor(
    private vq: Virtqueue,
    private readonly kickFd: number,
    private callFd: number,
    private readonly events: RingEvents,
  ) {}

  /** Watches for kicks and serves what the driver made available before the ring started. */
  start(): void {
    this.kickWatch = native().watch(this.kickFd, () => this.onKick());
    running.add(this);
    this.process();
  }

  setCallFd(fd: number): void {
    this.callFd = fd;
  }

  /** The ring over a new memory table: same indices, so chains in flight still complete. */
  remap(mem: GuestMemory, rings: RingAddrs): void {
    this.vq = this.vq.remapped(mem, rings);
    if (!this.stopped) this.process();
  }

  /** Stops serving (the kick fd is no longer watched; the caller closes it). Returns the next avail index. */
  stop(): number {
    if (!this.stopped) {
      this.stopped = true;
      running.delete(this);
      if (this.kickWatch) native().unwatch(this.kickWatch);
      this.kickWatch = undefined;
    }
    return this.vq.lastAvail;
  }

  /** Returns a served chain to the driver with `len` bytes written. */
  complete(head: number, len: number): void {
    if (this.stopped) return; // the ring stopped meanwhile: the VMM has moved on
    this.vq.push(head, len);
    this.completed();
  }

  /** Signals what was completed now, or with the rest of this turn's (see NOTIFY_WITHIN_MS). */
  private completed(): void {
    const now = performance.now();
    if (now - this.lastNotify > NOTIFY_WITHIN_MS && this.vq.pending() < NOTIFY_AT_ONCE_BELOW) {
      this.lastNotify = now;
      this.notify();
    } else this.scheduleNotify();
  }

  /** Signals the driver if event-idx (or its flags) ask for it. */
  private notify(): void {
    this.notifyPending = false;
    if (this.stopped || this.callFd < 0 || !this.vq.shouldNotify()) return;
    const r = native().eventfdSignal(this.callFd);
    if (r < 0) this.events.notifyFailed(errnoName(-r));
  }

  private onKick(): void {
    native().eventfdDrain(this.kickFd); // 0 when already drained: fine
    this.process();
  }

  private process(): void {
    this.inProcess = true;
    try {
      this.serveRing();
    } finally {
      this.inProcess = false;
    }
  }

  private serveRing(): void {
    const vq = this.vq;
    for (let taken = 0; !this.stopped; taken++) {
      if (taken === BATCH) {
        // Let this turn's completions reach the driver (it refills while we go on) before
        // taking more; the driver need not kick meanwhile (the kick is not re-armed).
        this.events.drained?.();
        if (!this.continueScheduled) {
          this.continueScheduled = true;
          setImmediate(() => {
            this.continueScheduled = false;
            this.process();
          });
        }
        return;
      }
      const fast = vq.serveFast(BATCH - taken, this.events.writeAtOnceMax?.() ?? 0);
      if (fast > 0) {
        this.completed();
        taken += fast - 1;
        continue;
      }
      let chain: Chain | null;
      try {
        chain = vq.pop();
      } catch (err) {
        if (err instanceof ChainError) {
          vq.push(err.head, 0);
          this.scheduleNotify();
          this.events.badChain(err.head, err.message);
          continue;
        }
        this.stop();
        this.events.broken((err as Error).message);
        return;
      }
      if (!chain) {
        if (taken > 0 && this.awaitWork()) continue;
        vq.armKick();
        if (vq.hasWork()) continue; // a buffer made available while we armed: go on
        this.events.drained?.();
        return;
      }
      this.events.request(chain);
    }
  }

  private scheduleNotify(): void {
    this.notifyPending = true;
    if (this.notifyScheduled) return;
    this.notifyScheduled = true;
    // One interrupt for everything completed in this turn of the event loop.
    setImmediate(() => {
      this.notifyScheduled = false;
      if (this.notifyPending) this.notify();
    });
  }

  /**
   * The ring ran dry after serving: signals what was completed (the driver refills on it),
   * then watches the avail indices of this thread's rings for SPIN_MS, serving any other
   * ring that gets work meanwhile. True if more work came here, without a kick.
   */
  private awaitWork(): boolean {
    const spin = spinMs();
    if (spinning || spin <= 0) return false; // served from a spin: that one goes on watching
    spinning = true;
    try {
      this.flush();
      // A fixed deadline: rings that stay busy must not keep the rest of the loop waiting.
      const until = performance.now() + spin;
      do {
        if (this.vq.hasWork()) return true;
        for (const other of running) {
          if (other === this || other.inProcess || !other.vq.hasWork()) continue;
          other.process();
          other.flush();
        }
      } while (performance.now() < until);
      return false;
    } finally {
      spinning = false;
    }
  }

  /** Hands on what was taken and signals what was completed, now rather than at the turn's end. */
  private flush(): void {
    this.events.drained?.();
    if (this.notifyPending) {
      this.lastNotify = performance.now();
      this.notify();
    }
  }
}
