/**
 * Reads, writes and fsyncs through io_uring (native/uring.c): one ring for this thread,
 * made on first use; null where the kernel refuses io_uring (disabled, or a sandbox), and
 * then callers use libuv's pool.
 */
import { FsError } from '../fuse/errno.js';
import { native } from './native.js';

const enum UOp {
  FLUSH = 0,
  READV = 1,
  WRITEV = 2,
  FSYNC = 3,
}

interface UringAddon {
  uringCreate(entries: number, onComplete: (results: Float64Array) => void): unknown;
  uringSubmit(handle: unknown, op: UOp, id: number, fd: number, bufs: Uint8Array[] | null, offset: number, datasync: boolean): number;
}

interface Pending {
  resolve: (n: number) => void;
  reject: (err: Error) => void;
  /** The buffers the kernel reads or writes: alive until it is done. */
  bufs: Uint8Array[] | null;
}

export class Uring {
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private flushScheduled = false;

  private constructor(
    private readonly addon: UringAddon,
    private readonly handle: unknown,
  ) {}

  private static instance: Uring | null | undefined;
  /** Off: everything goes to libuv's pool (DPFS_IO_URING=0 in the environment). */
  static enabled = process.env.DPFS_IO_URING !== '0';

  /** This thread's ring, or null where io_uring is off or cannot be used. */
  static get(): Uring | null {
    if (!Uring.enabled) return null;
    if (Uring.instance === undefined) {
      try {
        const addon = native() as unknown as UringAddon;
        let ring: Uring | undefined;
        const handle = addon.uringCreate(256, (r) => ring!.complete(r));
        ring = new Uring(addon, handle);
        Uring.instance = ring;
      } catch {
        Uring.instance = null;
      }
    }
    return Uring.instance;
  }

  readv(fd: number, bufs: Uint8Array[], offset: number): Promise<number> {
    return this.submit(UOp.READV, fd, bufs, offset, false);
  }

  writev(fd: number, bufs: Uint8Array[], offset: number): Promise<number> {
    return this.submit(UOp.WRITEV, fd, bufs, offset, false);
  }

  fsync(fd: number, datasync: boolean): Promise<number> {
    return this.submit(UOp.FSYNC, fd, null, 0, datasync);
  }

  private submit(op: UOp, fd: number, bufs: Uint8Array[] | null, offset: number, datasync: boolean): Promise<number> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const r = this.addon.uringSubmit(this.handle, op, id, fd, bufs, offset, datasync);
      if (r < 0) {
        reject(new FsError(-r));
        return;
      }
      this.pending.set(id, { resolve, reject, bufs });
      this.scheduleFlush(0);
    });
  }

  /**
   * Submits what this turn of the event loop queued, in one system call (or, when the kernel
   * was short of resources, retries a little later).
   */
  private scheduleFlush(delayMs: number): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    const flush = () => {
      this.flushScheduled = false;
      if (this.addon.uringSubmit(this.handle, UOp.FLUSH, 0, -1, null, 0, false) === 1) this.scheduleFlush(1);
    };
    if (delayMs) setTimeout(flush, delayMs);
    else setImmediate(flush);
  }

  private complete(results: Float64Array): void {
    for (let i = 0; i < results.length; i += 2) {
      const p = this.pending.get(results[i]!);
      if (!p) continue;
      this.pending.delete(results[i]!);
      const res = results[i + 1]!;
      if (res < 0) p.reject(new FsError(-res));
      else p.resolve(res);
    }
  }
}
