/**
 * The passthrough backend: serves a directory of this machine, which may itself be any
 * mounted file system. Confinement comes from never resolving paths: every inode is held
 * by a kernel handle / O_PATH descriptor, and every operation is an *at() call on one
 * component relative to such a descriptor, with O_NOFOLLOW where a symlink could be
 * swapped in. Every call runs with the caller's fsuid/fsgid/groups, so the host kernel
 * checks permissions and assigns ownership exactly as for that user; off the event loop,
 * except where it cannot wait: lookups in the dentry cache and attributes of open inodes
 * on local file systems, and the metadata calls on file systems held in memory.
 */
import type { Sample } from '../../metrics/sample.js';
import { SharedNames } from '../../fs/shared-names.js';
import { SH_READ, SH_READ_AT_ONCE, SH_WRITE, SH_WRITE_AT_ONCE, SharedHandles, statFlags } from '../../fs/shared-handles.js';
import type {
  Attr,
  AttrReply,
  Created,
  DirSink,
  Entry,
  FileLock,
  FileSystem,
  FsCapabilities,
  InitInfo,
  KernelPassthrough,
  LockRequest,
  Opened,
  ReadInfo,
  ReleaseInfo,
  RequestContext,
  SetAttr,
  StatFs,
  WriteInfo,
} from '../../fs/api.js';
import { FileLocks } from '../../fs/file-locks.js';
import { negativeEntry } from '../../fs/negative-entry.js';
import { Errno, FsError, errnoOf, fail } from '../../fuse/errno.js';
import { FOPEN_DIRECT_IO, FOPEN_KEEP_CACHE, FOPEN_PASSTHROUGH, FUSE_WRITE_KILL_SUIDGID } from '../../fuse/opcodes.js';
import {
  AT_EMPTY_PATH,
  AT_FDCWD,
  AT_REMOVEDIR,
  AT_SYMLINK_FOLLOW,
  AT_SYMLINK_NOFOLLOW,
  type Creds,
  type CreatedFile,
  type Looked,
  O_APPEND,
  O_CREAT,
  O_DIRECT,
  O_DIRECTORY,
  O_EXCL,
  O_NOCTTY,
  O_NOFOLLOW,
  O_NONBLOCK,
  O_PATH,
  O_TMPFILE,
  O_TRUNC,
  type Statx,
  type TimeArg,
  closeNow,
  procPath,
  sys,
  sysNow,
} from '../../native/syscalls.js';
import { S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, S_ISGID, S_ISUID } from '../../util/mode.js';
import { type NowaitState, type StallBudget, readAt, syncFile, tookAtOnce, writeAt } from './file-io.js';
import { IdMap, type IdRange } from './id-map.js';
import { type HostDevice, InodeTable, type PInode, type Via, hostKey } from './inode-table.js';
import { then } from '../../util/maybe-async.js';

export type CacheMode = 'never' | 'metadata' | 'auto' | 'always';

export interface PassthroughOptions {
  /** The directory to export. */
  root: string;
  /** never: no caching, direct I/O; metadata: names and attributes only; auto: 1 s; always: everything, long. */
  cache?: CacheMode;
  /** Let the kernel cache writes (FUSE_WRITEBACK_CACHE). */
  writeback?: boolean;
  /** Open every file with FOPEN_DIRECT_IO (bypass the kernel page cache). */
  directIo?: boolean;
  /** Serve extended attributes (and POSIX ACLs). */
  xattr?: boolean;
  readOnly?: boolean;
  uidMap?: IdRange[];
  gidMap?: IdRange[];
  /** Bound on cached O_PATH descriptors (default 4096). */
  maxFds?: number;
  /** Let the kernel read and write open files itself where it can (default true). */
  kernelPassthrough?: boolean;
}

const O_ACCMODE = 3;
const O_RDONLY = 0;
const O_WRONLY = 1;
const O_RDWR = 2;

/** A kernel-passthrough backing file: its id, and the opens using it. */
interface Backing {
  id: number;
  refs: number;
}

interface Handle extends NowaitState {
  fd: number;
  node: PInode;
  /** This handle holds a reference on its inode's kernel passthrough backing file. */
  backed?: boolean;
  /** Published in sharedHandles (queue threads may do its I/O). */
  shared?: boolean;
  /** What it was published with (SH_*), outside a back-off of its device's writes. */
  sharedFlags?: number;
  /** Directory handles: serialises getdents on the shared file position. */
  dirQueue?: Promise<unknown>;
  /**
   * Host d_off cookies are 64-bit; the kernel gets small ones instead: cookie i is
   * cookies[i - 1], valid for the life of this handle.
   */
  cookies?: bigint[];
}

/**
 * A handle with every field set: one shape for all of them, so the code that handles them
 * stays monomorphic (see node() in inode-table.ts).
 */
function newHandle(fd: number, node: PInode): Handle {
  return { fd, node, noNowaitRead: false, noNowaitWrite: false, inMemory: false, localDisk: undefined, backed: false, shared: false, sharedFlags: undefined, dirQueue: undefined, cookies: undefined };
}

const TIMEOUTS: Record<CacheMode, number> = { never: 0, metadata: 86400, auto: 1, always: 86400 };

/** Locks are kept here (per inode) and so hold among this mount's clients. */
export class PassthroughFs implements FileSystem {
  readonly capabilities: FsCapabilities;
  private readonly table: InodeTable;
  private readonly handles = new Map<number, Handle>();
  /** Host devices seen, by major:minor. */
  private readonly devices = new Map<string, HostDevice>();
  private readonly locks = new Map<number, FileLocks>();
  private nextFh = 1;
  private readonly uids: IdMap;
  private readonly gids: IdMap;
  private readonly timeout: number;
  private readonly cache: CacheMode;
  private readonly switchCreds: boolean;
  private kernelIo?: KernelPassthrough;
  private lastCreds?: { uid: number; gid: number; groups: readonly number[]; creds: Creds };
  /**
   * Kernel passthrough needs one backing file per inode for all its opens, shared and
   * counted: registered from the first open's descriptor. The kernel keeps its own
   * reference to that file and only takes its path (each open gets a file of its own, with
   * its own flags, as the daemon: access was checked when the caller opened), so the
   * descriptor is ours to close as usual. Inodes the kernel refuses are served by us.
   */
  private readonly backing = new Map<number, Backing | null>();

