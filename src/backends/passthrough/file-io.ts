/**
 * Positional reads, writes and fsyncs on an open host file. Reads and writes first try the
 * page cache synchronously (preadv2/pwritev2 with RWF_NOWAIT: one system call, never waits
 * for a device or server); what that cannot do goes to io_uring (the kernel's own workers
 * do what would wait) or, where io_uring is refused, to libuv's pool. Access was checked
 * when the file was opened as the caller, so no credentials are needed here.
 *
 * Where RWF_NOWAIT is refused although the call would not wait, a small one runs at once
 * instead: any read or write on a memory file system (tmpfs has no RWF_NOWAIT), and a
 * write on a local disk file system (ext4 refuses buffered RWF_NOWAIT writes; they are a
 * copy into the page cache). Measured on ext4: 4 µs for a 4 KiB pwrite at once, against
 * 8 µs of CPU through io_uring at depth 32 and 46 µs at depth 1 (the kernel hands each
 * such write to one of its worker threads). A write at once can still wait: on a page under
 * writeback (a few ms, now and then) or when the page cache is over its dirty limit (up to
 * 200 ms, on every write to that device). Calls over STALL_MS in which the thread slept
 * count as stalls (one only preempted by a busy machine does not: on 2 busy cores, every
 * write over 1 ms had been preempted, none had waited), against a
 * budget of the host device (shared by all its files, as the kernel's throttling is): once
 * they add up to STALL_BUDGET_MS within a second, that device's writes go the asynchronous
 * way for BACKOFF_MS, twice as long each time the budget trips again right after a back-off
 * (up to MAX_BACKOFF_MS). The event loop loses a few per cent of a second to stalls at most,
 * never a write's worth each time, however many files are written.
 *
 * Calls at once are the event loop's own time, though: where the loop is saturated and the
 * machine has cores to spare, they go to io_uring instead, whose workers run them in
 * parallel (16 cores, 4 KiB writes at depth 32 on ext4: 64K/s through io_uring against 42K/s
 * at once; at depth 1 at once did 18K/s against 13K/s; on 2 cores at once was ahead at both).
 */
