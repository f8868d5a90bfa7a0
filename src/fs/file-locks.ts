/**
 * Advisory locks of one file: POSIX byte-range locks (per owner, split and merged like
 * the kernel's) and BSD flock locks (whole file, per open file). Waiters sleep until a
 * lock on the file changes and are woken with EINTR when their request is interrupted.
 */
import { type FileLock, LockType } from './api.js';
import { Errno, FsError } from '../fuse/errno.js';

interface Held {
  owner: bigint;
  pid: number;
  type: number;
  start: number;
  end: number; // inclusive; Infinity = to EOF
}

const { F_RDLCK, F_WRLCK, F_UNLCK } = LockType;

function overlaps(a: { start: number; end: number }, b: { start: number; end: number }): boolean {
  return a.start <= b.end && b.start <= a.end;
}

export class FileLocks {
  private posix: Held[] = [];
  private readonly flocks = new Map<bigint, Held>();
  private waiters: Array<() => void> = [];

  get empty(): boolean {
    return this.posix.length === 0 && this.flocks.size === 0;
  }

  private conflict(owner: bigint, lk: FileLock, flock: boolean): Held | undefined {
    const clash = (h: Held) => h.owner !== owner && (h.type === F_WRLCK || lk.type === F_WRLCK);
    if (flock) {
      for (const h of this.flocks.values()) if (clash(h)) return h;
      return undefined;
    }
    return this.posix.find((h) => clash(h) && overlaps(h, lk));
  }

  test(owner: bigint, lk: FileLock, flock = false): FileLock {
    validate(lk);
    const c = this.conflict(owner, lk, flock);
    if (!c) return { ...lk, type: F_UNLCK };
    return { start: c.start, end: c.end, type: c.type, pid: c.pid };
  }

  async set(owner: bigint, lk: FileLock, opts: { sleep: boolean; flock: boolean; signal?: AbortSignal }): Promise<void> {
    validate(lk);
    if (lk.type === F_UNLCK) {
      if (opts.flock) this.flocks.delete(owner);
      else this.unlockRange(owner, lk.start, lk.end);
      this.wake();
      return;
    }
    if (opts.flock && this.flocks.get(owner)?.type !== lk.type && this.flocks.has(owner)) {
      // flock() conversion drops the old lock first, as Linux does.
      this.flocks.delete(owner);
      this.wake();
    }
    while (this.conflict(owner, lk, opts.flock)) {
      if (!opts.sleep) throw new FsError(Errno.EAGAIN);
      await this.waitForChange(opts.signal);
    }
    if (opts.flock) {
      this.flocks.set(owner, { owner, pid: lk.pid, type: lk.type, start: 0, end: Infinity });
    } else {
      this.unlockRange(owner, lk.start, lk.end);
      this.posix.push({ owner, pid: lk.pid, type: lk.type, start: lk.start, end: lk.end });
      this.merge(owner);
    }
    this.wake();
  }

  /** Drops every lock `owner` holds (close of the last descriptor, flock release). */
  releaseOwner(owner: bigint, which: 'posix' | 'flock'): void {
    if (which === 'flock') this.flocks.delete(owner);
    else this.posix = this.posix.filter((h) => h.owner !== owner);
    this.wake();
  }

  private unlockRange(owner: bigint, start: number, end: number): void {
    const next: Held[] = [];
    for (const h of this.posix) {
      if (h.owner !== owner || !overlaps(h, { start, end })) {
        next.push(h);
        continue;
      }
      if (h.start < start) next.push({ ...h, end: start - 1 });
      if (h.end > end) next.push({ ...h, start: end + 1 });
    }
    this.posix = next;
  }

  private merge(owner: bigint): void {
    const mine = this.posix.filter((h) => h.owner === owner).sort((a, b) => a.start - b.start);
    const others = this.posix.filter((h) => h.owner !== owner);
    const merged: Held[] = [];
    for (const h of mine) {
      const last = merged[merged.length - 1];
      if (last && last.type === h.type && last.end !== Infinity && last.end + 1 >= h.start) {
        last.end = Math.max(last.end, h.end);
      } else {
        merged.push({ ...h });
      }
    }
    this.posix = [...others, ...merged];
  }

  private waitForChange(signal?: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(new FsError(Errno.EINTR));
      const onAbort = () => {
        this.waiters = this.waiters.filter((w) => w !== wake);
        reject(new FsError(Errno.EINTR));
      };
      const wake = () => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(wake);
    });
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
}

function validate(lk: FileLock): void {
  if (lk.type !== F_RDLCK && lk.type !== F_WRLCK && lk.type !== F_UNLCK) throw new FsError(Errno.EINVAL, 'bad lock type');
  if (lk.start < 0 || lk.end < lk.start) throw new FsError(Errno.EINVAL, 'bad lock range');
}
