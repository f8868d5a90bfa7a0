/**
 * The FileSystem API: the contract every dpfs backend implements.
 *
 * - Every method is async (or returns a value the session awaits); none may block the
 *   event loop. Requests run concurrently and may complete in any order.
 * - A method answers with its return value, or with an errno by throwing FsError
 *   (`fail(Errno.ENOENT)`). Anything else thrown is logged and answered with EIO.
 *   The session sends exactly one reply per request whatever the method does.
 * - A method left out is answered with ENOSYS, and the INIT negotiation offers the
 *   kernel only what is implemented (no `setlk`: no remote POSIX/flock locks, etc.).
 * - Lookup counts are explicit, as in the kernel: every successful reply that carries an
 *   Entry (lookup, mknod, mkdir, symlink, link, create, tmpfile, and each readdirplus entry
 *   accepted by the sink other than "." and "..") adds one to that inode's count; `forget`
 *   subtracts. An inode whose count reaches zero is no longer known to the kernel.
 * - Names are strings (UTF-8 on the wire). Data buffers handed to `write` and `setxattr`
 *   are views of the request buffer: copy them if you keep them past the call.
 */

export interface Timespec {
  sec: number;
  nsec: number;
}

export interface Attr {
  ino: number;
  size: number;
  /** 512-byte blocks allocated. */
  blocks: number;
  atime: Timespec;
  mtime: Timespec;
  ctime: Timespec;
  /** Creation time, reported through STATX when present. */
  btime?: Timespec;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  rdev: number;
  blksize: number;
  /** FUSE_ATTR_* flags (submount root, DAX). */
  flags?: number;
}

export interface Entry {
  /** 0 answers a negative lookup that the kernel may cache for entryTimeout. */
  ino: number;
  generation?: number;
  attr: Attr;
  /** Seconds the kernel may cache the name (default 1). */
  entryTimeout?: number;
  /** Seconds the kernel may cache the attributes (default 1). */
  attrTimeout?: number;
}

export interface AttrReply {
  attr: Attr;
  timeout?: number;
}

export interface Opened {
  fh: number;
  /** FOPEN_* flags (direct I/O, keep cache, nonseekable, passthrough...). */
  flags?: number;
  /** With FOPEN_PASSTHROUGH: the id from InitInfo.passthrough.open() of the backing file. */
  backingId?: number;
}

export interface Created {
  entry: Entry;
  open: Opened;
}

export interface RequestContext {
  /** The request's unique id on the wire, for logging. */
  readonly unique: bigint;
  readonly uid: number;
  readonly gid: number;
  readonly pid: number;
  /** Supplementary groups when the kernel sends them (FUSE_CREATE_SUPP_GROUP), else empty. */
  readonly groups: readonly number[];
  /** Fired when the kernel interrupts the request (a signal reached the caller). */
  readonly signal: AbortSignal;
  /**
   * The caller's umask for create/mknod/mkdir/tmpfile: the kernel applied it to `mode`
   * already, unless the backend applies it itself (capabilities.appliesUmask).
   */
  readonly umask: number;
}

export interface SetAttr {
  mode?: number;
  uid?: number;
  gid?: number;
  size?: number;
  atime?: Timespec | 'now';
  mtime?: Timespec | 'now';
  ctime?: Timespec;
  /** Handle of an open file when the change came through one (ftruncate, fchmod...). */
  fh?: number;
  lockOwner?: bigint;
  /** The kernel asks to clear setuid/setgid (FATTR_KILL_SUIDGID). */
  killSuidgid?: boolean;
}

export interface StatFs {
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  bsize: number;
  namelen: number;
  frsize: number;
}

/** A byte-range lock. `end` is inclusive; Infinity means "to the end of the file". */
export interface FileLock {
  start: number;
  end: number;
  /** F_RDLCK, F_WRLCK or F_UNLCK (see LockType). */
  type: number;
  pid: number;
}