  constructor(readonly opts: PassthroughOptions) {
    this.cache = opts.cache ?? 'auto';
    this.timeout = TIMEOUTS[this.cache];
    if (this.timeout > 0) this.missing = negativeEntry(this.timeout);
    this.uids = new IdMap(opts.uidMap ?? []);
    this.gids = new IdMap(opts.gidMap ?? []);
    // GETATTR off the rings needs attributes as they are: not where ids are mapped.
    this.statFlags = this.uids.identity && this.gids.identity ? statFlags(this.timeout) : 0;
    this.switchCreds = process.getuid?.() === 0;
    // Removals off the session (root callers) only where the daemon's own are theirs.
    const unlinks = this.switchCreds && !opts.readOnly;
    this.table = new InodeTable({ maxFds: opts.maxFds ?? 4096, maxPinned: 16384, shared: this.statFlags ? { table: this.sharedInodes, flags: this.statFlags, names: this.sharedNames, unlinks } : undefined });
    // A write at once off a ring that waited counts against its device's budget as ours do.
    this.sharedHandles.onStall = (fh, ms) => {
      const h = this.handles.get(fh);
      if (h) tookAtOnce(h, ms);
    };
    this.capabilities = {
      writebackCache: opts.writeback ?? false,
      cacheSymlinks: this.cache !== 'never',
      // The host kernel checks every call as the caller, but only calls that reach us: a path
      // walk through dentries the tenant's kernel has cached does not. So it checks too.
      defaultPermissions: true,
      posixAcl: opts.xattr !== false,
      // The host applies each caller's umask, except where a directory's default ACL takes
      // its place (the tenant's kernel cannot tell: it would apply it always).
      appliesUmask: true,
      // Writes, truncates and chowns run as the caller, so the host kernel clears
      // setuid/setgid exactly when it would for that user.
      handleKillpriv: true,
      kernelPassthrough: opts.kernelPassthrough !== false && this.cache !== 'never' && !opts.directIo,
    };
    if (opts.xattr === false) {
      for (const m of ['setxattr', 'getxattr', 'listxattr', 'removexattr'] as const) (this as Record<string, unknown>)[m] = undefined;
    }
  }

  /** Opens the export; once only, though each new FUSE session (a rebooted guest) calls it. */
  async init(info?: InitInfo): Promise<void> {
    this.kernelIo = info?.passthrough;
    if (this.table.size > 0) return;
    // Calls that make inodes carry the caller's umask (appliesUmask); no other call may mask.
    process.umask(0);
    const root = await sys.lookup(null, AT_FDCWD, this.opts.root, O_DIRECTORY);
    await this.table.addRoot(root.fd, hostKey(root.st), root.st.ino, root.st.mode & S_IFMT, root.handle, await this.deviceOf(root));
  }

  /** Open regular files whose I/O (and attributes) the rings' native data path may serve. */
  readonly sharedHandles = new SharedHandles();
  /** Inodes whose GETATTR the rings' native data path may answer (see InodeTable). */
  readonly sharedInodes = new SharedHandles();
  /** Inodes on file systems held in memory by host identity, for LOOKUP off the session (see InodeTable). */
  readonly sharedNames = new SharedNames();
  /** What published descriptors on local file systems carry for GETATTR (0: ids are mapped). */
  private readonly statFlags: number;
  /** The answer to a lookup of a name that does not exist: remembered as long as names are (none with cache=never). */
  private readonly missing?: Entry;

  /** Files the kernel holds open (for tests). */
  get openFiles(): number {
    return this.handles.size;
  }

  /** Open descriptors held by the backend (for tests and metrics). */
  get openFds(): number {
    return this.table.openFds + this.handles.size;
  }

  samples(): Sample[] {
    const out: Sample[] = [
      { name: 'dpfs_passthrough_open_fds', help: 'Descriptors the passthrough holds (cached O_PATH and open files)', type: 'gauge', value: this.openFds },
      { name: 'dpfs_passthrough_inodes', help: 'Host inodes the kernel holds references to', type: 'gauge', value: this.inodeCount },
    ];
    for (const d of this.devices.values()) {
      if (d.stalls) out.push({ name: 'dpfs_passthrough_write_backoffs_total', help: 'Times writes at once stalled a host device past its budget and went asynchronous', type: 'counter', value: d.stalls.trips ?? 0, labels: { host_device: `${d.major}:${d.minor}` } });
    }
    return out;
  }

  get inodeCount(): number {
    return this.table.size;
  }

  // ---- helpers ---------------------------------------------------------------------

  private creds(ctx: RequestContext): Creds {
    if (!this.switchCreds) return null;
    // Requests come in runs from one caller (whose group list the transport caches): reuse.
    const groups = ctx.groups;
    const last = this.lastCreds;
    if (last && last.uid === ctx.uid && last.gid === ctx.gid && last.groups === groups) return last.creds;
    const creds = [this.uids.toHost(ctx.uid), this.gids.toHost(ctx.gid), ...groups.map((g) => this.gids.toHost(g))];
    this.lastCreds = { uid: ctx.uid, gid: ctx.gid, groups, creds };
    return creds;
  }

  private writable(): void {
    if (this.opts.readOnly) throw new FsError(Errno.EROFS);
  }

