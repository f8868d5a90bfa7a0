/**
 * The null backend: answers without storage, to measure what the framework itself costs
 * (DPFS's "DPFS-null"). Every name exists as one 1 TiB file; reads return zeros, writes
 * are accepted and dropped.
 *
 * Its open files are published to virtio-fs queue threads on /dev/zero, which answers the
 * same way (reads give zeros, writes are dropped) in the one system call a thread makes for a
 * host file: so `-t N` measures the framework's data path on queue threads as the event loop
 * measures its own, rather than a hand-off of every request to the main thread.
 */
import { closeSync, openSync } from 'node:fs';
import type { Attr, AttrReply, DirSink, Entry, FileSystem, Opened, RequestContext, StatFs } from '../../fs/api.js';
import { Errno, fail } from '../../fuse/errno.js';
import { iovLength } from '../../util/iov.js';
import { SH_READ, SH_READ_AT_ONCE, SH_WRITE, SH_WRITE_AT_ONCE, SharedHandles } from '../../fs/shared-handles.js';

const T = { sec: 0, nsec: 0 };
const ROOT: Attr = { ino: 1, size: 4096, blocks: 8, atime: T, mtime: T, ctime: T, mode: 0o40755, nlink: 2, uid: 0, gid: 0, rdev: 0, blksize: 4096 };
const FILE: Attr = { ...ROOT, ino: 2, size: 2 ** 40, blocks: 0, mode: 0o100666, nlink: 1 };
const ZEROS = Buffer.alloc(1024 * 1024);

const SHARED = SH_READ | SH_WRITE | SH_READ_AT_ONCE | SH_WRITE_AT_ONCE;

export class NullFs implements FileSystem {
  readonly sharedHandles = new SharedHandles();
  /** /dev/zero, opened with the first file and closed once none is published on it. */
  private zeroFd = -1;
  private readonly published = new Set<number>();
  private zeroKept = false;
  private nextFh = 1;

  lookup(_ctx: RequestContext, parent: number): Entry {
    if (parent !== 1) fail(Errno.ENOTDIR);
    return { ino: 2, attr: FILE, entryTimeout: 0, attrTimeout: 0 };
  }
  getattr(_ctx: RequestContext, ino: number): AttrReply {
    return { attr: ino === 1 ? ROOT : FILE, timeout: 0 };
  }
  open(): Opened {
    const fh = this.nextFh++;
    if (this.zeroFd < 0) this.zeroFd = openSync('/dev/zero', 'r+');
    if (this.sharedHandles.publish(fh, this.zeroFd, SHARED)) this.published.add(fh);
    return { fh };
  }
  release(_ctx: RequestContext, _ino: number, fh: number): void {
    if (!this.published.delete(fh)) return;
    this.withdraw([fh]);
  }
  destroy(): void {
    const all = [...this.published];
    this.published.clear();
    this.withdraw(all);
  }
  /** Withdraws handles; /dev/zero closes with the last unless a thread never left it (then it stays open). */
  private withdraw(fhs: number[]): void {
    for (const fh of fhs) if (!this.sharedHandles.withdraw(fh)) this.zeroKept = true;
    if (this.published.size > 0) return;
    if (!this.zeroKept && this.zeroFd >= 0) closeSync(this.zeroFd);
    this.zeroFd = -1;
    this.zeroKept = false;
  }
  opendir(): Opened {
    return { fh: 1 };
  }
  readdir(_ctx: RequestContext, _ino: number, _fh: number, offset: number, sink: DirSink): void {
    if (offset === 0) sink.add({ name: 'null', ino: 2, type: 8, offset: 1 });
  }
  read(_ctx: RequestContext, _ino: number, _fh: number, _offset: number, size: number): Uint8Array {
    return size <= ZEROS.length ? ZEROS.subarray(0, size) : Buffer.alloc(size);
  }
  write(_ctx: RequestContext, _ino: number, _fh: number, _offset: number, data: Uint8Array): number {
    return data.length;
  }
  writeFrom(_ctx: RequestContext, _ino: number, _fh: number, _offset: number, src: Uint8Array[]): number {
    return iovLength(src);
  }
  statfs(): StatFs {
    return { blocks: 2 ** 28, bfree: 2 ** 28, bavail: 2 ** 28, files: 1, ffree: 0, bsize: 4096, namelen: 255, frsize: 4096 };
  }
  releasedir(): void {}
}