export const LockType = { F_RDLCK: 0, F_WRLCK: 1, F_UNLCK: 2 } as const;

export interface LockRequest {
  /** Identifies the lock holder (POSIX: the process's files; flock: the open file). */
  owner: bigint;
  lock: FileLock;
  /** SETLKW: wait for a conflicting lock to go away (abort via ctx.signal → EINTR). */
  sleep: boolean;
  /** A BSD flock() lock rather than a POSIX byte-range lock. */
  flock: boolean;
}

/** d_type values for directory entries. */
export const DirType = { DT_UNKNOWN: 0, DT_FIFO: 1, DT_CHR: 2, DT_DIR: 4, DT_BLK: 6, DT_REG: 8, DT_LNK: 10, DT_SOCK: 12 } as const;

export interface DirEntry {
  name: string;
  ino: number;
  /** DT_* (or the S_IFMT bits of the mode shifted by 12, which is the same). */
  type: number;
  /** Cookie the kernel passes back to continue after this entry. Must be > 0 and stable. */
  offset: number;
}

/**
 * Where readdir puts entries. `add` returns false when the reply buffer is full: the
 * entry was NOT taken, and (for readdirplus) no lookup count may be added for it.
 */
export interface DirSink {
  /** True for READDIRPLUS: pass an Entry with each DirEntry. */
  readonly plus: boolean;
  add(entry: DirEntry, plusEntry?: Entry): boolean;
}

export interface ReadInfo {
  flags: number;
  lockOwner?: bigint;
}

export interface WriteInfo {
  flags: number;
  writeFlags: number;
  lockOwner?: bigint;
}

export interface ReleaseInfo {
  flags: number;
  /** FUSE_RELEASE_FLUSH was set: flush before releasing. */
  flush: boolean;
  /** FUSE_RELEASE_FLOCK_UNLOCK: drop flock locks held through this handle. */
  flockUnlock: boolean;
  lockOwner: bigint;
}

export interface IoctlReply {
  result: number;
  data?: Uint8Array;
}

/** Kernel FUSE passthrough (Linux 6.9+, /dev/fuse): the kernel does I/O on a backing file. */
export interface KernelPassthrough {
  /** Registers an open file; answer an OPEN with FOPEN_PASSTHROUGH and this id. */
  open(fd: number): number;
  close(id: number): void;
}

export interface InitInfo {
  /** Negotiated protocol minor version. */
  minor: number;
  /** Negotiated INIT flags (InitFlag bits). */
  flags: bigint;
  maxWrite: number;
  maxReadahead: number;
  /** Present when kernel passthrough was negotiated. */
  passthrough?: KernelPassthrough;
}

/** What a backend can do beyond plain methods; all default to false/undefined. */
export interface FsCapabilities {
  /** Offer READDIRPLUS (readdir fills Entries when sink.plus). */
  readdirplus?: boolean;
  /** The kernel may cache file data across opens and rely on writeback caching. */
  writebackCache?: boolean;
  /** Mode bits and ids are enforced by the kernel too (mount option default_permissions). */
  defaultPermissions?: boolean;
  /** Keep the kernel's cached symlink targets (FUSE_CACHE_SYMLINKS). */
  cacheSymlinks?: boolean;
  /**
   * The backend clears setuid/setgid (and security.capability) itself on write, truncate
   * and chown, as told by FUSE_WRITE_KILL_SUIDGID / FATTR_KILL_SUIDGID / FUSE_OPEN_KILL_SUIDGID
   * (FUSE_HANDLE_KILLPRIV_V2). Saves the kernel a GETXATTR round trip before writes.
   */
  handleKillpriv?: boolean;
  /**
   * Serve POSIX ACLs as system.posix_acl_* xattrs and let the kernel enforce them
   * (FUSE_POSIX_ACL; implies default_permissions).
   */
  posixAcl?: boolean;
  /**
   * The backend applies the caller's umask to the mode of what it creates (FUSE_DONT_MASK),
   * as a file system with POSIX ACLs must: a directory's default ACL takes its place.
   */
  appliesUmask?: boolean;
  /** Open files may be handed to the kernel for I/O (FUSE_PASSTHROUGH), where the transport can. */
  kernelPassthrough?: boolean;
}

