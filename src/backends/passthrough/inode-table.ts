/**
 * The passthrough's inodes: one per host inode (by device and inode number), each known
 * by a kernel file handle so that it can be reopened at any time. O_PATH descriptors are
 * only a cache (LRU, bounded): a tree with millions of inodes needs no more than
 * `maxFds` descriptors. File systems that cannot make handles pin their descriptor
 * instead, up to `maxPinned`. Reopening needs a real (not O_PATH) descriptor of the
 * mount: one per mount, opened on its first directory seen.
 *
 * Every use of a descriptor goes through `withFd`, which holds a reference so an eviction
 * can never close (and so recycle the number of) a descriptor an operation is using.
 */
import { Errno, FsError, errnoOf } from '../../fuse/errno.js';
import { AT_FDCWD, type FileHandle, O_DIRECTORY, O_NONBLOCK, O_PATH, type Statx, closeNow, procPath, sys } from '../../native/syscalls.js';
import { S_IFDIR } from '../../util/mode.js';
import type { StallBudget } from './file-io.js';
import { SH_LOOKUP_AT_ONCE, SH_UNLINK_AT_ONCE, type SharedHandles } from '../../fs/shared-handles.js';
import { SharedNames } from '../../fs/shared-names.js';
import { type LruLinks, LruList } from '../../util/lru-list.js';

export interface PInode extends LruLinks<PInode> {
  nodeid: number;
  /** `${dev}:${ino}` on the host. */
  key: string;
  /** The host inode number. */
  ino: number;
  /** S_IFMT bits. */
  type: number;
  handle?: FileHandle;
  fd: number;
  users: number;
  nlookup: number;
  /** Never evicted: the root, and inodes that cannot be reopened (no handle, or no mount descriptor). */
  pinned: boolean;
  /** Forgotten while in use: close the descriptor when the last user is done. */
  dead?: boolean;
  /** The host device it lives on (shared by all its inodes). */
  dev: HostDevice;
  /**
   * A non-directory on a FUSE device (see HostDevice): the names it was looked up by, each with the
   * descriptor that lookup opened, latest first; `fd` is the first one's.
   */
  aliases: Alias[] | undefined;
  /** Descriptors of names gone while the inode was in use: closed when the last user is done. */
  retired: number[] | undefined;
  /** On a FUSE device (see HostDevice), the last name it was looked up by. */
  name: Via | undefined;
}

/** An inode's identity on the host: device and inode number. */
export function hostKey(st: Statx): string {
  return `${st.devMajor}:${st.devMinor}:${st.ino}`;
}

/** A name (in the directory with node id `parent`) and the descriptor it gave; parent 0: none known. */
export interface Alias {
  parent: number;
  name: string;
  fd: number;
}

/** Where a lookup found an inode. */
export interface Via {
  parent: number;
  name: string;
}

/** Names with a descriptor each, kept per inode where the device aliases. */
const MAX_ALIASES = 8;

const nameKey = (parent: number, name: string) => `${parent}/${name}`;

/**
 * Whether the host inode known as `n` was freed and its number given to the one whose handle
 * is `handle`. Never while `n`'s descriptor is open (that holds the inode); otherwise the
 * handles tell (they carry a generation number that reuse changes).
 */
function reused(n: PInode, handle: FileHandle | undefined): boolean {
  return n.fd < 0 && handle !== undefined && n.handle !== undefined && (handle.mountId !== n.handle.mountId || !handle.handle.equals(n.handle.handle));
}

/**
 * A new inode, every field set (the LRU's links and `dead` too): all of them share one shape,
 * so the code that handles them stays monomorphic (a field added later would give V8 a new
 * hidden class, and the hot paths optimised for the first would be thrown away).
 */
function node(nodeid: number, key: string, ino: number, type: number, handle: FileHandle | undefined, fd: number, pinned: boolean, dev: HostDevice): PInode {
  return { nodeid, key, ino, type, handle, fd, users: 0, nlookup: 0, pinned, dead: false, dev, aliases: undefined, retired: undefined, name: undefined, lruPrev: undefined, lruNext: undefined, inLru: false };
}

