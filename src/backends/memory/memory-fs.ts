/**
 * The memory backend: a complete POSIX file system held in process memory. It is the
 * reference every other backend is compared against, so it enforces permissions,
 * ownership and sticky/setgid rules itself rather than relying on the kernel.
 */
import type { Sample } from '../../metrics/sample.js';
import type {
  Attr,
  AttrReply,
  Created,
  DirSink,
  Entry,
  FileLock,
  FileSystem,
  FsCapabilities,
  LockRequest,
  Opened,
  ReadInfo,
  ReleaseInfo,
  RequestContext,
  SetAttr,
  StatFs,
  Timespec,
  WriteInfo,
} from '../../fs/api.js';
import { Errno, FsError, fail } from '../../fuse/errno.js';
import { FUSE_OPEN_KILL_SUIDGID, FUSE_WRITE_KILL_SUIDGID } from '../../fuse/opcodes.js';
import {
  R_OK,
  S_IFCHR,
  S_IFDIR,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
  S_ISGID,
  S_ISUID,
  W_OK,
  X_OK,
  dtype,
  isDir,
  isLnk,
  isReg,
} from '../../util/mode.js';
import { compareTimespec, nowTimespec } from '../../util/time.js';
import { DirTable } from './dir-table.js';
import { FileData } from './file-data.js';
import { FileLocks } from '../../fs/file-locks.js';
import { negativeEntry } from '../../fs/negative-entry.js';
import { check, checkSticky, inGroup, isOwnerOrRoot, permits } from './permissions.js';
import { iovLength } from '../../util/iov.js';

const O_ACCMODE = 3;
const O_WRONLY = 1;
const O_RDWR = 2;
const O_TRUNC = 0o1000;
const O_APPEND = 0o2000;
const RENAME_NOREPLACE = 1;
const RENAME_EXCHANGE = 2;
const RENAME_WHITEOUT = 4;
const XATTR_CREATE = 1;
const XATTR_REPLACE = 2;
const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;
const FALLOC_FL_ZERO_RANGE = 0x10;
const SEEK_SET = 0;
const SEEK_CUR = 1;
const SEEK_END = 2;
const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const XATTR_SIZE_MAX = 65536;
const XATTR_NAME_MAX = 255;
const LINK_MAX = 65000;
const MAX_FILE_SIZE = 2 ** 50;
const BLOCK = 4096;

export interface MemoryFsOptions {
  /** Capacity in bytes reported by statfs and enforced on writes (default 1 GiB... 16 GiB). */
  capacity?: number;
  /** Maximum number of inodes (default 1,000,000). */
  maxInodes?: number;
  /** Seconds the kernel may cache names and attributes (default 1). */
  cacheTimeout?: number;
  /** Mode, owner and group of the root directory. */
  rootMode?: number;
  rootUid?: number;
  rootGid?: number;
}

class Inode {
  readonly ino: number;
  mode: number;
  uid: number;
  gid: number;
  rdev = 0;
  nlink: number;
  atime: Timespec;
  mtime: Timespec;
  ctime: Timespec;
  readonly btime: Timespec;
  /** References the kernel holds (lookup count). */
  lookups = 0;
  /** Open file handles. */
  opens = 0;
  readonly xattrs = new Map<string, Buffer>();
  data?: FileData;
  dir?: DirTable<Inode>;
  parent?: Inode; // directories only: for ".."
  target?: string; // symlinks only
  locks?: FileLocks;

  constructor(ino: number, mode: number, uid: number, gid: number) {
    this.ino = ino;
    this.mode = mode;
    this.uid = uid;
    this.gid = gid;
    this.nlink = isDir(mode) ? 2 : 1;
    const now = nowTimespec();
    this.atime = now;
    this.mtime = now;
    this.ctime = now;
    this.btime = now;
    if (isDir(mode)) this.dir = new DirTable<Inode>();
    else if (isReg(mode)) this.data = new FileData();
  }

  get size(): number {
    if (this.data) return this.data.size;
    if (this.target !== undefined) return Buffer.byteLength(this.target);
    if (this.dir) return BLOCK;
    return 0;
  }