import type { Sample } from '../metrics/sample.js';
import type { SharedHandles } from './shared-handles.js';
import type { SharedNames } from './shared-names.js';

type Ctx = RequestContext;
type R<T> = Promise<T> | T;

/**
 * A file system served by dpfs. Every method may answer at once (a value) or later (a
 * promise); an answer at once is sent before the method's caller returns. Byte arguments
 * (WRITE data, xattr values) are views of the transport's buffers, valid until the request
 * is answered: a backend copies what it keeps.
 */
export interface FileSystem {
  readonly capabilities?: FsCapabilities;

  init?(info: InitInfo): R<void>;
  destroy?(): R<void>;
  /** The backend's own values for metrics (descriptors held, inodes known…), read when scraped. */
  samples?(): Sample[];
  /**
   * Open files whose READ and WRITE another thread may serve itself on the descriptor the
   * table names (virtio-fs queue threads); the backend withdraws a handle before closing it.
   */
  readonly sharedHandles?: SharedHandles;
  /**
   * Inodes (by node id) whose GETATTR another thread may answer itself with one statx of the
   * descriptor the table names (flag SH_STAT_AT_ONCE, the attribute timeout in its high
   * bits; see statFlags); the backend withdraws an inode before closing its descriptor.
   */
  readonly sharedInodes?: SharedHandles;
  /**
   * Inodes by host identity (see SharedNames): a LOOKUP of a name in a directory of
   * `sharedInodes` flagged SH_LOOKUP_AT_ONCE that leads to one of them may be answered off the
   * session with its node id and the name's attributes (/dev/fuse); the backend counts such
   * answers into the inode's lookups before it applies a FORGET.
   */
  readonly sharedNames?: SharedNames;