export interface HostDevice {
  major: number;
  minor: number;
  /** A local file system: its attributes and cached dentries are read without waiting for I/O. */
  local: boolean;
  /** Held wholly in memory (tmpfs, ramfs): no metadata call there waits for a device. */
  memory: boolean;
  /**
   * A FUSE file system, where names matter twice over. One host inode may be open as several
   * kernel inodes, one per name, each of which stops working when its name goes (path-based
   * servers), though the inode lives on under its other names: a file keeps a descriptor per
   * name (PInode.aliases). And a handle opens an inode only while the file system still has
   * it cached (without export support): an inode whose descriptor was evicted is reopened by
   * its last name (PInode.name).
   */
  fuse: boolean;
  /** How much writes at once have stalled the event loop lately (local disk file systems). */
  stalls?: StallBudget;
}

export interface InodeTableOptions {
  maxFds: number;
  maxPinned: number;
  /**
   * Where inodes on local file systems are published with their open descriptor, and with
   * which flags, so that GETATTR can be answered off the rings (see SharedHandles); the
   * table withdraws an inode before it closes the descriptor. `names`: where inodes on file
   * systems held in memory are published by host identity, so that a LOOKUP leading to one
   * can be answered off the session (see SharedNames). `unlinks`: directories held in memory
   * are published for removals too (SH_UNLINK_AT_ONCE).
   */
  shared?: { table: SharedHandles; flags: number; names?: SharedNames; unlinks?: boolean };
}

export class InodeTable {
  private readonly byNode = new Map<number, PInode>();
  private readonly byKey = new Map<string, PInode>();
  /** Inodes with aliases, by `${parent}/${name}` of each. */
  private readonly byName = new Map<string, PInode>();
  /** Inodes on FUSE devices, by their last name. */
  private readonly byLastName = new Map<string, PInode>();
  /** Inodes whose fd is open and may be closed, least recently used first. */
  private readonly lru = new LruList<PInode>();
  /** Per mount id, a descriptor for open_by_handle_at (which refuses O_PATH ones). */
  private readonly mountFds = new Map<number, number>();
  private nextNode = 2;
  private pinnedCount = 0;
  openFds = 0;

  constructor(private readonly opts: InodeTableOptions) {}

  get size(): number {
    return this.byNode.size;
  }

  get(nodeid: number): PInode {
    const n = this.byNode.get(nodeid);
    if (!n) throw new FsError(Errno.ESTALE, `unknown inode ${nodeid}`);
    return n;
  }

  find(key: string): PInode | undefined {
    return this.byKey.get(key);
  }

  /** Registers the root (pinned: its descriptor stays open). */
  async addRoot(fd: number, key: string, ino: number, type: number, handle: FileHandle | undefined, dev: HostDevice): Promise<PInode> {
    const root = node(1, key, ino, type, handle, fd, true, dev);
    root.nlookup = 1;
    if (handle) await this.mountFdFor(fd, type, handle.mountId);
    this.byNode.set(1, root);
    this.byKey.set(key, root);
    this.openFds++;
    this.publish(root);
    return root;
  }

  /**
   * Adds a freshly looked-up host inode whose O_PATH descriptor is `fd` (ownership passes
   * to the table), found by name `via` if given, or returns the existing one, which keeps
   * `fd` where it has none open (saving a reopen) or as the descriptor of name `via` on a
   * FUSE device (see HostDevice); else `fd` is closed.
   */
  add(fd: number, key: string, ino: number, type: number, handle: FileHandle | undefined, dev: HostDevice, via?: Via): PInode | Promise<PInode> {
    const existing = this.byKey.get(key);
    if (existing) {
      if (!reused(existing, handle)) {
        if (via && existing.dev.fuse) this.setName(existing, via);
        if (existing.fd < 0) this.adopt(existing, fd, via);
        else if (via && aliased(existing)) this.alias(existing, via, fd);
        else closeNow(fd);
        return existing;
      }
      this.supersede(existing);
    }
    // An inode on a mount not seen before: reopened by handle only once that mount has a descriptor.
    if (handle && !this.mountFds.has(handle.mountId)) {
      return this.mountFdFor(fd, type, handle.mountId).then(() => {
        const raced = this.byKey.get(key);
        if (!raced) return this.insert(fd, key, ino, type, handle, dev, via);
        closeNow(fd);
        return raced;
      });
    }
    return this.insert(fd, key, ino, type, handle, dev, via);
  }