  attr(): Attr {
    const allocated = this.data ? this.data.allocated : 0;
    return {
      ino: this.ino,
      size: this.size,
      blocks: Math.ceil(allocated / 512),
      atime: this.atime,
      mtime: this.mtime,
      ctime: this.ctime,
      btime: this.btime,
      mode: this.mode,
      nlink: this.nlink,
      uid: this.uid,
      gid: this.gid,
      rdev: this.rdev,
      blksize: BLOCK,
    };
  }

  touchM(): void {
    const now = nowTimespec();
    this.mtime = now;
    this.ctime = now;
  }
  touchC(): void {
    this.ctime = nowTimespec();
  }
}

interface Handle {
  node: Inode;
  flags: number;
  /** opendir: a live position, so sequential readdir is O(entries). */
  cursor?: { cookie: number; iter: Iterator<{ name: string; node: Inode; cookie: number }>; pending?: { name: string; node: Inode; cookie: number } };
}

export class MemoryFs implements FileSystem {
  readonly capabilities: FsCapabilities = { readdirplus: true, cacheSymlinks: true, handleKillpriv: true };
  private readonly inodes = new Map<number, Inode>();
  private readonly handles = new Map<number, Handle>();
  private nextIno = 2;
  private nextFh = 1;
  private used = 0;
  private readonly capacity: number;
  private readonly maxInodes: number;
  private readonly timeout: number;

  constructor(opts: MemoryFsOptions = {}) {
    this.capacity = opts.capacity ?? 16 * 1024 ** 3;
    this.maxInodes = opts.maxInodes ?? 1_000_000;
    this.timeout = opts.cacheTimeout ?? 1;
    const root = new Inode(1, S_IFDIR | (opts.rootMode ?? 0o755), opts.rootUid ?? 0, opts.rootGid ?? 0);
    root.parent = root;
    root.lookups = 1; // the kernel's root reference is never forgotten
    this.inodes.set(1, root);
  }

  // ---- helpers ---------------------------------------------------------------------

  private node(ino: number): Inode {
    const n = this.inodes.get(ino);
    if (!n) throw new FsError(Errno.ENOENT, `unknown inode ${ino}`);
    return n;
  }

  private dirNode(ino: number): Inode & { dir: DirTable<Inode> } {
    const n = this.node(ino);
    if (!n.dir) throw new FsError(Errno.ENOTDIR);
    return n as Inode & { dir: DirTable<Inode> };
  }

  private handle(fh: number, ino?: number): Handle {
    const h = this.handles.get(fh);
    if (!h || (ino !== undefined && h.node.ino !== ino)) throw new FsError(Errno.EBADF);
    return h;
  }

  private entry(n: Inode): Entry {
    n.lookups++;
    return { ino: n.ino, attr: n.attr(), entryTimeout: this.timeout, attrTimeout: this.timeout };
  }

  private attrReply(n: Inode): AttrReply {
    return { attr: n.attr(), timeout: this.timeout };
  }

  /** Frees an inode nobody can reach any more: no names, no kernel references, no open handles. */
  private maybeFree(n: Inode): void {
    if (n.nlink === 0 && n.lookups <= 0 && n.opens <= 0 && n.ino !== 1) {
      if (n.data) this.used -= n.data.allocated;
      this.inodes.delete(n.ino);
    }
  }

  private reserve(bytes: number): void {
    if (bytes > 0 && this.used + bytes > this.capacity) throw new FsError(Errno.ENOSPC);
  }

  private newInode(ctx: RequestContext, parent: Inode, mode: number): Inode {
    if (this.inodes.size >= this.maxInodes) throw new FsError(Errno.ENOSPC);
    // Files in a setgid directory take its group; subdirectories inherit the bit.
    const gid = parent.mode & S_ISGID ? parent.gid : ctx.gid;
    if (isDir(mode) && parent.mode & S_ISGID) mode |= S_ISGID;
    else if (mode & S_ISGID && !isDir(mode) && ctx.uid !== 0 && !inGroup(ctx, gid)) mode &= ~S_ISGID;
    const n = new Inode(this.nextIno++, mode, ctx.uid, gid);
    this.inodes.set(n.ino, n);
    return n;
  }

  /** The checks every name-creating operation shares. */
  private prepareCreate(ctx: RequestContext, parentIno: number, name: string): Inode & { dir: DirTable<Inode> } {
    const parent = this.dirNode(parentIno);
    check(ctx, parent, W_OK | X_OK);
    if (name === '.' || name === '..' || parent.dir.has(name)) throw new FsError(Errno.EEXIST);
    if (parent.nlink === 0) throw new FsError(Errno.ENOENT);
    return parent;
  }