import { fdatasync, fsync as fsFsync, readv as fsReadv, readvSync, writev as fsWritev, writevSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { Errno, FsError } from '../../fuse/errno.js';
import { native } from '../../native/native.js';
import { Uring } from '../../native/uring.js';
import { iovAfter, iovLength } from '../../util/iov.js';
import { offloadPays } from '../../util/loop-load.js';
import { readCached } from '../../fs/page-cache.js';
import { AT_ONCE_MAX } from '../../fs/shared-handles.js';

const IOV_MAX = 1024;

/** Per open file: which directions the host file system lets us try without waiting. */
export interface NowaitState {
  noNowaitRead?: boolean;
  noNowaitWrite?: boolean;
  /** On a memory file system: small reads and writes run at once. */
  inMemory?: boolean;
  /**
   * On a local disk file system: small writes that RWF_NOWAIT refuses run at once, within
   * the stall budget of the file's host device.
   */
  localDisk?: StallBudget;
}

/** Stalls of calls at once on one host device (all times performance.now() ms). */
export interface StallBudget {
  /** Until when writes go the asynchronous way. */
  slowUntil?: number;
  /** The current window of stalls: since when, and ms in all. */
  stallSince?: number;
  stalledMs?: number;
  /** The last back-off's length. */
  backoffMs?: number;
  /** Back-offs so far. */
  trips?: number;
  /** Called when the budget trips (slowUntil was just set). */
  onTrip?: () => void;
}

export { AT_ONCE_MAX };
/** A call at once slower than this (ms) waited for something: a stall of the event loop. */
export const STALL_MS = 1;
/** Stalls a file may cost the event loop per STALL_WINDOW_MS before its writes go asynchronous. */
export const STALL_BUDGET_MS = 20;
export const STALL_WINDOW_MS = 1000;
/** How long (ms) a device's writes then go the asynchronous way, at first and at most. */
export const BACKOFF_MS = 5000;
export const MAX_BACKOFF_MS = 80_000;

/**
 * Whether a call of `bytes` on this file runs at once (see the module comment); `offload`:
 * whether the loop is saturated with cores to spare.
 */
export function runsAtOnce(state: NowaitState, write: boolean, bytes: number, now = performance.now(), offload = offloadPays()): boolean {
  if (bytes > AT_ONCE_MAX || offload) return false;
  if (state.inMemory) return true;
  return write && !!state.localDisk && !(now < (state.localDisk.slowUntil ?? 0));
}

/** Notes how long a call at once took: stalls over the budget turn the device's writes asynchronous for a while. */
export function tookAtOnce(state: NowaitState, ms: number, now = performance.now()): void {
  const b = state.localDisk;
  if (ms <= STALL_MS || !b || state.inMemory) return;
  if (b.stallSince === undefined || now - b.stallSince > STALL_WINDOW_MS) {
    b.stallSince = now;
    b.stalledMs = 0;
  }
  b.stalledMs = (b.stalledMs ?? 0) + ms;
  if (b.stalledMs <= STALL_BUDGET_MS) return;
  // Tripping again within one back-off of the last one's end: the device is still slow.
  const again = b.slowUntil !== undefined && b.backoffMs !== undefined && now - b.slowUntil < b.backoffMs;
  b.backoffMs = again ? Math.min(MAX_BACKOFF_MS, 2 * b.backoffMs!) : BACKOFF_MS;
  b.slowUntil = now + b.backoffMs;
  b.stallSince = undefined;
  b.trips = (b.trips ?? 0) + 1;
  b.onTrip?.();
}

/**
 * Runs a call at once, counting it against the file's device budget if it waited: only a
 * call the thread slept in (`sleeps`: the thread's voluntary context switches) did; one
 * merely preempted by a busy machine did not.
 */
export function atOnce(state: NowaitState, call: () => number, sleeps: () => number = native().threadVoluntarySwitches): number {
  const watch = state.localDisk && !state.inMemory;
  const slept = watch ? sleeps() : 0;
  const t0 = performance.now();
  const n = call();
  const t1 = performance.now();
  if (watch && t1 - t0 > STALL_MS && sleeps() > slept) tookAtOnce(state, t1 - t0, t1);
  return n;
}

/**
 * Offsets from 2^53 on arrive saturated (see Reader.u64), so they cannot be served at the
 * offset asked for; no real file reaches them (8 PiB): reads there find the end of the file,
 * writes are too large (EFBIG, as the kernel answers past a file system's limit).
 */
const MAX_OFFSET = Number.MAX_SAFE_INTEGER;

/**
 * Reads into `bufs` at `offset` until they are full or the file ends; returns the bytes read
 * — at once when the data was there to take (a number), else a promise.
 */
export function readAt(fd: number, bufs: Uint8Array[], offset: number, state: NowaitState): number | Promise<number> {
  if (offset > MAX_OFFSET) return 0;
  const fits = bufs.length <= IOV_MAX; // what preadv2 and io_uring take in one call
  if (!state.noNowaitRead && fits) {
    const n = readCached(fd, bufs, offset);
    if (n >= 0) return n; // all from the page cache, or up to the end of the file
    if (n !== -Errno.EAGAIN) state.noNowaitRead = true; // EOPNOTSUPP (or an error the pool will report)
  }
  // Waits for I/O (the cached part is read again with the rest); a short read there means
  // the end of the file.
  if (fits && runsAtOnce(state, false, iovLength(bufs))) return atOnce(state, () => readvSync(fd, bufs, offset));
  const ring = fits ? Uring.get() : null;
  return ring ? ring.readv(fd, bufs, offset) : poolv(fsReadv, fd, bufs, offset);
}

/** Writes `bufs` at `offset`; returns the bytes written, at once where the call ran at once. */
export function writeAt(fd: number, bufs: Uint8Array[], offset: number, state: NowaitState): number | Promise<number> {
  if (offset > MAX_OFFSET) throw new FsError(Errno.EFBIG);
  let done = 0;
  const fits = bufs.length <= IOV_MAX;
  if (!state.noNowaitWrite && fits) {
    const n = native().rwNowait(fd, bufs, offset, true);
    if (n === iovLength(bufs)) return n;
    if (n > 0) done = n;
    else if (n !== -Errno.EAGAIN) state.noNowaitWrite = true;
  }
  const rest = done ? iovAfter(bufs, done) : bufs;
  if (fits && Number.isSafeInteger(offset + done) && runsAtOnce(state, true, iovLength(rest))) return done + atOnce(state, () => writevSync(fd, rest, offset + done));
  const ring = fits ? Uring.get() : null;
  return (ring ? ring.writev(fd, rest, offset + done) : poolv(fsWritev, fd, rest, offset + done)).then((n) => done + n);
}

/** fsync or fdatasync. */
export function syncFile(fd: number, datasync: boolean): Promise<unknown> {
  const ring = Uring.get();
  if (ring) return ring.fsync(fd, datasync);
  return new Promise<void>((resolve, reject) => (datasync ? fdatasync : fsFsync)(fd, (err) => (err ? reject(err) : resolve())));
}

function poolv(
  op: (fd: number, bufs: Uint8Array[], pos: number, cb: (err: NodeJS.ErrnoException | null, n: number) => void) => void,
  fd: number,
  bufs: Uint8Array[],
  offset: number,
): Promise<number> {
  return new Promise((resolve, reject) => op(fd, bufs, offset, (err, n) => (err ? reject(err) : resolve(n))));
}
