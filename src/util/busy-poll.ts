/**
 * Busy polling of the daemon's event loops (the main thread's and each queue thread's): just
 * before a loop would sleep, it spins for up to the set time asking whether a descriptor
 * became ready, sized adaptively by how long its waits have been (native/busy_poll.c). A
 * request that arrives within the spin skips the sleep and the wake-up, each several µs
 * in a VM; an idle loop stops spinning within a few waits. 0 turns it off.
 */
import { native } from '../native/native.js';

/**
 * The daemon's default. QEMU's iothreads poll up to 32 µs; a process creating files one by
 * one sent its next request 25–35 µs after each reply on a 2-core VM (a 25 µs limit caught
 * half as many creates/s as 35 or 50).
 */
export const DEFAULT_BUSY_POLL_US = 50;
/** Longer spins than this would delay timers noticeably and burn a core for nothing. */
export const MAX_BUSY_POLL_US = 1000;

let current = 0;

/** Sets the spin limit for this thread's loop and the queue threads started from now on. */
export function setBusyPoll(us: number): void {
  native().busyPoll(us);
  current = us;
}

/** The limit queue threads take (0 when never set: tests and libraries do not spin). */
export function busyPollSetting(): number {
  return current;
}

/** Waits caught by a spin, spins that ran out, and seconds spun. */
export interface BusyPollCounts {
  hits: number;
  misses: number;
  spinSeconds: number;
}

/** For metrics: this thread's busy polling so far. */
export function busyPollCounts(): BusyPollCounts {
  const [hits, misses, ns] = native().busyPollStats();
  return { hits, misses, spinSeconds: ns / 1e9 };
}
