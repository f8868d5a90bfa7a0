/**
 * Typed wrappers over the native `fsop` executor, as the given credentials ([uid, gid,
 * ...groups], or null for the daemon's own). `sys` runs each call on libuv's pool and
 * rejects with an Error carrying the errno `code`; `sysNow` has the same calls run on the
 * calling thread (rejecting with an FsError), for file systems held in memory, where
 * metadata calls never wait for a device. The `*Now` calls of `sys` run on the calling
 * thread for the few operations that cannot wait for I/O anywhere, and throw an FsError.
 */
import type { StatFs, Timespec } from '../fs/api.js';
import { Errno, FsError, errnoOf } from '../fuse/errno.js';
import { i64FromWords } from '../fuse/wire.js';
import { native } from './native.js';

export type Creds = readonly number[] | null;

export const AT_FDCWD = -100;
export const AT_SYMLINK_NOFOLLOW = 0x100;
export const AT_REMOVEDIR = 0x200;
export const AT_SYMLINK_FOLLOW = 0x400;
export const AT_NO_AUTOMOUNT = 0x800;
export const AT_EMPTY_PATH = 0x1000;
export const O_PATH = 0o10000000;
export const O_NOFOLLOW = 0o400000;
export const O_DIRECTORY = 0o200000;
export const O_CLOEXEC = 0o2000000;
export const O_TMPFILE = 0o20000000 | O_DIRECTORY;
export const O_CREAT = 0o100;
export const O_EXCL = 0o200;
export const O_TRUNC = 0o1000;
export const O_NOCTTY = 0o400;
export const O_APPEND = 0o2000;
export const O_NONBLOCK = 0o4000;
export const O_DIRECT = 0o40000;
export const UTIME_NOW = (1 << 30) - 1;
export const UTIME_OMIT = (1 << 30) - 2;
export const STATX_BASIC_STATS = 0x7ff;
export const STATX_BTIME = 0x800;

const enum Op {
  OPENAT = 1,
  MKDIRAT,
  MKNODAT,
  SYMLINKAT,
  LINKAT,
  UNLINKAT,
  RENAMEAT2,
  FCHMODAT,
  FCHOWNAT,
  UTIMENSAT,
  STATX,
  READLINKAT,
  NAME_TO_HANDLE_AT,
  OPEN_BY_HANDLE_AT,
  GETDENTS,
  SETXATTR,
  GETXATTR,
  LISTXATTR,
  REMOVEXATTR,
  FALLOCATE,
  LSEEK,
  COPY_FILE_RANGE,
  FSTATFS,
  SYNCFS,
  FTRUNCATE,
  TRUNCATE,
  PWRITE,
  CLOSE,
  FACCESSAT,
  LOOKUP,
  LOOKUP_LOCAL,
  CREATE,
}

type FsOp = (op: number, creds: Creds, a0: number, a1: number, a2: number, a3: number, a4: number, a5: number, s1: string | null, s2: string | null, buf: Buffer | null) => Promise<number>;
let fsop: FsOp | undefined;

function callPool(op: Op, creds: Creds, a: number[] = [], s1: string | null = null, s2: string | null = null, buf: Buffer | null = null): Promise<number> {
  fsop ??= (native() as unknown as { fsop: FsOp }).fsop;
  return fsop(op, creds, a[0] ?? 0, a[1] ?? 0, a[2] ?? 0, a[3] ?? 0, a[4] ?? 0, a[5] ?? 0, s1, s2, buf);
}

type FsOpNow = (...args: Parameters<FsOp>) => number;
let fsopNow: FsOpNow | undefined;

/** Runs on this thread: the result, or -errno. */
function callNow(op: Op, creds: Creds, a: number[], s1: string | null = null, s2: string | null = null, buf: Buffer | null = null): number {
  fsopNow ??= (native() as unknown as { fsopNow: FsOpNow }).fsopNow;
  return fsopNow(op, creds, a[0] ?? 0, a[1] ?? 0, a[2] ?? 0, a[3] ?? 0, a[4] ?? 0, a[5] ?? 0, s1, s2, buf);
}

/**
 * close(2) on this thread, for descriptors whose close never waits (O_PATH: no flush, no
 * locks, no file-system release; a trip through the pool would cost more than the call).
 * Errors (a descriptor already closed) are ignored.
 */