  /** Gives `n`, whose descriptor was closed, the fresh descriptor `fd` of its inode (found by `via`). */
  private adopt(n: PInode, fd: number, via: Via | undefined): void {
    n.fd = fd;
    this.openFds++;
    if (via && aliased(n)) this.firstAlias(n, via);
    if (!n.pinned) this.lru.use(n);
    this.publish(n);
    this.trim();
  }

  private firstAlias(n: PInode, via: Via): void {
    n.aliases = [{ parent: via.parent, name: via.name, fd: n.fd }];
    this.byName.set(nameKey(via.parent, via.name), n);
  }

  /** `fd` is `n`'s descriptor by name `via`, which becomes the one `n` uses. */
  private alias(n: PInode, via: Via, fd: number): void {
    const list = (n.aliases ??= [{ parent: 0, name: '', fd: n.fd }]);
    const i = list.findIndex((a) => a.parent === via.parent && a.name === via.name);
    if (i >= 0) {
      // The name's fresh descriptor, in case the file was relinked there behind our back.
      const [a] = list.splice(i, 1);
      this.retire(n, a!.fd);
      a!.fd = fd;
      list.unshift(a!);
    } else {
      list.unshift({ parent: via.parent, name: via.name, fd });
      this.openFds++;
      this.byName.set(nameKey(via.parent, via.name), n);
      // Past the descriptor budget a name's descriptor takes the place of the oldest.
      if (list.length > MAX_ALIASES || this.openFds > this.opts.maxFds) this.unalias(n, list.length - 1);
    }
    n.fd = list[0]!.fd;
  }

  /** Drops `n`'s alias `i` (not its only one), closing its descriptor once nobody can be using it. */
  private unalias(n: PInode, i: number): void {
    const list = n.aliases!;
    const [a] = list.splice(i, 1);
    const k = nameKey(a!.parent, a!.name);
    if (this.byName.get(k) === n) this.byName.delete(k);
    this.openFds--;
    this.retire(n, a!.fd);
    n.fd = list[0]!.fd;
  }

  /** Closes `fd`, one of `n`'s, once no operation can be using it. */
  private retire(n: PInode, fd: number): void {
    if (n.users > 0) (n.retired ??= []).push(fd);
    else closeNow(fd);
  }

  /**
   * Name `name` in `parent` is gone (unlinked, or replaced by a rename): where it was one of
   * an inode's aliases, the inode goes on with its others (its last stays, nameless).
   */
  unnamed(parent: number, name: string): void {
    const last = this.byLastName.get(nameKey(parent, name));
    if (last) this.clearName(last);
    const n = this.byName.get(nameKey(parent, name));
    const i = n?.aliases?.findIndex((a) => a.parent === parent && a.name === name) ?? -1;
    if (i < 0) return;
    if (n!.aliases!.length > 1) {
      this.unalias(n!, i);
      const other = n!.aliases![0]!;
      if (n!.dev.fuse && other.parent !== 0) this.setName(n!, other);
      return;
    }
    this.byName.delete(nameKey(parent, name));
    n!.aliases![0] = { parent: 0, name: '', fd: n!.fd };
  }

  private setName(n: PInode, via: Via): void {
    this.clearName(n);
    n.name = { parent: via.parent, name: via.name };
    this.byLastName.set(nameKey(via.parent, via.name), n);
  }

  private clearName(n: PInode): void {
    if (!n.name) return;
    const k = nameKey(n.name.parent, n.name.name);
    if (this.byLastName.get(k) === n) this.byLastName.delete(k);
    n.name = undefined;
  }

  /** A rename (`exchange`: RENAME_EXCHANGE) moved names: aliases follow them. */
  renamed(parent: number, name: string, newParent: number, newName: string, exchange: boolean): void {
    const from = nameKey(parent, name);
    const to = nameKey(newParent, newName);
    const a = this.byName.get(from);
    const b = this.byName.get(to);
    const lastA = this.byLastName.get(from);
    const lastB = exchange ? this.byLastName.get(to) : undefined;
    if (!exchange) this.unnamed(newParent, newName);
    if (lastA) this.setName(lastA, { parent: newParent, name: newName });
    if (lastB) this.setName(lastB, { parent, name });
    const move = (n: PInode | undefined, p: number, nm: string, np: number, nn: string) => {
      const e = n?.aliases?.find((x) => x.parent === p && x.name === nm);
      if (!e) return;
      e.parent = np;
      e.name = nn;
      this.byName.set(nameKey(np, nn), n!);
    };
    if (a && this.byName.get(from) === a) this.byName.delete(from);
    if (exchange && b && this.byName.get(to) === b) this.byName.delete(to);
    move(a, parent, name, newParent, newName);
    if (exchange) move(b, newParent, newName, parent, name);
  }