  lookup?(ctx: Ctx, parent: number, name: string): R<Entry>;
  /** Drops `nlookup` references the kernel held on `ino`. No reply is sent. */
  forget?(ino: number, nlookup: number): R<void>;
  getattr?(ctx: Ctx, ino: number, fh?: number): R<AttrReply>;
  setattr?(ctx: Ctx, ino: number, set: SetAttr): R<AttrReply>;
  readlink?(ctx: Ctx, ino: number): R<string>;
  symlink?(ctx: Ctx, parent: number, name: string, target: string): R<Entry>;
  mknod?(ctx: Ctx, parent: number, name: string, mode: number, rdev: number): R<Entry>;
  mkdir?(ctx: Ctx, parent: number, name: string, mode: number): R<Entry>;
  unlink?(ctx: Ctx, parent: number, name: string): R<void>;
  rmdir?(ctx: Ctx, parent: number, name: string): R<void>;
  /** flags: RENAME_NOREPLACE (1), RENAME_EXCHANGE (2), RENAME_WHITEOUT (4). */
  rename?(ctx: Ctx, parent: number, name: string, newParent: number, newName: string, flags: number): R<void>;
  link?(ctx: Ctx, ino: number, newParent: number, newName: string): R<Entry>;
  /** openFlags: FUSE_OPEN_KILL_SUIDGID when O_TRUNC must also clear setuid/setgid. */
  open?(ctx: Ctx, ino: number, flags: number, openFlags?: number): R<Opened>;
  /**
   * The data at `offset` (short at the end of the file): one buffer, or several in order —
   * views of the backend's own storage, say, with no copy; they are sent as they are when the
   * answer comes, so they must not change before then.
   */
  read?(ctx: Ctx, ino: number, fh: number, offset: number, size: number, info: ReadInfo): R<Uint8Array | Uint8Array[]>;
  /**
   * Optional zero-copy READ: fill `dest` (in order; their total is the requested size) and
   * return the bytes read. Transports that can (virtio-fs: guest memory) use it instead of read.
   */
  readInto?(ctx: Ctx, ino: number, fh: number, offset: number, dest: Uint8Array[], info: ReadInfo): R<number>;
  /** Returns the number of bytes written. */
  write?(ctx: Ctx, ino: number, fh: number, offset: number, data: Uint8Array, info: WriteInfo): R<number>;
  /**
   * Optional zero-copy WRITE: the data as the transport holds it (virtio-fs: the guest's
   * buffers, in order, which the guest could change meanwhile, as with any device's DMA).
   * Transports that can use it instead of write; returns the bytes written.
   */
  writeFrom?(ctx: Ctx, ino: number, fh: number, offset: number, src: Uint8Array[], info: WriteInfo): R<number>;
  statfs?(ctx: Ctx, ino: number): R<StatFs>;
  release?(ctx: Ctx, ino: number, fh: number, info: ReleaseInfo): R<void>;
  fsync?(ctx: Ctx, ino: number, fh: number, datasync: boolean): R<void>;
  /** flags: XATTR_CREATE (1), XATTR_REPLACE (2). */
  setxattr?(ctx: Ctx, ino: number, name: string, value: Uint8Array, flags: number): R<void>;
  /** Returns the whole value; the session answers size probes and ERANGE. */
  getxattr?(ctx: Ctx, ino: number, name: string): R<Uint8Array>;
  listxattr?(ctx: Ctx, ino: number): R<string[]>;
  removexattr?(ctx: Ctx, ino: number, name: string): R<void>;
  flush?(ctx: Ctx, ino: number, fh: number, lockOwner: bigint): R<void>;
  opendir?(ctx: Ctx, ino: number, flags: number): R<Opened>;
  readdir?(ctx: Ctx, ino: number, fh: number, offset: number, sink: DirSink): R<void>;
  releasedir?(ctx: Ctx, ino: number, fh: number): R<void>;
  fsyncdir?(ctx: Ctx, ino: number, fh: number, datasync: boolean): R<void>;
  /** Returns the first conflicting lock, or the request with type F_UNLCK if none. */
  getlk?(ctx: Ctx, ino: number, fh: number, owner: bigint, lock: FileLock): R<FileLock>;
  setlk?(ctx: Ctx, ino: number, fh: number, req: LockRequest): R<void>;
  access?(ctx: Ctx, ino: number, mask: number): R<void>;
  create?(ctx: Ctx, parent: number, name: string, mode: number, flags: number): R<Created>;
  bmap?(ctx: Ctx, ino: number, blocksize: number, block: number): R<number>;
  ioctl?(ctx: Ctx, ino: number, fh: number, cmd: number, arg: bigint, input: Uint8Array, outSize: number, flags: number): R<IoctlReply>;
  poll?(ctx: Ctx, ino: number, fh: number, kh: bigint | undefined, events: number): R<number>;
  fallocate?(ctx: Ctx, ino: number, fh: number, offset: number, length: number, mode: number): R<void>;
  /** whence: SEEK_SET 0, SEEK_CUR 1, SEEK_END 2, SEEK_DATA 3, SEEK_HOLE 4. */
  lseek?(ctx: Ctx, ino: number, fh: number, offset: number, whence: number): R<number>;
  copyFileRange?(
    ctx: Ctx,
    src: { ino: number; fh: number; offset: number },
    dst: { ino: number; fh: number; offset: number },
    length: number,
    flags: number,
  ): R<number>;
  syncfs?(ctx: Ctx, ino: number): R<void>;
  tmpfile?(ctx: Ctx, parent: number, mode: number, flags: number): R<Created>;
}

/** Every request-serving method name of FileSystem. */
export type FsMethod = Exclude<keyof FileSystem, 'capabilities'>;