export function closeNow(fd: number): void {
  callNow(Op.CLOSE, null, [fd]);
}

/** `call` on this thread. */
function callHere(op: Op, creds: Creds, a: number[] = [], s1: string | null = null, s2: string | null = null, buf: Buffer | null = null): Promise<number> {
  const r = callNow(op, creds, a, s1, s2, buf);
  return r < 0 ? Promise.reject(new FsError(-r)) : Promise.resolve(r);
}

type Call = typeof callPool;

/** The path through which a descriptor (also an O_PATH one) can be reopened or named. */
export const procPath = (fd: number) => `/proc/self/fd/${fd}`;

export interface Statx {
  mask: number;
  blksize: number;
  nlink: number;
  uid: number;
  gid: number;
  mode: number;
  ino: number;
  size: number;
  blocks: number;
  atime: Timespec;
  btime: Timespec;
  ctime: Timespec;
  mtime: Timespec;
  rdevMajor: number;
  rdevMinor: number;
  devMajor: number;
  devMinor: number;
}

function u64(dv: DataView, at: number): number {
  return dv.getUint32(at, true) + dv.getUint32(at + 4, true) * 0x1_0000_0000;
}

/** A statx timestamp, its seconds an i64 read from its words (no BigInt). */
function ts(dv: DataView, at: number): Timespec {
  return { sec: i64FromWords(dv.getUint32(at, true), dv.getInt32(at + 4, true)), nsec: dv.getUint32(at + 8, true) };
}

function parseStatx(b: Buffer, dv = new DataView(b.buffer, b.byteOffset, b.byteLength)): Statx {
  return {
    mask: dv.getUint32(0, true),
    blksize: dv.getUint32(4, true),
    nlink: dv.getUint32(16, true),
    uid: dv.getUint32(20, true),
    gid: dv.getUint32(24, true),
    mode: dv.getUint16(28, true),
    ino: u64(dv, 32),
    size: u64(dv, 40),
    blocks: u64(dv, 48),
    atime: ts(dv, 64),
    btime: ts(dv, 80),
    ctime: ts(dv, 96),
    mtime: ts(dv, 112),
    rdevMajor: dv.getUint32(128, true),
    rdevMinor: dv.getUint32(132, true),
    devMajor: dv.getUint32(136, true),
    devMinor: dv.getUint32(140, true),
  };
}

export interface DirentRaw {
  ino: number;
  /** The cookie to continue after this entry: 64 bits, so a bigint. */
  off: bigint;
  type: number;
  name: string;
}

export interface FileHandle {
  mountId: number;
  handle: Buffer;
}

export interface Looked {
  /** O_PATH descriptor (the caller owns it). */
  fd: number;
  st: Statx;
  /** Absent where the file system cannot make handles. */
  handle?: FileHandle;
}

/** A file created and opened by `create`: its descriptor, and what `lookup` gives for it. */
export interface CreatedFile {
  fd: number;
  looked: Looked;
}

/** Timespec, 'now' or 'omit' for utimensat. */
export type TimeArg = Timespec | 'now' | 'omit';

/** struct statfs of the file system `fd` is on. */
async function statfsOf(call: Call, fd: number): Promise<Buffer> {
  const b = Buffer.alloc(120);
  await call(Op.FSTATFS, null, [fd], null, null, b);
  return b;
}

/**
 * The a5 word of the calls that make an inode: the caller's umask, for the host kernel to
 * apply as for that caller (not where the directory's default ACL takes its place), or 0
 * where the daemon's own (none) applies. native/fsops.c's UMASK_GIVEN.
 */
const withUmask = (umask: number | undefined) => (umask === undefined ? 0 : 0x10000 | (umask & 0o777));