  private attr(st: Statx): Attr {
    const rdev = (st.rdevMinor & 0xff) | (st.rdevMajor << 8) | ((st.rdevMinor & ~0xff) << 12);
    return {
      ino: st.ino,
      size: st.size,
      blocks: st.blocks,
      atime: st.atime,
      mtime: st.mtime,
      ctime: st.ctime,
      btime: st.btime,
      mode: st.mode,
      nlink: st.nlink,
      uid: this.uids.toTenant(st.uid),
      gid: this.gids.toTenant(st.gid),
      rdev: rdev >>> 0,
      blksize: st.blksize,
    };
  }

  private handle(fh: number): Handle {
    const h = this.handles.get(fh);
    if (!h) throw new FsError(Errno.EBADF);
    return h;
  }

  /** Where calls on these inodes run: on this thread if both are held in memory (see sysNow), else the pool. */
  private io(n: PInode, other = n): typeof sysNow {
    return n.dev.memory && other.dev.memory ? sysNow : sys;
  }

  /** Attributes of an open descriptor of `n`: read at once on a local file system, else through the pool. */
  private statFd(fd: number, n?: PInode): Statx | Promise<Statx> {
    if (n?.dev.local) return sys.fstatxNow(fd);
    return sys.statx(null, fd, '', AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
  }

  /** The host device of a freshly looked-up inode (its file system type is asked once per device). */
  private deviceOf(l: Looked): HostDevice | Promise<HostDevice> {
    const k = `${l.st.devMajor}:${l.st.devMinor}`;
    const known = this.devices.get(k);
    if (known) return known;
    const dev = (type: number | undefined): HostDevice => ({
      major: l.st.devMajor,
      minor: l.st.devMinor,
      local: type !== undefined && LOCAL_FS_TYPES.has(type),
      memory: type !== undefined && MEMORY_FS_TYPES.has(type),
      fuse: type === FUSE_FS_TYPE,
      stalls: undefined,
    });
    return sys.fsType(l.fd).then(
      (type) => this.remember(k, dev(type)),
      () => this.remember(k, dev(undefined)),
    );
  }

  private remember(k: string, dev: HostDevice): HostDevice {
    const raced = this.devices.get(k);
    if (raced) return raced;
    this.devices.set(k, dev);
    return dev;
  }

  /** Registers a looked-up (or created) host inode and answers with its Entry (at once where nothing waits). */
  private entryFor(l: Looked, via?: Via): Entry | Promise<Entry> {
    const add = (dev: HostDevice) => this.table.add(l.fd, hostKey(l.st), l.st.ino, l.st.mode & S_IFMT, l.handle, dev, via);
    return then(then(this.deviceOf(l), add), (node) => this.entryOf(node, l.st));
  }

  /** The Entry of a known inode, counting the kernel's new reference. */
  private entryOf(n: PInode, st: Statx): Entry {
    n.nlookup++;
    return { ino: n.nodeid, attr: this.attr(st), entryTimeout: this.timeout, attrTimeout: this.timeout };
  }

  /** `missing`: the answer where the name does not exist (else ENOENT is thrown). */
  private lookupIn(ctx: RequestContext | null, parent: PInode, name: string, missing?: Entry): Entry | Promise<Entry> {
    const c = ctx ? this.creds(ctx) : null;
    const dev = parent.dev;
    if (parent.fd >= 0 && dev.local) {
      if (dev.memory) {
        // Held in memory: a name is resolved here at once, and an inode already known needs
        // no descriptor at all (another device, a mount point, takes the long way).
        const st = sys.statxNow(c, parent.fd, name);
        if (typeof st === 'number') {
          if (st === -Errno.ENOENT && missing) return missing;
          throw new FsError(-st);
        }
        const known = st.devMajor === dev.major && st.devMinor === dev.minor ? this.table.find(hostKey(st)) : undefined;
        if (known) return this.entryOf(known, st);
      }
      // On the parent's local file system, a name in the kernel's dentry cache (or any name
      // where all is in memory): one call here, no trip through the pool. Anything else
      // comes back null and takes the pool. A known inode's handle is not asked for again.
      const l = sys.lookupNow(c, parent.fd, name, dev.major, dev.minor, !dev.memory, false);
      if (l) {
        // A known inode's handle only where its descriptor was evicted: its number may have
        // been freed and given to another inode since (see InodeTable.add).
        const known = this.table.find(hostKey(l.st));
        if (!known || known.fd < 0) l.handle = sys.handleNow(l.fd);
        return this.entryFor(l, { parent: parent.nodeid, name });
      }
    }
    return this.table.withFd(parent, (pfd) => sys.lookup(c, pfd, name)).then((l) => this.entryFor(l, { parent: parent.nodeid, name }));
  }

  /**
   * Creates and opens a file (create, tmpfile) in one trip, with its O_PATH descriptor taken
   * from the open file itself (no second name lookup to race on).
   */
  private createIn(ctx: RequestContext, parent: PInode, name: string, openFlags: number, mode: number, flags: number): Created | Promise<Created> {
    const c = this.creds(ctx);
    if ((openFlags & O_ACCMODE) === O_RDWR && (flags & O_ACCMODE) === O_WRONLY) {
      // Widened for writeback (see openFlags): an existing file the caller may write but not
      // read is opened as asked, then widened.
      const undo = async (err: unknown): Promise<Created> => {
        if (!this.widened(err, flags, openFlags)) throw err;
        const r = await this.table.withFd(parent, (pfd) => sys.create(c, pfd, name, (openFlags & ~O_ACCMODE) | O_WRONLY, mode & ~S_IFMT, ctx.umask));
        r.fd = await this.widen(sys, r.fd, openFlags);
        return this.opened(parent, r, flags, name);
      };
      try {
        const done = this.createWith(c, ctx.umask, parent, name, openFlags, mode, flags);
        return done instanceof Promise ? done.catch(undo) : done;
      } catch (err) {
        return undo(err);
      }
    }
    return this.createWith(c, ctx.umask, parent, name, openFlags, mode, flags);
  }

  private createWith(c: Creds, umask: number, parent: PInode, name: string, openFlags: number, mode: number, flags: number): Created | Promise<Created> {
    const here = parent.fd >= 0 && parent.dev.memory ? sys.createNow(c, parent.fd, name, openFlags, mode & ~S_IFMT, umask) : null;
    if (here) {
      // Held in memory: answered at once, with no await in between for an eviction.
      this.table.touch(parent);
      return this.opened(parent, here, flags, name);
    }
    return this.table.withFd(parent, (pfd) => sys.create(c, pfd, name, openFlags, mode & ~S_IFMT, umask)).then((r) => this.opened(parent, r, flags, name));
  }

  /** The entry and open reply of the file `r` just created as `name` in `parent` ('.': tmpfile); closes it if they fail. */
  private opened(parent: PInode, r: CreatedFile, flags: number, name: string): Created | Promise<Created> {
    const undo = (err: unknown): Promise<never> => {
      if (parent.dev.memory) {
        closeNow(r.fd);
        throw err;
      }
      return this.io(parent)
        .close(r.fd)
        .then(() => {
          throw err;
        });
    };
    try {
      const done = then(this.entryFor(r.looked, name === '.' ? undefined : { parent: parent.nodeid, name }), (entry) => then(this.openReply(r.fd, this.table.get(entry.ino), flags, entry.attr.mode), (open): Created => ({ entry, open })));
      return done instanceof Promise ? done.catch(undo) : done;
    } catch (err) {
      return undo(err);
    }
  }

  // ---- FileSystem --------------------------------------------------------------------

  lookup(ctx: RequestContext, parent: number, name: string): Entry | Promise<Entry> {
    // The kernel resolves "." and ".." itself; from anyone else they could climb out.
    if (name === '.' || name === '..') throw new FsError(Errno.EPERM, 'no dot lookups');
    const absent = (err: unknown): Entry => {
      if (this.missing && errnoOf(err) === Errno.ENOENT) return this.missing;
      throw err;
    };
    let e: Entry | Promise<Entry>;
    try {
      e = this.lookupIn(ctx, this.table.get(parent), name, this.missing);
    } catch (err) {
      return absent(err);
    }
    return e instanceof Promise ? e.catch(absent) : e;
  }

  forget(ino: number, nlookup: number): void {
    // An inode remembered as having no backing file is forgotten with it (a backing file
    // in use goes with its last release).
    if (this.table.forget(ino, nlookup) && this.backing.get(ino) === null) this.backing.delete(ino);
  }

  getattr(_ctx: RequestContext, ino: number, fh?: number): AttrReply | Promise<AttrReply> {
    const h = fh !== undefined ? this.handles.get(fh) : undefined;
    const n = h ? h.node : this.table.get(ino);
    const reply = (st: Statx): AttrReply => ({ attr: this.attr(st), timeout: this.timeout });
    let st: Statx | Promise<Statx>;
    if (h) st = this.statFd(h.fd, n);
    else if (n.fd >= 0 && n.dev.local) st = sys.fstatxNow(n.fd); // open, and in memory: no trip at all
    else st = this.table.withFd(n, async (fd) => this.statFd(fd, n));
    return then(st, reply);
  }

  async setattr(ctx: RequestContext, ino: number, s: SetAttr): Promise<AttrReply> {
    this.writable();
    const n = this.table.get(ino);
    const c = this.creds(ctx);
    const h = s.fh !== undefined ? this.handles.get(s.fh) : undefined;
    const sys = this.io(n);
    return this.table.withFd(n, async (fd) => {
      if (s.mode !== undefined) {
        if (n.type === S_IFLNK) fail(Errno.EOPNOTSUPP);
        await sys.fchmodat(c, AT_FDCWD, procPath(fd), s.mode & 0o7777);
      }
      if (s.uid !== undefined || s.gid !== undefined) {
        const uid = s.uid === undefined ? -1 : this.uids.toHost(s.uid);
        const gid = s.gid === undefined ? -1 : this.gids.toHost(s.gid);
        await sys.fchownat(c, fd, '', uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
      }
      if (s.size !== undefined) {
        // Only regular files: through /proc a symlink would lead to its target.
        if (n.type === S_IFDIR) fail(Errno.EISDIR);
        if (n.type !== S_IFREG) fail(Errno.EINVAL);
        if (h) await sys.ftruncate(c, h.fd, s.size);
        else await sys.truncate(c, procPath(fd), s.size);
      }
      if (s.atime !== undefined || s.mtime !== undefined) {
        const a: TimeArg = s.atime ?? 'omit';
        const m: TimeArg = s.mtime ?? 'omit';
        const utimens = (a: TimeArg, m: TimeArg) =>
          n.type === S_IFLNK ? sys.utimensat(c, fd, '', a, m, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) : sys.utimensat(c, AT_FDCWD, procPath(fd), a, m, 0);
        try {
          await utimens(a, m);
        } catch (err) {
          // With writeback caching the kernel keeps the times itself and sends even a
          // UTIME_NOW as the time it took, which only the owner may set: a caller who may
          // write the file (the host checks, as for any UTIME_NOW) gets the host's now.
          if (!this.capabilities.writebackCache || errnoOf(err) !== Errno.EPERM) throw err;
          await utimens(s.atime === undefined ? 'omit' : 'now', s.mtime === undefined ? 'omit' : 'now').catch(() => {
            throw err;
          });
        }
      }
      return { attr: this.attr(await this.statFd(fd)), timeout: this.timeout };
    });
  }

  readlink(_ctx: RequestContext, ino: number): Promise<string> {
    const n = this.table.get(ino);
    return this.table.withFd(n, (fd) => this.io(n).readlinkat(null, fd, ''));
  }

  async symlink(ctx: RequestContext, parent: number, name: string, target: string): Promise<Entry> {
    this.writable();
    const p = this.table.get(parent);
    await this.table.withFd(p, (pfd) => this.io(p).symlinkat(this.creds(ctx), target, pfd, name));
    return this.lookupIn(null, p, name);
  }

  async mknod(ctx: RequestContext, parent: number, name: string, mode: number, rdev: number): Promise<Entry> {
    this.writable();
    const p = this.table.get(parent);
    // fuse_attr rdev is the kernel's new_encode_dev(); mknodat wants glibc's makedev().
    const major = (rdev >>> 8) & 0xfff;
    const minor = (rdev & 0xff) | ((rdev >>> 12) & 0xfff00);
    const dev = (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12);
    await this.table.withFd(p, (pfd) => this.io(p).mknodat(this.creds(ctx), pfd, name, mode, dev, ctx.umask));
    return this.lookupIn(null, p, name);
  }

  async mkdir(ctx: RequestContext, parent: number, name: string, mode: number): Promise<Entry> {
    this.writable();
    const p = this.table.get(parent);
    await this.table.withFd(p, (pfd) => this.io(p).mkdirat(this.creds(ctx), pfd, name, mode, ctx.umask));
    return this.lookupIn(null, p, name);
  }

  unlink(ctx: RequestContext, parent: number, name: string): void | Promise<void> {
    return this.removeIn(ctx, parent, name, 0);
  }

  rmdir(ctx: RequestContext, parent: number, name: string): void | Promise<void> {
    return this.removeIn(ctx, parent, name, AT_REMOVEDIR);
  }

  private removeIn(ctx: RequestContext, parent: number, name: string, flags: number): void | Promise<void> {
    this.writable();
    const p = this.table.get(parent);
    // Held in memory, the directory's descriptor open: at once, with no await in between
    // for an eviction to close the descriptor under us.
    if (p.fd >= 0 && p.dev.memory) {
      this.table.touch(p);
      return sys.unlinkatNow(this.creds(ctx), p.fd, name, flags);
    }
    return this.table
      .withFd(p, (pfd) => this.io(p).unlinkat(this.creds(ctx), pfd, name, flags))
      .then(() => {
        if (p.dev.fuse) this.table.unnamed(p.nodeid, name);
      });
  }

  async rename(ctx: RequestContext, parent: number, name: string, newParent: number, newName: string, flags: number): Promise<void> {
    this.writable();
    const a = this.table.get(parent);
    const b = this.table.get(newParent);
    await this.table.withFd(a, (afd) => this.table.withFd(b, (bfd) => this.io(a, b).renameat2(this.creds(ctx), afd, name, bfd, newName, flags)));
    if (a.dev.fuse || b.dev.fuse) this.table.renamed(parent, name, newParent, newName, (flags & RENAME_EXCHANGE) !== 0);
  }

  async link(ctx: RequestContext, ino: number, newParent: number, newName: string): Promise<Entry> {
    this.writable();
    const n = this.table.get(ino);
    const p = this.table.get(newParent);
    const c = this.creds(ctx);
    const sys = this.io(n, p);
    await this.table.withFd(n, (fd) =>
      this.table.withFd(p, async (pfd) => {
        if (n.type !== S_IFLNK) return sys.linkat(c, AT_FDCWD, procPath(fd), pfd, newName, AT_SYMLINK_FOLLOW);
        // Through /proc a symlink would be followed to its target, which may lie outside the
        // export: link the symlink itself by descriptor (needs our privilege), after checking
        // the caller may write the directory.
        await sys.faccessat(c, AT_FDCWD, procPath(pfd), 3 /* W_OK | X_OK */, 0);
        return sys.linkat(null, fd, '', pfd, newName, AT_EMPTY_PATH);
      }),
    );
    return this.lookupIn(null, p, newName);
  }

  /** Flags for reopening through /proc (whose magic link O_NOFOLLOW would refuse). */
  private openFlags(flags: number): number {
    let f = flags & ~(O_CREAT | O_EXCL | O_NOCTTY | O_NOFOLLOW);
    if (this.capabilities.writebackCache) {
      // With writeback caching the kernel reads pages of files opened write-only, and it
      // places appended data itself: it writes whole dirty pages back at their offsets, which
      // a descriptor opened O_APPEND would move to the end of the file again.
      if ((f & O_ACCMODE) === O_WRONLY) f = (f & ~O_ACCMODE) | O_RDWR;
      f &= ~O_APPEND;
    }
    return f;
  }

  /** `mode`: the file's mode when the caller just learned it (create), saving a statx. */
  private openReply(fd: number, node: PInode, openFlags: number, mode?: number): Opened | Promise<Opened> {
    const fh = this.nextFh++;
    // O_DIRECT I/O waits for the device even with RWF_NOWAIT: always through the pool.
    const direct = (openFlags & O_DIRECT) !== 0;
    // Calls at once only on regular files: a FIFO or a device may wait for a peer however
    // the file system holds it.
    const atOnce = node.type === S_IFREG && !direct;
    const h = newHandle(fd, node);
    h.noNowaitRead = h.noNowaitWrite = direct;
    h.inMemory = atOnce && node.dev.memory;
    if (atOnce && node.dev.local && !node.dev.memory) h.localDisk = node.dev.stalls ??= this.stallBudget();
    this.handles.set(fh, h);
    let flags = 0;
    if (this.cache === 'never' || this.opts.directIo) flags |= FOPEN_DIRECT_IO;
    if (this.cache === 'always') flags |= FOPEN_KEEP_CACHE;
    // The kernel opens a backing file again for each open it serves, as the opener where the
    // file system checks opens itself (FUSE, NFS: not local): a file just created with a mode
    // that denies its creator the access it asked for (git's 0444 objects, opened O_RDWR)
    // would fail there (EIO). Such an open is served by us.
    const reopens = mode === undefined || node.dev.local || ownerGrants(mode, openFlags);
    const reply = (privileged: boolean): Opened => {
      if (privileged) {
        this.share(fh, h, openFlags);
        return { fh, flags: flags | FOPEN_DIRECT_IO };
      }
      const b = this.kernelIo && node.type === S_IFREG && reopens ? this.backingOf(node, fd) : undefined;
      if (b) {
        // The kernel reads and writes this file itself from now on: no round trips through us.
        // Nothing else: its pages are the backing file's, and the kernel fails an open that
        // also asks to keep the cache (FOPEN_KEEP_CACHE) with EIO.
        b.refs++;
        h.backed = true;
        return { fh, flags: FOPEN_PASSTHROUGH, backingId: b.id };
      }
      this.share(fh, h, openFlags);
      return { fh, flags };
    };
    // The kernel writes a backing file with our credentials, which would keep setuid/setgid
    // bits that an unprivileged write must clear: such files are served by us, uncached.
    if (!(this.kernelIo && node.type === S_IFREG && !this.backing.get(node.nodeid))) return reply(false);
    if (mode !== undefined) return reply(hasPrivBits(mode));
    return then(this.statFd(fd, node), (st) => reply(hasPrivBits(st.mode)));
  }

  /**
   * Publishes an open regular file for virtio-fs queue threads, which then serve its READs
   * and WRITEs themselves (what they cannot do at once comes back here).
   */
  private share(fh: number, h: Handle, openFlags: number): void {
    if (h.node.type !== S_IFREG || h.noNowaitRead) return; // O_DIRECT: always the pool
    const acc = openFlags & O_ACCMODE;
    let flags = 0;
    if (acc !== O_WRONLY) flags |= SH_READ;
    if (acc !== O_RDONLY && !this.opts.readOnly) flags |= SH_WRITE;
    if (h.inMemory) flags |= SH_READ_AT_ONCE | SH_WRITE_AT_ONCE;
    if (h.localDisk) flags |= SH_WRITE_AT_ONCE;
    if (!flags) return;
    if (h.node.dev.local) flags |= this.statFlags;
    h.sharedFlags = flags;
    const backedOff = h.localDisk && performance.now() < (h.localDisk.slowUntil ?? 0);
    h.shared = this.sharedHandles.publish(fh, h.fd, backedOff ? flags & ~SH_WRITE_AT_ONCE : flags);
  }

  /**
   * A host device's budget for writes at once (file-io.ts). While it is backed off, the
   * rings' native data path and queue threads write its files at once no more either (they
   * try RWF_NOWAIT, which local disk file systems refuse, and hand the write here).
   */
  private stallBudget(): StallBudget {
    const b: StallBudget = {
      onTrip: () => {
        this.shareWritesAtOnce(b, false);
        const restore = () => {
          const left = (b.slowUntil ?? 0) - performance.now();
          if (left > 0) setTimeout(restore, left).unref();
          else this.shareWritesAtOnce(b, true);
        };
        setTimeout(restore, b.backoffMs).unref();
      },
    };
    return b;
  }

  private shareWritesAtOnce(b: StallBudget, on: boolean): void {
    for (const [fh, h] of this.handles) {
      if (h.localDisk !== b || !h.shared || h.sharedFlags === undefined) continue;
      this.sharedHandles.setFlags(fh, on ? h.sharedFlags : h.sharedFlags & ~SH_WRITE_AT_ONCE);
    }
  }

  /** The backing file of `node`, registered from `fd` (an open of it) if it has none yet; undefined: served by us. */
  private backingOf(node: PInode, fd: number): Backing | undefined {
    let b = this.backing.get(node.nodeid);
    if (b === undefined) {
      try {
        b = { id: this.kernelIo!.open(fd), refs: 0 };
      } catch {
        b = null; // the kernel refused it (a file system it cannot stack on): remembered
      }
      this.backing.set(node.nodeid, b);
    }
    return b ?? undefined;
  }

  /** Drops an open's reference to its inode's backing file, which goes with the last one. */
  private dropBacking(nodeid: number): void {
    const b = this.backing.get(nodeid);
    if (!b || --b.refs > 0) return;
    this.backing.delete(nodeid);
    try {
      this.kernelIo?.close(b.id);
    } catch {
      /* the connection is gone */
    }
  }

  async open(ctx: RequestContext, ino: number, flags: number): Promise<Opened> {
    if ((flags & O_ACCMODE) !== 0 || flags & O_TRUNC) this.writable();
    const n = this.table.get(ino);
    // The kernel never opens a symlink; reopening one through /proc would open its target.
    if (n.type === S_IFLNK) fail(Errno.ELOOP);
    if (n.type === S_IFDIR && (flags & O_ACCMODE) !== 0) fail(Errno.EISDIR);
    // Only files and directories here: opening a FIFO or a device may wait for a peer.
    const io = n.type === S_IFREG || n.type === S_IFDIR ? this.io(n) : sys;
    const c = this.creds(ctx);
    const fd = await this.table.withFd(n, async (pfd) => {
      const f = this.openFlags(flags);
      try {
        return await io.openat(c, AT_FDCWD, procPath(pfd), f);
      } catch (err) {
        if (!this.widened(err, flags, f)) throw err;
        return this.widen(io, await io.openat(c, AT_FDCWD, procPath(pfd), (f & ~O_ACCMODE) | O_WRONLY), f);
      }
    });
    return await this.openReply(fd, n, flags);
  }

  /** The open as `f` failed for want of read access, where the caller asked to write only (see openFlags). */
  private widened(err: unknown, asked: number, f: number): boolean {
    return errnoOf(err) === Errno.EACCES && (asked & O_ACCMODE) === O_WRONLY && (f & O_ACCMODE) === O_RDWR;
  }

  /**
   * A write-only descriptor `fd`, opened as the caller (who may write the file but not read
   * it), reopened read-write as the daemon for the kernel's writeback (it reads the rest of
   * a page it writes in part). Where the daemon may not either, `fd` stays as it is.
   */
  private async widen(io: typeof sysNow, fd: number, f: number): Promise<number> {
    try {
      const wide = await io.openat(null, AT_FDCWD, procPath(fd), f & ~(O_CREAT | O_EXCL | O_TRUNC | O_TMPFILE | O_NOFOLLOW));
      await io.close(fd);
      return wide;
    } catch {
      return fd;
    }
  }

  read(_ctx: RequestContext, _ino: number, fh: number, offset: number, size: number, _info: ReadInfo): Uint8Array | Promise<Uint8Array> {
    const h = this.handle(fh);
    const buf = Buffer.allocUnsafe(size);
    return then(readAt(h.fd, [buf], offset, h), (got) => buf.subarray(0, got));
  }

  /** preadv straight into the destination (guest memory over virtio-fs). */
  readInto(_ctx: RequestContext, _ino: number, fh: number, offset: number, dest: Uint8Array[], _info: ReadInfo): number | Promise<number> {
    const h = this.handle(fh);
    return readAt(h.fd, dest, offset, h);
  }

  write(ctx: RequestContext, ino: number, fh: number, offset: number, data: Uint8Array, info: WriteInfo): number | Promise<number> {
    return this.writeFrom(ctx, ino, fh, offset, [data], info);
  }

  /** pwritev straight from the source (guest memory over virtio-fs). */
  writeFrom(ctx: RequestContext, _ino: number, fh: number, offset: number, src: Uint8Array[], info: WriteInfo): number | Promise<number> {
    this.writable();
    const h = this.handle(fh);
    // An unprivileged writer: write as that user, and the host kernel drops setuid/setgid.
    if (info.writeFlags & FUSE_WRITE_KILL_SUIDGID && this.switchCreds) return sys.pwrite(this.creds(ctx), h.fd, Buffer.concat(src), offset);
    return writeAt(h.fd, src, offset, h);
  }

  statfs(_ctx: RequestContext, ino: number): Promise<StatFs> {
    const n = this.table.get(ino);
    return this.table.withFd(n, (fd) => this.io(n).fstatfs(fd));
  }

  release(_ctx: RequestContext, ino: number, fh: number, info: ReleaseInfo): void | Promise<void> {
    const h = this.handles.get(fh);
    if (!h) return;
    this.handles.delete(fh);
    // No queue thread uses the descriptor after this (or it stays open: see withdraw).
    const closable = !h.shared || this.sharedHandles.withdraw(fh);
    if (info.flockUnlock) this.locks.get(ino)?.releaseOwner(info.lockOwner, 'flock');
    if (h.backed) this.dropBacking(h.node.nodeid);
    if (!closable) return;
    // A file held in memory closes at once (nothing to flush); elsewhere a close may wait.
    if (h.node.dev.memory) return closeNow(h.fd);
    return this.io(h.node).close(h.fd).then(() => undefined);
  }

  async fsync(_ctx: RequestContext, _ino: number, fh: number, datasync: boolean): Promise<void> {
    await syncFile(this.handle(fh).fd, datasync);
  }

  /**
   * Through /proc the name resolves to the inode itself, but for a symlink it would go on
   * to its target: symlinks have no xattrs here (Linux allows no user.* ones on them anyway).
   */
  private async xattrPath<T>(ino: number, onSymlink: number, fn: (path: string, io: typeof sysNow) => Promise<T>): Promise<T> {
    const n = this.table.get(ino);
    if (n.type === S_IFLNK) throw new FsError(onSymlink);
    return this.table.withFd(n, (fd) => fn(procPath(fd), this.io(n)));
  }

  async setxattr(ctx: RequestContext, ino: number, name: string, value: Uint8Array, flags: number): Promise<void> {
    this.writable();
    await this.xattrPath(ino, Errno.EPERM, (p, io) => io.setxattr(this.creds(ctx), p, name, value, flags));
  }

  getxattr(ctx: RequestContext, ino: number, name: string): Promise<Uint8Array> {
    const value = this.xattrPath(ino, Errno.ENODATA, (p, io) => io.getxattr(this.creds(ctx), p, name));
    if (!name.startsWith('system.posix_acl_')) return value;
    // The tenant's kernel asks for ACLs in its permission checks (FUSE_POSIX_ACL), and takes
    // ENOTSUP for an error: a file on a source without ACLs has none, and its mode decides,
    // as the host's own checks there do.
    return value.catch((err: unknown) => {
      throw errnoOf(err) === Errno.EOPNOTSUPP ? new FsError(Errno.ENODATA) : err;
    });
  }

  listxattr(ctx: RequestContext, ino: number): Promise<string[]> {
    const n = this.table.get(ino);
    if (n.type === S_IFLNK) return Promise.resolve([]);
    return this.xattrPath(ino, Errno.ENODATA, (p, io) => io.listxattr(this.creds(ctx), p));
  }

  async removexattr(ctx: RequestContext, ino: number, name: string): Promise<void> {
    this.writable();
    await this.xattrPath(ino, Errno.ENODATA, (p, io) => io.removexattr(this.creds(ctx), p, name));
  }

  async opendir(ctx: RequestContext, ino: number, flags: number): Promise<Opened> {
    const n = this.table.get(ino);
    if (n.type !== S_IFDIR) fail(Errno.ENOTDIR);
    const fd = await this.table.withFd(n, (pfd) =>
      this.io(n).openat(this.creds(ctx), AT_FDCWD, procPath(pfd), (this.openFlags(flags) & ~O_ACCMODE) | O_DIRECTORY | O_NONBLOCK),
    );
    const fh = this.nextFh++;
    const h = newHandle(fd, n);
    h.dirQueue = Promise.resolve();
    h.cookies = [];
    this.handles.set(fh, h);
    return { fh, flags: this.cache === 'always' ? 0b1000 /* FOPEN_CACHE_DIR */ : 0 };
  }

  readdir(_ctx: RequestContext, _ino: number, fh: number, offset: number, sink: DirSink): Promise<void> {
    const h = this.handle(fh);
    // One getdents at a time per handle: it reads and moves the descriptor's position.
    const cookies = h.cookies!;
    const run = async () => {
      if (offset > cookies.length) throw new FsError(Errno.EINVAL, 'unknown directory offset');
      let hostOff = offset === 0 ? 0n : cookies[offset - 1]!;
      let cookie = offset;
      for (;;) {
        const entries = await this.io(h.node).getdents(h.fd, hostOff, 32 * 1024);
        if (entries.length === 0) return;
        for (const e of entries) {
          // Reuse the cookie when the kernel re-reads a stretch it has seen.
          const next = cookies[cookie] === e.off ? cookie + 1 : (cookies.length = cookie, cookies.push(e.off));
          if (!sink.add({ name: e.name, ino: e.ino, type: e.type, offset: next })) return;
          cookie = next;
          hostOff = e.off;
        }
      }
    };
    const p = h.dirQueue!.then(run, run);
    h.dirQueue = p.catch(() => undefined);
    return p;
  }

  async releasedir(_ctx: RequestContext, _ino: number, fh: number): Promise<void> {
    const h = this.handles.get(fh);
    if (!h) return;
    this.handles.delete(fh);
    await h.dirQueue;
    await this.io(h.node).close(h.fd);
  }

  async fsyncdir(_ctx: RequestContext, _ino: number, fh: number, datasync: boolean): Promise<void> {
    await syncFile(this.handle(fh).fd, datasync);
  }

  private fileLocks(ino: number): FileLocks {
    let l = this.locks.get(ino);
    if (!l) this.locks.set(ino, (l = new FileLocks()));
    return l;
  }

  getlk(_ctx: RequestContext, ino: number, _fh: number, owner: bigint, lock: FileLock): FileLock {
    return this.fileLocks(ino).test(owner, lock);
  }

  async setlk(ctx: RequestContext, ino: number, _fh: number, req: LockRequest): Promise<void> {
    const l = this.fileLocks(ino);
    await l.set(req.owner, req.lock, { sleep: req.sleep, flock: req.flock, signal: ctx.signal });
    if (l.empty) this.locks.delete(ino);
  }

  async access(ctx: RequestContext, ino: number, mask: number): Promise<void> {
    const n = this.table.get(ino);
    if (n.type === S_IFLNK) return; // symlinks carry no permissions (and /proc would follow)
    await this.table.withFd(n, (fd) => this.io(n).faccessat(this.creds(ctx), AT_FDCWD, procPath(fd), mask, 0));
  }

  create(ctx: RequestContext, parent: number, name: string, mode: number, flags: number): Created | Promise<Created> {
    this.writable();
    const p = this.table.get(parent);
    return this.createIn(ctx, p, name, this.openFlags(flags) | O_CREAT | O_NOFOLLOW, mode, flags);
  }

  async tmpfile(ctx: RequestContext, parent: number, mode: number, flags: number): Promise<Created> {
    this.writable();
    const p = this.table.get(parent);
    return this.createIn(ctx, p, '.', (this.openFlags(flags) & ~O_DIRECTORY) | O_TMPFILE, mode, flags);
  }

  async fallocate(ctx: RequestContext, _ino: number, fh: number, offset: number, length: number, mode: number): Promise<void> {
    this.writable();
    await sys.fallocate(this.creds(ctx), this.handle(fh).fd, mode, offset, length);
  }

  lseek(_ctx: RequestContext, _ino: number, fh: number, offset: number, whence: number): Promise<number> {
    // Under writeback caching the host file lacks what the kernel has not written back yet
    // (a SEEK_HOLE past the host's end fails ENXIO): ENOSYS makes the kernel answer SEEK_DATA
    // and SEEK_HOLE itself from its own size, a file without holes.
    if (this.capabilities.writebackCache) throw new FsError(Errno.ENOSYS);
    const h = this.handle(fh);
    return this.io(h.node).lseek(h.fd, offset, whence);
  }

  copyFileRange(
    ctx: RequestContext,
    src: { ino: number; fh: number; offset: number },
    dst: { ino: number; fh: number; offset: number },
    length: number,
    flags: number,
  ): Promise<number> {
    this.writable();
    return sys.copyFileRange(this.creds(ctx), this.handle(src.fh).fd, src.offset, this.handle(dst.fh).fd, dst.offset, length, flags);
  }

  async syncfs(): Promise<void> {
    await this.table.withFd(this.table.get(1), (fd) => sys.syncfs(fd));
  }

  async destroy(): Promise<void> {
    for (const [fh, h] of this.handles) {
      if (h.shared && !this.sharedHandles.withdraw(fh)) continue;
      await sys.close(h.fd).catch(() => undefined);
    }
    this.handles.clear();
  }
}

/** setuid, or setgid with group execute: what an unprivileged write must clear. */
function hasPrivBits(mode: number): boolean {
  return (mode & S_ISUID) !== 0 || (mode & (S_ISGID | 0o010)) === (S_ISGID | 0o010);
}

/** File systems held wholly in memory (statfs f_type). */
const MEMORY_FS_TYPES = new Set([
  0x01021994, // tmpfs
  0x858458f6, // ramfs
]);

/** Whether mode's owner bits grant the access `openFlags` asks for. */
function ownerGrants(mode: number, openFlags: number): boolean {
  const acc = openFlags & O_ACCMODE;
  return (acc === O_WRONLY || (mode & 0o400) !== 0) && (acc === O_RDONLY || (mode & 0o200) !== 0);
}

/** renameat2's flag (api.ts). */
const RENAME_EXCHANGE = 2;

/**
 * FUSE (statfs f_type): a path-based server (bindfs, sshfs: libfuse's high-level API) gives
 * each name of a hard-linked file a kernel inode of its own, which dies with its name; and
 * without export support a handle opens an inode only while the kernel has it cached.
 */
const FUSE_FS_TYPE = 0x65735546;

/** File systems whose inode attributes and cached dentries are in memory (statfs f_type). */
const LOCAL_FS_TYPES = new Set([
  0xef53, // ext2/3/4
  0x58465342, // xfs
  0x9123683e, // btrfs
  0xf2f52010, // f2fs
  ...MEMORY_FS_TYPES,
]);


