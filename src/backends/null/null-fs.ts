/**
 * The null backend: answers without storage, to measure what the framework itself costs
 * (DPFS's "DPFS-null"). Every name exists as one 1 TiB file; reads return zeros, writes
 * are accepted and dropped.
 */
import type { Attr, AttrReply, DirSink, Entry, FileSystem, Opened, RequestContext, StatFs } from '../../fs/api.js';
import { Errno, fail } from '../../fuse/errno.js';
import { iovLength } from '../../util/iov.js';

const T = { sec: 0, nsec: 0 };
const ROOT: Attr = { ino: 1, size: 4096, blocks: 8, atime: T, mtime: T, ctime: T, mode: 0o40755, nlink: 2, uid: 0, gid: 0, rdev: 0, blksize: 4096 };
const FILE: Attr = { ...ROOT, ino: 2, size: 2 ** 40, blocks: 0, mode: 0o100666, nlink: 1 };
const ZEROS = Buffer.alloc(1024 * 1024);

export class NullFs implements FileSystem {
  lookup(_ctx: RequestContext, parent: number): Entry {
    if (parent !== 1) fail(Errno.ENOTDIR);
    return { ino: 2, attr: FILE, entryTimeout: 0, attrTimeout: 0 };
  }
  getattr(_ctx: RequestContext, ino: number): AttrReply {
    return { attr: ino === 1 ? ROOT : FILE, timeout: 0 };
  }
  open(): Opened {
    return { fh: 1 };
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
  release(): void {}
  releasedir(): void {}
}