  /**
   * `n`'s host inode is gone and its number belongs to another now: `n` stays until the
   * kernel forgets it (its node id leads to ESTALE), but its key leads to the new inode.
   */
  private supersede(n: PInode): void {
    this.byKey.delete(n.key);
    const names = this.opts.shared?.names;
    if (names && n.dev.memory) {
      n.nlookup += names.take(n.ino, n.nodeid);
      names.withdraw(n.ino, n.nodeid);
    }
  }

  private insert(fd: number, key: string, ino: number, type: number, handle: FileHandle | undefined, dev: HostDevice, via: Via | undefined): PInode {
    const pinned = !handle || !this.mountFds.has(handle.mountId);
    if (pinned && this.pinnedCount >= this.opts.maxPinned) {
      closeNow(fd);
      throw new FsError(Errno.ENFILE, 'too many inodes that cannot be reopened');
    }
    const n = node(this.nextNode++, key, ino, type, handle, fd, pinned, dev);
    if (pinned) this.pinnedCount++;
    else this.lru.use(n);
    this.openFds++;
    this.byNode.set(n.nodeid, n);
    this.byKey.set(key, n);
    if (via && aliased(n)) this.firstAlias(n, via);
    if (via && dev.fuse) this.setName(n, via);
    this.publish(n);
    if (dev.memory) this.opts.shared?.names?.publish(ino, SharedNames.deviceWord(dev.major, dev.minor), n.nodeid);
    this.trim();
    return n;
  }

  /** Opens the descriptor of mount `mountId` from a directory on it (others cannot serve: a FIFO would block). */
  private async mountFdFor(fd: number, type: number, mountId: number): Promise<void> {
    if (type !== S_IFDIR) return;
    let mfd: number;
    try {
      mfd = await sys.openat(null, AT_FDCWD, procPath(fd), O_DIRECTORY | O_NONBLOCK);
    } catch {
      return; // unreadable: its inodes stay pinned
    }
    if (this.mountFds.has(mountId)) closeNow(mfd);
    else {
      this.mountFds.set(mountId, mfd);
      this.openFds++;
    }
  }

  /** Runs `fn` with an open O_PATH descriptor of `n`, reopening it from its handle if needed. */
  async withFd<T>(n: PInode, fn: (fd: number) => Promise<T>): Promise<T> {
    n.users++;
    try {
      if (n.fd < 0) {
        const fd = await this.reopen(n);
        if (n.fd >= 0) closeNow(fd); // reopened concurrently
        else {
          n.fd = fd;
          this.openFds++;
          if (!n.dead) this.publish(n);
          if (n.name && aliased(n)) this.firstAlias(n, n.name);
        }
      }
      if (!n.pinned) this.lru.use(n);
      return n.aliases ? await this.viaAliases(n, fn) : await fn(n.fd);
    } catch (err) {
      if (errnoOf(err) === Errno.ESTALE) throw new FsError(Errno.ESTALE);
      throw err;
    } finally {
      n.users--;
      if (n.retired && n.users === 0) {
        for (const fd of n.retired) closeNow(fd);
        n.retired = undefined;
      }
      if (n.dead && n.users === 0 && n.fd >= 0) this.closeFd(n);
      else if (this.openFds > this.opts.maxFds) this.trim();
    }
  }

  /**
   * `fn` with `n`'s descriptor, and where that answers ENOENT (its name went on the host,
   * out of our sight), with the descriptors of its other names in turn, each dropped as it
   * fails. Safe to repeat: a dead name fails before the call does anything.
   */
  private async viaAliases<T>(n: PInode, fn: (fd: number) => Promise<T>): Promise<T> {
    for (;;) {
      const fd = n.fd;
      try {
        return await fn(fd);
      } catch (err) {
        const i = errnoOf(err) === Errno.ENOENT && n.aliases && n.aliases.length > 1 ? n.aliases.findIndex((a) => a.fd === fd) : -1;
        if (i < 0) throw err;
        this.unalias(n, i);
      }
    }
  }