  private link_(parent: Inode & { dir: DirTable<Inode> }, name: string, child: Inode): void {
    parent.dir.set(name, child);
    if (child.dir) {
      child.parent = parent;
      parent.nlink++;
    }
    parent.touchM();
  }

  /**
   * Drops setuid always and setgid when group-executable, plus file capabilities, as a
   * write, truncate or chown must (the kernel leaves this to us: FUSE_HANDLE_KILLPRIV_V2).
   * `force` is the kernel's KILL_SUIDGID hint; without it, unprivileged callers still kill.
   */
  private killPriv(n: Inode, ctx: RequestContext | undefined, force = false): void {
    if (!force && ctx && ctx.uid === 0) return;
    if (n.mode & S_ISUID) n.mode &= ~S_ISUID;
    if (n.mode & S_ISGID && n.mode & 0o010) n.mode &= ~S_ISGID;
    n.xattrs.delete('security.capability');
  }

  // ---- FileSystem --------------------------------------------------------------------

  lookup(ctx: RequestContext, parentIno: number, name: string): Entry {
    const parent = this.dirNode(parentIno);
    check(ctx, parent, X_OK);
    let child: Inode | undefined;
    if (name === '.') child = parent;
    else if (name === '..') child = parent.parent ?? parent;
    else child = parent.dir.get(name);
    // This backend is the only writer: the kernel may remember a missing name as long as any.
    if (!child) return negativeEntry(this.timeout);
    return this.entry(child);
  }

  forget(ino: number, nlookup: number): void {
    const n = this.inodes.get(ino);
    if (!n || ino === 1) return;
    n.lookups -= nlookup;
    this.maybeFree(n);
  }

  getattr(_ctx: RequestContext, ino: number): AttrReply {
    return this.attrReply(this.node(ino));
  }

  setattr(ctx: RequestContext, ino: number, s: SetAttr): AttrReply {
    const n = this.node(ino);
    const owner = isOwnerOrRoot(ctx, n);
    if (s.mode !== undefined) {
      if (!owner) fail(Errno.EPERM);
      let mode = s.mode & 0o7777;
      if (mode & S_ISGID && ctx.uid !== 0 && !inGroup(ctx, n.gid)) mode &= ~S_ISGID;
      n.mode = (n.mode & S_IFMT) | mode;
    }
    if (s.uid !== undefined || s.gid !== undefined) {
      const uid = s.uid ?? n.uid;
      const gid = s.gid ?? n.gid;
      if (ctx.uid !== 0) {
        if (uid !== n.uid) fail(Errno.EPERM);
        if (gid !== n.gid && (ctx.uid !== n.uid || !inGroup(ctx, gid))) fail(Errno.EPERM);
      }
      if ((uid !== n.uid || gid !== n.gid || ctx.uid !== 0) && !isDir(n.mode)) {
        // chown clears setuid and group-exec setgid, even for root on regular files.
        if (n.mode & S_ISUID) n.mode &= ~S_ISUID;
        if (n.mode & S_ISGID && n.mode & 0o010) n.mode &= ~S_ISGID;
      }
      n.uid = uid;
      n.gid = gid;
    }
    if (s.size !== undefined) {
      if (isDir(n.mode)) fail(Errno.EISDIR);
      if (!n.data) fail(Errno.EINVAL);
      if (s.fh !== undefined) {
        const h = this.handle(s.fh, ino);
        if ((h.flags & O_ACCMODE) === 0) fail(Errno.EBADF);
      } else {
        check(ctx, n, W_OK);
      }
      if (s.size > MAX_FILE_SIZE) fail(Errno.EFBIG);
      {
        this.used += n.data.truncate(s.size);
        n.touchM();
        this.killPriv(n, ctx);
      }
    }
    if (s.killSuidgid) this.killPriv(n, ctx, true);
    const setTime = (t: Timespec | 'now') => {
      if (t === 'now') {
        if (!owner && !permits(ctx, n, W_OK)) fail(Errno.EACCES);
        return nowTimespec();
      }
      if (!owner) fail(Errno.EPERM);
      return t;
    };
    if (s.atime !== undefined) n.atime = setTime(s.atime);
    if (s.mtime !== undefined) n.mtime = setTime(s.mtime);
    n.ctime = s.ctime ?? nowTimespec();
    return this.attrReply(n);
  }

