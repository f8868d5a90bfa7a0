/**
 * Open files whose reads and writes another thread may do itself: a table in shared memory
 * from a backend's file handle to the host descriptor behind it. The backend (main thread)
 * publishes a handle when it opens a regular file and withdraws it before closing the
 * descriptor; a virtio-fs ring's native data path (native/ring_fast.c), on a queue thread or
 * on the main thread, serves READ and WRITE on a published handle without the session.
 *
 * A descriptor must never be used after it was closed (its number may already name another
 * file): a thread counts itself in as a slot's user before it checks the slot is live, and
 * the owner marks the slot dying before it waits for the users to leave, both with
 * sequentially consistent atomics, so at least one of them sees the other.
 */

/** What a thread may do with a published handle. */
export const SH_READ = 1;
export const SH_WRITE = 2;
/** Reads may run at once (a memory file system: they never wait for a device). */
export const SH_READ_AT_ONCE = 4;
/** Writes may run at once (memory or local disk file system: a copy into the page cache). */
export const SH_WRITE_AT_ONCE = 8;
/** GETATTR may be answered with a statx of the descriptor at once (attributes in memory). */
export const SH_STAT_AT_ONCE = 16;
/**
 * A directory whose names resolve at once (held in memory): a LOOKUP in it of a name that is
 * absent, or that leads to an inode in the backend's SharedNames, may be answered natively
 * with the slot's timeout (/dev/fuse: native/fusedev.c).
 */
export const SH_LOOKUP_AT_ONCE = 32;
/**
 * A directory (held in memory, like SH_LOOKUP_AT_ONCE) whose names the daemon may remove
 * itself for a root caller: the daemon is root and ids are not mapped, so its unlink is the
 * one the backend would make as that caller (/dev/fuse: native/fusedev.c).
 */
export const SH_UNLINK_AT_ONCE = 64;
const TIMEOUT_SHIFT = 8;

/**
 * The flags that let GETATTR be answered from a published descriptor, with this attribute
 * timeout (whole seconds, up to 2^23 - 1), for a backend whose ids need no mapping.
 */
export function statFlags(attrTimeout: number): number {
  return SH_STAT_AT_ONCE | (Math.min(Math.max(0, Math.floor(attrTimeout)), 2 ** 23 - 1) << TIMEOUT_SHIFT);
}

const STATE = 0; // 0 empty, 1 live, 2 dying
const FH_LO = 1;
const FH_HI = 2;
const FD = 3;
const FLAGS = 4;
const USERS = 5;
const WORDS = 6;
const EMPTY = 0;
const LIVE = 1;
const DYING = 2;

/**
 * The most bytes a read or write at once may move on the event loop (a copy this size takes
 * microseconds); larger ones go where waiting costs the loop nothing.
 */
export const AT_ONCE_MAX = 128 * 1024;

/** Slots: handles beyond this many at once (or colliding ones) stay with the main thread. */
export const SHARED_HANDLE_SLOTS = 4096;

export class SharedHandles {
  readonly buffer: SharedArrayBuffer;
  private readonly w: Int32Array;

  /**
   * The owner's hook for a write at once that waited (ms) on the event loop (see
   * passthrough/file-io.ts: stalls count against the host device's budget).
   */
  onStall?: (fh: number, ms: number) => void;

  constructor(buffer?: SharedArrayBuffer) {
    this.buffer = buffer ?? new SharedArrayBuffer(SHARED_HANDLE_SLOTS * WORDS * 4);
    this.w = new Int32Array(this.buffer);
  }

  /** The table itself, for the native data path (ring_fast.c follows the same protocol). */
  get table(): Int32Array {
    return this.w;
  }

  private static slotOf(lo: number): number {
    return (lo >>> 0) % SHARED_HANDLE_SLOTS;
  }

  // ---- the owner's side (the backend, on the main thread) --------------------------------

  /** Publishes handle `fh` (< 2^53) on `fd`; false where its slot is taken (it stays main-only). */
  publish(fh: number, fd: number, flags: number): boolean {
    const lo = fh >>> 0;
    const s = SharedHandles.slotOf(lo) * WORDS;
    if (Atomics.load(this.w, s + STATE) !== EMPTY) return false;
    this.w[s + FH_LO] = lo | 0;
    this.w[s + FH_HI] = Math.floor(fh / 2 ** 32);
    this.w[s + FD] = fd;
    this.w[s + FLAGS] = flags;
    Atomics.store(this.w, s + STATE, LIVE); // publishes the words above
    return true;
  }

  /**
   * Withdraws `fh` and returns once no thread uses its descriptor any more: true, and the
   * descriptor may be closed. False if a user never left (a thread terminated between
   * entering and leaving): the slot is retired and the descriptor must stay open, since
   * closing it could hand its number to another file under that user.
   */
  withdraw(fh: number, patienceMs = 2000): boolean {
    const lo = fh >>> 0;
    const s = SharedHandles.slotOf(lo) * WORDS;
    if (Atomics.load(this.w, s + STATE) !== LIVE || this.w[s + FH_LO] !== (lo | 0) || this.w[s + FH_HI] !== Math.floor(fh / 2 ** 32)) return true;
    Atomics.store(this.w, s + STATE, DYING);
    // A user is inside one system call (a page-cache copy, or a read that does not wait).
    const until = Date.now() + patienceMs;
    for (let n = Atomics.load(this.w, s + USERS); n !== 0; n = Atomics.load(this.w, s + USERS)) {
      if (Date.now() > until) return false; // stays DYING: never published into again
      Atomics.wait(this.w, s + USERS, n, 10);
    }
    Atomics.store(this.w, s + STATE, EMPTY);
    return true;
  }

  /** Changes what threads may do with published handle `fh` (no effect if it is not published). */
  setFlags(fh: number, flags: number): void {
    const lo = fh >>> 0;
    const s = SharedHandles.slotOf(lo) * WORDS;
    if (Atomics.load(this.w, s + STATE) === LIVE && this.w[s + FH_LO] === (lo | 0) && this.w[s + FH_HI] === Math.floor(fh / 2 ** 32)) Atomics.store(this.w, s + FLAGS, flags);
  }

  // ---- a user's side (a queue thread, or the native data path) ---------------------------

  /**
   * Enters the slot of handle (lo, hi) — its two 32-bit halves as they came in a request —
   * and returns it, or -1 where the handle is not published. Leave with `leave`.
   */
  enter(lo: number, hi: number): number {
    const slot = SharedHandles.slotOf(lo);
    const s = slot * WORDS;
    Atomics.add(this.w, s + USERS, 1);
    if (Atomics.load(this.w, s + STATE) === LIVE && this.w[s + FH_LO] === (lo | 0) && this.w[s + FH_HI] === (hi | 0)) return slot;
    this.leave(slot);
    return -1;
  }

  fd(slot: number): number {
    return this.w[slot * WORDS + FD]!;
  }

  flags(slot: number): number {
    return this.w[slot * WORDS + FLAGS]!;
  }

  leave(slot: number): void {
    const s = slot * WORDS;
    if (Atomics.sub(this.w, s + USERS, 1) === 1) Atomics.notify(this.w, s + USERS);
  }
}