/** The calls, run by `callPool` or `callHere` (this thread). */
function calls(call: Call, here: boolean) {
  return {
    /** On this thread (sysNow): only to reopen an inode held in memory through /proc/self/fd. */
    openat(c: Creds, dirfd: number, name: string, flags: number, mode = 0): Promise<number> {
      const a = [dirfd, flags | O_CLOEXEC, mode];
      if (!here) return call(Op.OPENAT, c, a, name);
      // Refused here (a lease to wait for): the pool opens it as asked.
      return call(Op.OPENAT, c, [...a, 1], name).catch((err) => {
        if (errnoOf(err) !== Errno.EAGAIN) throw err;
        sysNowStats.poolFallbacks++;
        return callPool(Op.OPENAT, c, a, name);
      });
    },
    mkdirat: (c: Creds, dirfd: number, name: string, mode: number, umask?: number) => call(Op.MKDIRAT, c, [dirfd, mode, 0, 0, 0, withUmask(umask)], name),
    mknodat: (c: Creds, dirfd: number, name: string, mode: number, dev: number, umask?: number) =>
      call(Op.MKNODAT, c, [dirfd, mode, dev, 0, 0, withUmask(umask)], name),
    symlinkat: (c: Creds, target: string, dirfd: number, name: string) => call(Op.SYMLINKAT, c, [dirfd], name, target),
    linkat: (c: Creds, olddirfd: number, oldname: string, newdirfd: number, newname: string, flags: number) =>
      call(Op.LINKAT, c, [olddirfd, newdirfd, flags], oldname, newname),
    unlinkat: (c: Creds, dirfd: number, name: string, flags: number) => call(Op.UNLINKAT, c, [dirfd, flags], name),
    renameat2: (c: Creds, olddirfd: number, oldname: string, newdirfd: number, newname: string, flags: number) =>
      call(Op.RENAMEAT2, c, [olddirfd, newdirfd, flags], oldname, newname),
    fchmodat: (c: Creds, dirfd: number, name: string, mode: number, flags = 0) => call(Op.FCHMODAT, c, [dirfd, mode, flags], name),
    fchownat: (c: Creds, dirfd: number, name: string, uid: number, gid: number, flags: number) =>
      call(Op.FCHOWNAT, c, [dirfd, uid >>> 0, gid >>> 0, flags], name),
    utimensat(c: Creds, dirfd: number, name: string, atime: TimeArg, mtime: TimeArg, flags: number): Promise<number> {
      const b = Buffer.alloc(32);
      const put = (at: number, t: TimeArg) => {
        if (t === 'now' || t === 'omit') {
          b.writeBigInt64LE(0n, at);
          b.writeBigInt64LE(BigInt(t === 'now' ? UTIME_NOW : UTIME_OMIT), at + 8);
        } else {
          b.writeBigInt64LE(BigInt(t.sec), at);
          b.writeBigInt64LE(BigInt(t.nsec), at + 8);
        }
      };
      put(0, atime);
      put(16, mtime);
      return call(Op.UTIMENSAT, c, [dirfd, flags], name, null, b);
    },
    async statx(c: Creds, dirfd: number, name: string, flags: number, mask = STATX_BASIC_STATS | STATX_BTIME): Promise<Statx> {
      const b = Buffer.alloc(256);
      await call(Op.STATX, c, [dirfd, flags, mask], name, null, b);
      return parseStatx(b);
    },
    async readlinkat(c: Creds, dirfd: number, name: string): Promise<string> {
      const b = Buffer.alloc(4096);
      const n = await call(Op.READLINKAT, c, [dirfd], name, null, b);
      return b.toString('utf8', 0, n);
    },
    openByHandleAt: (mountFd: number, handle: Buffer, flags: number) => call(Op.OPEN_BY_HANDLE_AT, null, [mountFd, flags | O_CLOEXEC], null, null, handle),
    /** Reads directory entries starting at `offset` (a d_off cookie; 0n = start). */
    async getdents(fd: number, offset: bigint, size: number): Promise<DirentRaw[]> {
      const b = Buffer.alloc(Math.max(size, 1024));
      const n = await call(Op.GETDENTS, null, [fd], offset.toString(), null, b);
      const out: DirentRaw[] = [];
      for (let at = 0; at + 19 < n; ) {
        const reclen = b.readUInt16LE(at + 16);
        if (reclen < 20 || at + reclen > n) break;
        const nameEnd = b.indexOf(0, at + 19);
        out.push({
          ino: Number(b.readBigUInt64LE(at)),
          off: b.readBigInt64LE(at + 8),
          type: b[at + 18]!,
          name: b.toString('utf8', at + 19, nameEnd < 0 || nameEnd > at + reclen ? at + reclen : nameEnd),
        });
        at += reclen;
      }
      return out;
    },
    setxattr: (c: Creds, path: string, name: string, value: Uint8Array, flags: number) =>
      call(Op.SETXATTR, c, [flags], path, name, Buffer.from(value.buffer, value.byteOffset, value.byteLength)),
    async getxattr(c: Creds, path: string, name: string): Promise<Buffer> {
      for (;;) {
        const size = await call(Op.GETXATTR, c, [], path, name, Buffer.alloc(0));
        const b = Buffer.alloc(size);
        try {
          const n = await call(Op.GETXATTR, c, [], path, name, b);
          return b.subarray(0, n);
        } catch (err) {
          if (errnoOf(err) !== Errno.ERANGE) throw err; // grew meanwhile: ask again
        }
      }
    },
    async listxattr(c: Creds, path: string): Promise<string[]> {
      for (;;) {
        const size = await call(Op.LISTXATTR, c, [], path, null, Buffer.alloc(0));
        const b = Buffer.alloc(size);
        try {
          const n = await call(Op.LISTXATTR, c, [], path, null, b);
          return b.toString('utf8', 0, n).split('\0').filter(Boolean);
        } catch (err) {
          if (errnoOf(err) !== Errno.ERANGE) throw err;
        }
      }
    },
    removexattr: (c: Creds, path: string, name: string) => call(Op.REMOVEXATTR, c, [], path, name),
    fallocate: (c: Creds, fd: number, mode: number, offset: number, length: number) => call(Op.FALLOCATE, c, [fd, mode, offset, length]),
    lseek: (fd: number, offset: number, whence: number) => call(Op.LSEEK, null, [fd, offset, whence]),
    copyFileRange: (c: Creds, fdIn: number, offIn: number, fdOut: number, offOut: number, len: number, flags: number) =>
      call(Op.COPY_FILE_RANGE, c, [fdIn, offIn, fdOut, offOut, len, flags]),
    async fstatfs(fd: number): Promise<StatFs> {
      const b = await statfsOf(call, fd);
      const n = (at: number) => Number(b.readBigUInt64LE(at));
      return { bsize: n(8), blocks: n(16), bfree: n(24), bavail: n(32), files: n(40), ffree: n(48), namelen: n(64), frsize: n(72) };
    },
    /** The file system type (statfs f_type) of the one `fd` is on. */
    async fsType(fd: number): Promise<number> {
      return Number((await statfsOf(call, fd)).readBigInt64LE(0));
    },
    syncfs: (fd: number) => call(Op.SYNCFS, null, [fd]),
    ftruncate: (c: Creds, fd: number, size: number) => call(Op.FTRUNCATE, c, [fd, size]),
    truncate: (c: Creds, path: string, size: number) => call(Op.TRUNCATE, c, [size], path),
    pwrite: (c: Creds, fd: number, buf: Buffer, offset: number) => call(Op.PWRITE, c, [fd, offset], null, null, buf),
    close: (fd: number) => call(Op.CLOSE, null, [fd]),
    faccessat: (c: Creds, dirfd: number, name: string, mode: number, flags: number) => call(Op.FACCESSAT, c, [dirfd, mode, flags], name),
  };
}