  readlink(_ctx: RequestContext, ino: number): string {
    const n = this.node(ino);
    if (n.target === undefined) fail(Errno.EINVAL);
    return n.target;
  }

  symlink(ctx: RequestContext, parentIno: number, name: string, target: string): Entry {
    const parent = this.prepareCreate(ctx, parentIno, name);
    const n = this.newInode(ctx, parent, S_IFLNK | 0o777);
    n.target = target;
    this.link_(parent, name, n);
    return this.entry(n);
  }

  mknod(ctx: RequestContext, parentIno: number, name: string, mode: number, rdev: number): Entry {
    const type = mode & S_IFMT;
    if (type === S_IFDIR || type === S_IFLNK) fail(Errno.EINVAL);
    if ((type === S_IFCHR || type === 0o060000) && ctx.uid !== 0) fail(Errno.EPERM);
    const parent = this.prepareCreate(ctx, parentIno, name);
    const n = this.newInode(ctx, parent, (type || S_IFREG) | (mode & 0o7777));
    n.rdev = type === S_IFCHR || type === 0o060000 ? rdev : 0;
    this.link_(parent, name, n);
    return this.entry(n);
  }

  mkdir(ctx: RequestContext, parentIno: number, name: string, mode: number): Entry {
    const parent = this.prepareCreate(ctx, parentIno, name);
    if (parent.nlink >= LINK_MAX) fail(Errno.EMLINK);
    const n = this.newInode(ctx, parent, S_IFDIR | (mode & 0o7777));
    this.link_(parent, name, n);
    return this.entry(n);
  }

  private removeName(parent: Inode & { dir: DirTable<Inode> }, name: string, child: Inode): void {
    parent.dir.delete(name);
    parent.touchM();
    if (child.dir) {
      parent.nlink--;
      child.nlink = 0;
    } else {
      child.nlink--;
    }
    child.touchC();
    this.maybeFree(child);
  }

  unlink(ctx: RequestContext, parentIno: number, name: string): void {
    const parent = this.dirNode(parentIno);
    check(ctx, parent, W_OK | X_OK);
    const child = parent.dir.get(name);
    if (!child) fail(Errno.ENOENT);
    if (child.dir) fail(Errno.EISDIR);
    checkSticky(ctx, parent, child);
    this.removeName(parent, name, child);
  }

  rmdir(ctx: RequestContext, parentIno: number, name: string): void {
    const parent = this.dirNode(parentIno);
    if (name === '.') fail(Errno.EINVAL);
    if (name === '..') fail(Errno.ENOTEMPTY);
    check(ctx, parent, W_OK | X_OK);
    const child = parent.dir.get(name);
    if (!child) fail(Errno.ENOENT);
    if (!child.dir) fail(Errno.ENOTDIR);
    if (child.dir.size > 0) fail(Errno.ENOTEMPTY);
    checkSticky(ctx, parent, child);
    this.removeName(parent, name, child);
  }

  private isAncestor(maybeAncestor: Inode, n: Inode): boolean {
    for (let cur = n; ; cur = cur.parent!) {
      if (cur === maybeAncestor) return true;
      if (cur.ino === 1 || !cur.parent) return false;
    }
  }