  /** A descriptor of `n`, whose own was evicted: by its handle, or by its last name on a FUSE device. */
  private async reopen(n: PInode): Promise<number> {
    const mountFd = n.handle && this.mountFds.get(n.handle.mountId);
    if (n.handle && mountFd !== undefined) {
      try {
        return await sys.openByHandleAt(mountFd, n.handle.handle, O_PATH);
      } catch (err) {
        if (errnoOf(err) !== Errno.ESTALE || !n.name) throw err;
      }
    }
    const via = n.name;
    const parent = via && this.byNode.get(via.parent);
    if (!via || !parent) throw new FsError(Errno.ESTALE);
    // One component relative to the parent's descriptor, as any lookup: confined the same way.
    const l = await this.withFd(parent, (pfd) => sys.lookup(null, pfd, via.name));
    if (hostKey(l.st) === n.key) return l.fd;
    closeNow(l.fd);
    throw new FsError(Errno.ESTALE);
  }

  /** Marks `n` used (a call made with its open descriptor without withFd, at once). */
  touch(n: PInode): void {
    if (!n.pinned && n.fd >= 0) this.lru.use(n);
  }

  /** Closes least recently used descriptors nobody is using until under the bound. */
  private trim(): void {
    for (const n of this.lru.oldestFirst()) {
      if (this.openFds <= this.opts.maxFds) return;
      if (n.users > 0 || n.fd < 0) continue;
      this.lru.remove(n);
      this.closeFd(n);
    }
  }

  private publish(n: PInode): void {
    if (!this.opts.shared || !n.dev.local) return;
    const names = n.type === S_IFDIR && n.dev.memory ? SH_LOOKUP_AT_ONCE | (this.opts.shared.unlinks ? SH_UNLINK_AT_ONCE : 0) : 0;
    this.opts.shared.table.publish(n.nodeid, n.fd, this.opts.shared.flags | names);
  }

  /** Drops kernel references; forgets the inode (and closes its descriptor) at zero. Returns whether it is gone. */
  forget(nodeid: number, nlookup: number): boolean {
    const n = this.byNode.get(nodeid);
    if (!n || nodeid === 1) return false;
    const names = this.opts.shared?.names;
    // The kernel counts the lookups answered off the session too (on this thread, between
    // requests: none can come in between the take and the withdraw below).
    if (names) n.nlookup += names.take(n.ino, nodeid);
    n.nlookup -= nlookup;
    if (n.nlookup > 0) return false;
    names?.withdraw(n.ino, nodeid);
    this.byNode.delete(nodeid);
    if (this.byKey.get(n.key) === n) this.byKey.delete(n.key);
    for (const a of n.aliases ?? []) if (this.byName.get(nameKey(a.parent, a.name)) === n) this.byName.delete(nameKey(a.parent, a.name));
    this.clearName(n);
    this.lru.remove(n);
    if (n.pinned) this.pinnedCount--;
    n.dead = true;
    if (n.fd >= 0 && n.users === 0) this.closeFd(n);
    return true;
  }

  /** Closes n's descriptor, once no other thread can be using it (else it stays open, unnamed). */
  private closeFd(n: PInode): void {
    const fd = n.fd;
    n.fd = -1;
    this.openFds--;
    if (n.aliases) {
      // Reopened by handle, if at all: one descriptor then, and no names.
      for (const a of n.aliases) {
        if (this.byName.get(nameKey(a.parent, a.name)) === n) this.byName.delete(nameKey(a.parent, a.name));
        if (a.fd === fd) continue;
        closeNow(a.fd);
        this.openFds--;
      }
      n.aliases = undefined;
    }
    if (!this.opts.shared || this.opts.shared.table.withdraw(n.nodeid)) closeNow(fd);
  }
}

/** Whether `n` keeps a descriptor per name: a non-directory on a FUSE device (directories have one name). */
function aliased(n: PInode): boolean {
  return n.dev.fuse && n.type !== S_IFDIR;
}