export const sysNow = calls(callHere, true);

/** Opens and creates that were refused on this thread and went to the pool. */
export const sysNowStats = { poolFallbacks: 0 };

export const sys = {
  ...calls(callPool, false),
  /**
   * openat(dirfd, name, O_PATH|O_NOFOLLOW|flags) + statx + name_to_handle_at, in one trip.
   * `followProcFd` drops O_NOFOLLOW, to reach the file behind /proc/self/fd/N of a
   * descriptor this daemon opened itself.
   */
  async lookup(c: Creds, dirfd: number, name: string, flags = 0, followProcFd = false): Promise<Looked> {
    const b = Buffer.alloc(LOOKED_BYTES);
    return looked(await callPool(Op.LOOKUP, c, [dirfd, flags, followProcFd ? 1 : 0], name, null, b), b);
  },
  /**
   * openat(dirfd, name, flags, mode) as `c` (create, tmpfile) with the caller's `umask` if
   * given, and in the same trip what `lookup` gives for the new file (from its descriptor).
   */
  async create(c: Creds, dirfd: number, name: string, flags: number, mode: number, umask?: number): Promise<CreatedFile> {
    const b = Buffer.alloc(LOOKED_BYTES + 4);
    const fd = await callPool(Op.CREATE, c, [dirfd, flags, mode, 0, 0, withUmask(umask)], name, null, b);
    return { fd, looked: looked(b.readInt32LE(LOOKED_BYTES), b) };
  },
  /**
   * `create` on this thread, for file systems held in memory; null where it was refused
   * (a lease to wait for, a mount to cross): then use `create`.
   */
  createNow(c: Creds, dirfd: number, name: string, flags: number, mode: number, umask?: number): CreatedFile | null {
    const fd = callNow(Op.CREATE, c, [dirfd, flags, mode, 1, 0, withUmask(umask)], name, null, scratch);
    if (fd === -Errno.EAGAIN) {
      sysNowStats.poolFallbacks++;
      return null;
    }
    if (fd < 0) throw new FsError(-fd);
    return { fd, looked: looked(scratch.readInt32LE(LOOKED_BYTES), scratch, scratchView) };
  },
  /**
   * `lookup` on this thread, for an entry on the parent's device dev (major:minor) of a
   * local file system: from the kernel's caches alone where `cachedOnly` (disk file
   * systems), else (file systems held in memory) in full. Null where that would need I/O,
   * revalidation or another device: then use `lookup`.
   */
  lookupNow(c: Creds, dirfd: number, name: string, devMajor: number, devMinor: number, cachedOnly: boolean, withHandle = true): Looked | null {
    const fd = callNow(Op.LOOKUP_LOCAL, c, [dirfd, devMajor, devMinor, cachedOnly ? 1 : 0, withHandle ? 0 : 1], name, null, scratch);
    if (fd === -Errno.EAGAIN) {
      sysNowStats.poolFallbacks++;
      return null;
    }
    if (fd < 0) throw new FsError(-fd);
    return looked(fd, scratch, scratchView);
  },
  /** The file handle of `fd` (undefined where its file system makes none), on this thread: for local file systems. */
  handleNow(fd: number): FileHandle | undefined {
    const b = Buffer.alloc(8 + 128);
    const mountId = callNow(Op.NAME_TO_HANDLE_AT, null, [fd, AT_EMPTY_PATH], '', null, b);
    return mountId < 0 ? undefined : { mountId, handle: b.subarray(0, 8 + b.readUInt32LE(0)) };
  },
  /**
   * statx of a name on this thread, without following a final symlink or automount: for
   * file systems held in memory. A failure comes back as -errno, not thrown: a name that
   * does not exist is the everyday answer (every create asks first), and a throw costs V8
   * a walk of the stack to place it.
   */
  statxNow(c: Creds, dirfd: number, name: string): Statx | number {
    const r = callNow(Op.STATX, c, [dirfd, AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, STATX_BASIC_STATS | STATX_BTIME], name, null, scratch);
    return r < 0 ? r : parseStatx(scratch, scratchView);
  },
  /** unlinkat(2) as `c` on this thread, for file systems held in memory; throws an FsError. */
  unlinkatNow(c: Creds, dirfd: number, name: string, flags: number): void {
    const r = callNow(Op.UNLINKAT, c, [dirfd, flags], name);
    if (r < 0) throw new FsError(-r);
  },
  /** statx of an open descriptor on this thread: for local file systems only (attributes in memory). */
  fstatxNow(fd: number): Statx {
    const r = callNow(Op.STATX, null, [fd, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS | STATX_BTIME], '', null, scratch);
    if (r < 0) throw new FsError(-r);
    return parseStatx(scratch, scratchView);
  },
};

const LOOKED_BYTES = 256 + 4 + 8 + 128;

/** Output space of the calls made on this thread (each is done with it before it returns). */
const scratch = Buffer.alloc(LOOKED_BYTES + 4);
const scratchView = new DataView(scratch.buffer, scratch.byteOffset, scratch.byteLength);

function looked(fd: number, b: Buffer, dv?: DataView): Looked {
  const mountId = b.readInt32LE(256); // -1: no handle; -2: not asked for
  const handle = mountId < 0 ? undefined : { mountId, handle: Buffer.from(b.subarray(260, 260 + 8 + b.readUInt32LE(260))) };
  return { fd, st: parseStatx(b, dv), handle };
}