  rename(ctx: RequestContext, parentIno: number, name: string, newParentIno: number, newName: string, flags: number): void {
    if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT)) fail(Errno.EINVAL);
    if (flags & RENAME_EXCHANGE && flags & (RENAME_NOREPLACE | RENAME_WHITEOUT)) fail(Errno.EINVAL);
    if (name === '.' || name === '..' || newName === '.' || newName === '..') fail(Errno.EBUSY);
    const src = this.dirNode(parentIno);
    const dst = this.dirNode(newParentIno);
    check(ctx, src, W_OK | X_OK);
    check(ctx, dst, W_OK | X_OK);
    const child = src.dir.get(name);
    if (!child) fail(Errno.ENOENT);
    const victim = dst.dir.get(newName);
    checkSticky(ctx, src, child);
    if (victim) checkSticky(ctx, dst, victim);

    if (flags & RENAME_EXCHANGE) {
      if (!victim) fail(Errno.ENOENT);
      if (child === victim) return;
      if (child.dir && this.isAncestor(child, dst)) fail(Errno.EINVAL);
      if (victim.dir && this.isAncestor(victim, src)) fail(Errno.EINVAL);
      if (src !== dst) {
        if (child.dir && ctx.uid !== 0) check(ctx, child, W_OK);
        if (victim.dir && ctx.uid !== 0) check(ctx, victim, W_OK);
      }
      src.dir.set(name, victim);
      dst.dir.set(newName, child);
      if (child.dir) child.parent = dst;
      if (victim.dir) victim.parent = src;
      if (!!child.dir !== !!victim.dir && src !== dst) {
        const delta = child.dir ? 1 : -1;
        dst.nlink += delta;
        src.nlink -= delta;
      }
      src.touchM();
      dst.touchM();
      child.touchC();
      victim.touchC();
      return;
    }

    if (victim) {
      if (flags & RENAME_NOREPLACE) fail(Errno.EEXIST);
      if (victim === child) return; // two names of one inode: POSIX says do nothing
      if (child.dir && !victim.dir) fail(Errno.ENOTDIR);
      if (!child.dir && victim.dir) fail(Errno.EISDIR);
      if (victim.dir && victim.dir.size > 0) fail(Errno.ENOTEMPTY);
    }
    if (child.dir) {
      if (this.isAncestor(child, dst)) fail(Errno.EINVAL);
      // Moving a directory rewrites its "..", which needs write access to it.
      if (src !== dst && ctx.uid !== 0) check(ctx, child, W_OK);
    }
    if (flags & RENAME_WHITEOUT && ctx.uid !== 0) fail(Errno.EPERM);
    if (victim) this.removeName(dst, newName, victim);
    src.dir.delete(name);
    if (child.dir) {
      src.nlink--;
      dst.nlink++;
      child.parent = dst;
    }
    dst.dir.set(newName, child);
    if (flags & RENAME_WHITEOUT) {
      const wo = this.newInode(ctx, src, S_IFCHR);
      src.dir.set(name, wo);
    }
    src.touchM();
    dst.touchM();
    child.touchC();
  }

  link(ctx: RequestContext, ino: number, newParentIno: number, newName: string): Entry {
    const n = this.node(ino);
    if (n.dir) fail(Errno.EPERM);
    const parent = this.prepareCreate(ctx, newParentIno, newName);
    if (n.nlink >= LINK_MAX) fail(Errno.EMLINK);
    if (n.nlink === 0 && n.lookups <= 0) fail(Errno.ENOENT);
    parent.dir.set(newName, n);
    parent.touchM();
    n.nlink++;
    n.touchC();
    return this.entry(n);
  }

  private openNode(ctx: RequestContext, n: Inode, flags: number, openFlags = 0): Opened {
    const acc = flags & O_ACCMODE;
    if (n.dir && acc !== 0) fail(Errno.EISDIR);
    if (isLnk(n.mode)) fail(Errno.ELOOP);
    if (acc === 0 || acc === O_RDWR) check(ctx, n, R_OK);
    if (acc === O_WRONLY || acc === O_RDWR || flags & O_TRUNC) check(ctx, n, W_OK);
    if (flags & O_TRUNC && n.data && acc !== 0) {
      this.used += n.data.truncate(0);
      n.touchM();
      this.killPriv(n, ctx, (openFlags & FUSE_OPEN_KILL_SUIDGID) !== 0);
    }
    const fh = this.nextFh++;
    this.handles.set(fh, { node: n, flags });
    n.opens++;
    return { fh };
  }

  open(ctx: RequestContext, ino: number, flags: number, openFlags?: number): Opened {
    return this.openNode(ctx, this.node(ino), flags, openFlags);
  }

  /** Views of the file's chunks: answered at once, they are sent before anything can change them. */
  read(_ctx: RequestContext, ino: number, fh: number, offset: number, size: number, _info: ReadInfo): Uint8Array[] {
    return this.readable(fh, ino).views(offset, size);
  }

  /** Copies straight into the transport's buffers (guest memory, FUSE ring entries). */
  readInto(_ctx: RequestContext, ino: number, fh: number, offset: number, dest: Uint8Array[], _info: ReadInfo): number {
    return this.readable(fh, ino).readInto(offset, dest);
  }

  private readable(fh: number, ino: number): FileData {
    const h = this.handle(fh, ino);
    if ((h.flags & O_ACCMODE) === O_WRONLY) fail(Errno.EBADF);
    const n = h.node;
    if (!n.data) fail(Errno.EISDIR);
    // relatime: update atime only when it is older than the last change.
    if (compareTimespec(n.atime, n.mtime) <= 0 || compareTimespec(n.atime, n.ctime) <= 0) n.atime = nowTimespec();
    return n.data;
  }

  write(ctx: RequestContext, ino: number, fh: number, offset: number, data: Uint8Array, info: WriteInfo): number {
    return this.writeFrom(ctx, ino, fh, offset, [data], info);
  }

  /** Copies straight from the transport's buffers (guest memory over virtio-fs) into the file. */
  writeFrom(ctx: RequestContext, ino: number, fh: number, offset: number, src: Uint8Array[], info: WriteInfo): number {
    const h = this.handle(fh, ino);
    if ((h.flags & O_ACCMODE) === 0) fail(Errno.EBADF);
    const n = h.node;
    if (!n.data) fail(Errno.EISDIR);
    if (h.flags & O_APPEND) offset = n.data.size;
    const length = iovLength(src);
    if (offset + length > MAX_FILE_SIZE) fail(Errno.EFBIG);
    this.reserve(n.data.wouldAllocate(offset, length));
    for (const piece of src) {
      this.used += n.data.write(offset, piece);
      offset += piece.length;
    }
    n.touchM();
    this.killPriv(n, ctx, (info.writeFlags & FUSE_WRITE_KILL_SUIDGID) !== 0);
    return length;
  }

  statfs(): StatFs {
    const blocks = Math.floor(this.capacity / BLOCK);
    const free = Math.max(0, blocks - Math.ceil(this.used / BLOCK));
    return {
      blocks,
      bfree: free,
      bavail: free,
      files: this.maxInodes,
      ffree: this.maxInodes - this.inodes.size,
      bsize: BLOCK,
      namelen: 255,
      frsize: BLOCK,
    };
  }

  release(_ctx: RequestContext, ino: number, fh: number, info: ReleaseInfo): void {
    const h = this.handles.get(fh);
    if (!h || h.node.ino !== ino) return;
    this.handles.delete(fh);
    if (info.flockUnlock) h.node.locks?.releaseOwner(info.lockOwner, 'flock');
    h.node.opens--;
    this.maybeFree(h.node);
  }

  fsync(): void {}
  fsyncdir(): void {}
  syncfs(): void {}

  private checkXattrAccess(ctx: RequestContext, n: Inode, name: string, write: boolean): void {
    if (name.length === 0 || Buffer.byteLength(name) > XATTR_NAME_MAX) fail(Errno.ERANGE);
    if (name.startsWith('user.')) {
      if (!isReg(n.mode) && !isDir(n.mode)) fail(write ? Errno.EPERM : Errno.ENODATA);
      if (isDir(n.mode) && n.mode & 0o1000 && write && !isOwnerOrRoot(ctx, n)) fail(Errno.EPERM);
      check(ctx, n, write ? W_OK : R_OK);
    } else if (name.startsWith('trusted.')) {
      if (ctx.uid !== 0) fail(write ? Errno.EPERM : Errno.ENODATA);
    } else if (name.startsWith('security.')) {
      if (write && !isOwnerOrRoot(ctx, n)) fail(Errno.EPERM);
    } else {
      // system.* (ACLs) would need FUSE_POSIX_ACL semantics; other prefixes are invalid.
      fail(Errno.EOPNOTSUPP);
    }
  }

  setxattr(ctx: RequestContext, ino: number, name: string, value: Uint8Array, flags: number): void {
    const n = this.node(ino);
    this.checkXattrAccess(ctx, n, name, true);
    if (value.length > XATTR_SIZE_MAX) fail(Errno.E2BIG);
    const exists = n.xattrs.has(name);
    if (flags & XATTR_CREATE && exists) fail(Errno.EEXIST);
    if (flags & XATTR_REPLACE && !exists) fail(Errno.ENODATA);
    n.xattrs.set(name, Buffer.from(value));
    n.touchC();
  }

  getxattr(ctx: RequestContext, ino: number, name: string): Uint8Array {
    const n = this.node(ino);
    this.checkXattrAccess(ctx, n, name, false);
    const v = n.xattrs.get(name);
    if (!v) fail(Errno.ENODATA);
    return v;
  }

  listxattr(ctx: RequestContext, ino: number): string[] {
    const n = this.node(ino);
    return [...n.xattrs.keys()].filter((k) => ctx.uid === 0 || !k.startsWith('trusted.'));
  }

  removexattr(ctx: RequestContext, ino: number, name: string): void {
    const n = this.node(ino);
    this.checkXattrAccess(ctx, n, name, true);
    if (!n.xattrs.delete(name)) fail(Errno.ENODATA);
    n.touchC();
  }

  opendir(ctx: RequestContext, ino: number, flags: number): Opened {
    const n = this.dirNode(ino);
    check(ctx, n, R_OK);
    const fh = this.nextFh++;
    this.handles.set(fh, { node: n, flags });
    n.opens++;
    return { fh };
  }

  readdir(_ctx: RequestContext, ino: number, fh: number, offset: number, sink: DirSink): void {
    const h = this.handle(fh, ino);
    const dir = h.node as Inode & { dir: DirTable<Inode> };
    if (!dir.dir) fail(Errno.ENOTDIR);
    const plusEntry = (n: Inode, counted: boolean): Entry | undefined => {
      if (!sink.plus) return undefined;
      return { ino: n.ino, attr: n.attr(), entryTimeout: counted ? this.timeout : 0, attrTimeout: this.timeout };
    };
    if (offset < 1 && !sink.add({ name: '.', ino: dir.ino, type: dtype(dir.mode), offset: 1 }, plusEntry(dir, false))) return;
    if (offset < 2) {
      const parent = dir.parent ?? dir;
      if (!sink.add({ name: '..', ino: parent.ino, type: dtype(parent.mode), offset: 2 }, plusEntry(parent, false))) return;
      offset = 2;
    }
    // Continue the handle's live iterator when the kernel resumes where we stopped.
    let cur = h.cursor && h.cursor.cookie === offset ? h.cursor : undefined;
    if (!cur) cur = { cookie: offset, iter: dir.dir.after(offset) };
    h.cursor = cur;
    for (;;) {
      let slot = cur.pending;
      cur.pending = undefined;
      if (slot && !dir.dir.isLive(slot)) slot = undefined;
      if (!slot) {
        const next = cur.iter.next();
        if (next.done) return;
        slot = next.value;
      }
      const taken = sink.add({ name: slot.name, ino: slot.node.ino, type: dtype(slot.node.mode), offset: slot.cookie }, plusEntry(slot.node, true));
      if (!taken) {
        cur.pending = slot;
        return;
      }
      if (sink.plus) slot.node.lookups++;
      cur.cookie = slot.cookie;
    }
  }

  releasedir(_ctx: RequestContext, ino: number, fh: number): void {
    const h = this.handles.get(fh);
    if (!h || h.node.ino !== ino) return;
    this.handles.delete(fh);
    h.node.opens--;
    this.maybeFree(h.node);
  }

  getlk(_ctx: RequestContext, ino: number, _fh: number, owner: bigint, lock: FileLock): FileLock {
    const n = this.node(ino);
    return (n.locks ??= new FileLocks()).test(owner, lock);
  }

  async setlk(ctx: RequestContext, ino: number, _fh: number, req: LockRequest): Promise<void> {
    const n = this.node(ino);
    await (n.locks ??= new FileLocks()).set(req.owner, req.lock, { sleep: req.sleep, flock: req.flock, signal: ctx.signal });
  }

  access(ctx: RequestContext, ino: number, mask: number): void {
    const n = this.node(ino);
    if (mask !== 0) check(ctx, n, mask & 7);
  }

  create(ctx: RequestContext, parentIno: number, name: string, mode: number, flags: number): Created {
    const parent = this.dirNode(parentIno);
    const existing = parent.dir.get(name);
    if (existing) {
      // O_CREAT without O_EXCL on an existing name: the kernel normally looks up first.
      if (flags & 0o200) fail(Errno.EEXIST);
      check(ctx, parent, X_OK);
      const open = this.openNode(ctx, existing, flags);
      return { entry: this.entry(existing), open };
    }
    this.prepareCreate(ctx, parentIno, name);
    const n = this.newInode(ctx, parent, S_IFREG | (mode & 0o7777));
    this.link_(parent, name, n);
    const fh = this.nextFh++;
    this.handles.set(fh, { node: n, flags });
    n.opens++;
    return { entry: this.entry(n), open: { fh } };
  }

  tmpfile(ctx: RequestContext, parentIno: number, mode: number, flags: number): Created {
    const parent = this.dirNode(parentIno);
    check(ctx, parent, W_OK | X_OK);
    const n = this.newInode(ctx, parent, S_IFREG | (mode & 0o7777));
    n.nlink = 0;
    const fh = this.nextFh++;
    this.handles.set(fh, { node: n, flags });
    n.opens++;
    return { entry: this.entry(n), open: { fh } };
  }

  fallocate(_ctx: RequestContext, ino: number, fh: number, offset: number, length: number, mode: number): void {
    const h = this.handle(fh, ino);
    if ((h.flags & O_ACCMODE) === 0) fail(Errno.EBADF);
    const n = h.node;
    if (!n.data) fail(n.dir ? Errno.EISDIR : Errno.ENODEV);
    if (offset < 0 || length <= 0) fail(Errno.EINVAL);
    if (offset + length > MAX_FILE_SIZE) fail(Errno.EFBIG);
    const keepSize = (mode & FALLOC_FL_KEEP_SIZE) !== 0;
    if (mode & FALLOC_FL_PUNCH_HOLE) {
      if (!keepSize || mode & ~(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)) fail(Errno.EOPNOTSUPP);
      const end = Math.min(offset + length, n.data.size);
      if (end > offset) this.used += n.data.punch(offset, end - offset);
    } else if (mode & FALLOC_FL_ZERO_RANGE) {
      if (mode & ~(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)) fail(Errno.EOPNOTSUPP);
      this.reserve(n.data.wouldAllocate(offset, length));
      this.used += n.data.punch(offset, length);
      this.used += n.data.allocate(offset, length);
      if (!keepSize && offset + length > n.data.size) n.data.size = offset + length;
    } else if (mode & ~FALLOC_FL_KEEP_SIZE) {
      fail(Errno.EOPNOTSUPP);
    } else {
      this.reserve(n.data.wouldAllocate(offset, length));
      this.used += n.data.allocate(offset, length);
      if (!keepSize && offset + length > n.data.size) n.data.size = offset + length;
    }
    n.touchM();
  }

  lseek(_ctx: RequestContext, ino: number, fh: number, offset: number, whence: number): number {
    const n = this.handle(fh, ino).node;
    const size = n.size;
    switch (whence) {
      case SEEK_SET:
      case SEEK_CUR:
        return offset;
      case SEEK_END:
        return size + offset;
      case SEEK_DATA: {
        if (!n.data || offset >= size) fail(Errno.ENXIO);
        const at = n.data.nextData(offset);
        if (at < 0) fail(Errno.ENXIO);
        return at;
      }
      case SEEK_HOLE:
        if (!n.data || offset >= size) fail(Errno.ENXIO);
        return Math.min(n.data.nextHole(offset), size);
      default:
        fail(Errno.EINVAL);
    }
  }

  copyFileRange(
    ctx: RequestContext,
    src: { ino: number; fh: number; offset: number },
    dst: { ino: number; fh: number; offset: number },
    length: number,
    flags: number,
  ): number {
    if (flags !== 0) fail(Errno.EINVAL);
    const hs = this.handle(src.fh, src.ino);
    if ((hs.flags & O_ACCMODE) === O_WRONLY) fail(Errno.EBADF);
    if (!hs.node.data) fail(Errno.EISDIR);
    const data = hs.node.data.read(src.offset, Math.min(length, 64 * 1024 * 1024));
    if (data.length === 0) return 0;
    return this.write(ctx, dst.ino, dst.fh, dst.offset, data, { flags: 0, writeFlags: 0 });
  }

  /** Number of inodes currently held (for tests and metrics). */
  get inodeCount(): number {
    return this.inodes.size;
  }

  samples(): Sample[] {
    return [
      { name: 'dpfs_memory_inodes', help: 'Inodes the memory backend holds', type: 'gauge', value: this.inodes.size },
      { name: 'dpfs_memory_used_bytes', help: 'File data the memory backend holds, against its capacity', type: 'gauge', value: this.used },
      { name: 'dpfs_memory_capacity_bytes', help: 'Capacity of the memory backend', type: 'gauge', value: this.capacity },
    ];
  }
}
