/**
 * One handler per opcode: turns decoded arguments into a FileSystem call and the
 * call's result into reply bytes. Handlers throw FsError for errno answers.
 */
import type { AttrReply, Created, DirEntry, DirSink, Entry, FileLock, FileSystem, InitInfo, RequestContext, SetAttr } from '../fs/api.js';
import { Errno, FsError } from './errno.js';
import * as O from './opcodes.js';
import { Opcode, SIZE } from './opcodes.js';
import type { InHeader } from './request-codec.js';
import type { FileLockWire, ForgetOne } from './request-specs.js';
import {
  direntSize,
  writeAttrOut,
  writeDirent,
  writeEntryOut,
  writeFileLock,
  writeOpenOut,
  writeStatfsOut,
  writeStatxOut,
} from './reply-codec.js';
import type { ReplyTarget, Session } from './session.js';
import { Writer } from './wire.js';
import { iovUpTo } from '../util/iov.js';
import { then } from '../util/maybe-async.js';

export interface OpContext {
  fs: FileSystem;
  header: InHeader;
  args: Record<string, unknown>;
  info: InitInfo;
  ctx: RequestContext;
  session: Session;
  /** Where READ data may be written in place, when the transport offers it. */
  target?: ReplyTarget;
}

/** Largest READ/READDIR/GETXATTR size honoured; the kernel never asks for more than max_pages. */
const MAX_REPLY_SIZE = 32 * 1024 * 1024;
const NAME_MAX = 255;
const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Throws ENOSYS unless the backend implements `name`. */
function has<K extends keyof FileSystem>(fs: FileSystem, name: K): void {
  if (typeof fs[name] !== 'function') throw new FsError(Errno.ENOSYS);
}

function method<K extends keyof FileSystem>(fs: FileSystem, name: K): NonNullable<FileSystem[K]> {
  has(fs, name);
  return (fs[name] as (...a: unknown[]) => unknown).bind(fs) as NonNullable<FileSystem[K]>;
}

/** Validates and decodes a path component. */
export function decodeName(bytes: Uint8Array, allowDots = true): string {
  if (bytes.length === 0) throw new FsError(Errno.EINVAL, 'empty name');
  if (bytes.length > NAME_MAX) throw new FsError(Errno.ENAMETOOLONG);
  if (bytes.includes(0x2f)) throw new FsError(Errno.EINVAL, 'name contains "/"');
  let name: string;
  try {
    name = utf8.decode(bytes);
  } catch {
    throw new FsError(Errno.EILSEQ, 'name is not valid UTF-8');
  }
  if (!allowDots && (name === '.' || name === '..')) throw new FsError(Errno.EINVAL);
  return name;
}

function decodeText(bytes: Uint8Array, what: string): string {
  try {
    return utf8.decode(bytes);
  } catch {
    throw new FsError(Errno.EILSEQ, `${what} is not valid UTF-8`);
  }
}

function checkSize(size: number): void {
  if (size > MAX_REPLY_SIZE) throw new FsError(Errno.EINVAL, `request size ${size} too large`);
}

function entry(e: Entry): Uint8Array[] {
  const w = new Writer(SIZE.entry_out);
  writeEntryOut(w, e);
  return [w.finish()];
}

function fromWireLock(lk: FileLockWire): FileLock {
  return { start: lk.start, end: lk.end >= 2 ** 53 ? Infinity : lk.end, type: lk.type, pid: lk.pid };
}

function u32(v: number): Uint8Array[] {
  return [new Writer(8).u32(v).u32(0).finish()];
}

function u64(v: number): Uint8Array[] {
  return [new Writer(8).u64(v).finish()];
}

class WireDirSink implements DirSink {
  readonly w: Writer;
  constructor(
    private readonly size: number,
    readonly plus: boolean,
  ) {
    this.w = new Writer(Math.min(size, 64 * 1024));
  }
  add(e: DirEntry, plusEntry?: Entry): boolean {
    const name = Buffer.from(e.name, 'utf8');
    if (name.length === 0 || name.length > NAME_MAX) throw new FsError(Errno.EIO, `backend returned a bad directory entry name`);
    if (!(e.offset > 0)) throw new FsError(Errno.EIO, 'backend returned a directory entry without an offset');
    if (this.w.length + direntSize(name.length, this.plus) > this.size) return false;
    if (this.plus) {
      if (plusEntry) {
        writeEntryOut(this.w, plusEntry);
      } else {
        this.w.zeros(SIZE.entry_out);
      }
    }
    writeDirent(this.w, e.ino, e.offset, e.type, name);
    return true;
  }
}

/** A reply body, the bytes a backend placed in the transport's buffers itself, or nothing. */
export type OpResult = Uint8Array[] | { placed: number } | void;

/** The reply to CREATE and TMPFILE: the new file's entry and its open. */
function created(r: Created): Uint8Array[] {
  const w = new Writer(SIZE.entry_out + SIZE.open_out);
  writeEntryOut(w, r.entry);
  writeOpenOut(w, r.open.fh, r.open.flags ?? 0, r.open.backingId);
  return [w.finish()];
}

function attrOut(r: AttrReply): Uint8Array[] {
  const w = new Writer(SIZE.attr_out);
  writeAttrOut(w, r.attr, r.timeout);
  return [w.finish()];
}

/**
 * Runs one request against the backend. The requests that dominate a busy device (LOOKUP,
 * FORGET, GETATTR, READ, WRITE, CREATE, UNLINK, RMDIR, RELEASE) finish at once when the
 * backend answered at once, with no trip through the microtask queue; a backend's promise,
 * or any other opcode, gives a promise.
 * A backend's synchronous throw is thrown here.
 */
export function runOp(op: Opcode, o: OpContext): OpResult | Promise<OpResult> {
  const { fs, ctx, args: a, header: h } = o;
  const ino = h.nodeid;
  switch (op) {
    case Opcode.FUSE_LOOKUP:
      has(fs, 'lookup');
      return then(fs.lookup!(ctx, ino, decodeName(a.name as Uint8Array)), entry);
    case Opcode.FUSE_FORGET:
      return fs.forget ? then(fs.forget(ino, a.nlookup as number), () => undefined) : undefined;
    case Opcode.FUSE_GETATTR: {
      has(fs, 'getattr');
      const fh = (a.getattr_flags as number) & O.FUSE_GETATTR_FH ? (a.fh as number) : undefined;
      return then(fs.getattr!(ctx, ino, fh), attrOut);
    }
    case Opcode.FUSE_READ: {
      const size = a.size as number;
      checkSize(size);
      const lockOwner = (a.read_flags as number) & O.FUSE_READ_LOCKOWNER ? (a.lock_owner as bigint) : undefined;
      const info = { flags: a.flags as number, lockOwner };
      if (o.target && fs.readInto) {
        // Straight into the transport's buffers (guest memory): no copy on our side.
        const dest = iovUpTo(o.target.payload, size);
        let room = 0;
        for (const d of dest) room += d.length;
        if (room >= size) return then(fs.readInto(ctx, ino, a.fh as number, a.offset as number, dest, info), (n) => ({ placed: Math.min(size, n) }));
      }
      has(fs, 'read');
      return then(fs.read!(ctx, ino, a.fh as number, a.offset as number, size, info), (data) => (Array.isArray(data) ? iovUpTo(data, size) : [data.length > size ? data.subarray(0, size) : data]));
    }
    case Opcode.FUSE_WRITE: {
      const wf = a.write_flags as number;
      const info = { flags: a.flags as number, writeFlags: wf, lockOwner: wf & O.FUSE_WRITE_LOCKOWNER ? (a.lock_owner as bigint) : undefined };
      const src = o.target?.writeSrc;
      const size = a.size as number;
      const done = (n: number) => u32(Math.min(n, size));
      // Data held in place by the transport (guest memory): straight from there where the backend can.
      if (src && fs.writeFrom) return then(fs.writeFrom(ctx, ino, a.fh as number, a.offset as number, src, info), done);
      has(fs, 'write');
      return then(fs.write!(ctx, ino, a.fh as number, a.offset as number, src ? Buffer.concat(src) : (a.data as Uint8Array), info), done);
    }
    case Opcode.FUSE_CREATE:
      return then(method(fs, 'create')(ctx, ino, decodeName(a.name as Uint8Array, false), a.mode as number, a.flags as number), created);
    case Opcode.FUSE_UNLINK:
    case Opcode.FUSE_RMDIR:
      return then(method(fs, op === Opcode.FUSE_UNLINK ? 'unlink' : 'rmdir')(ctx, ino, decodeName(a.name as Uint8Array)), () => undefined);
    case Opcode.FUSE_RELEASE: {
      const rf = a.release_flags as number;
      if (!fs.release) return;
      const info = { flags: a.flags as number, flush: (rf & O.FUSE_RELEASE_FLUSH) !== 0, flockUnlock: (rf & O.FUSE_RELEASE_FLOCK_UNLOCK) !== 0, lockOwner: a.lock_owner as bigint };
      return then(fs.release(ctx, ino, a.fh as number, info), () => undefined);
    }
    default:
      return runOpAsync(op, o);
  }
}

async function runOpAsync(op: Opcode, o: OpContext): Promise<OpResult> {
  const { fs, ctx, args: a, header: h } = o;
  const ino = h.nodeid;
  switch (op) {
    case Opcode.FUSE_BATCH_FORGET:
      if (fs.forget) for (const f of a.forgets as ForgetOne[]) await fs.forget(f.nodeid, f.nlookup);
      return;
    case Opcode.FUSE_SETATTR:
      return attrOut(await method(fs, 'setattr')(ctx, ino, decodeSetattr(a)));
    case Opcode.FUSE_READLINK:
      return [Buffer.from(await method(fs, 'readlink')(ctx, ino), 'utf8')];
    case Opcode.FUSE_SYMLINK: {
      const target = a.linkname as Uint8Array;
      if (target.length === 0 || target.length > 4095) throw new FsError(target.length ? Errno.ENAMETOOLONG : Errno.ENOENT);
      return entry(await method(fs, 'symlink')(ctx, ino, decodeName(a.name as Uint8Array, false), decodeText(target, 'link target')));
    }
    case Opcode.FUSE_MKNOD:
      return entry(await method(fs, 'mknod')(ctx, ino, decodeName(a.name as Uint8Array, false), a.mode as number, a.rdev as number));
    case Opcode.FUSE_MKDIR:
      return entry(await method(fs, 'mkdir')(ctx, ino, decodeName(a.name as Uint8Array, false), a.mode as number));
    case Opcode.FUSE_RENAME:
    case Opcode.FUSE_RENAME2:
      return void (await method(fs, 'rename')(
        ctx,
        ino,
        decodeName(a.oldname as Uint8Array),
        a.newdir as number,
        decodeName(a.newname as Uint8Array),
        op === Opcode.FUSE_RENAME2 ? (a.flags as number) : 0,
      ));
    case Opcode.FUSE_LINK:
      return entry(await method(fs, 'link')(ctx, a.oldnodeid as number, ino, decodeName(a.newname as Uint8Array, false)));
    case Opcode.FUSE_OPEN:
    case Opcode.FUSE_OPENDIR: {
      const r = await method(fs, op === Opcode.FUSE_OPEN ? 'open' : 'opendir')(ctx, ino, a.flags as number, a.open_flags as number);
      const w = new Writer(SIZE.open_out);
      writeOpenOut(w, r.fh, r.flags ?? 0, r.backingId);
      return [w.finish()];
    }
    case Opcode.FUSE_STATFS: {
      const s = await method(fs, 'statfs')(ctx, ino);
      const w = new Writer(SIZE.statfs_out);
      writeStatfsOut(w, s);
      return [w.finish()];
    }
    case Opcode.FUSE_RELEASEDIR:
      if (fs.releasedir) await fs.releasedir(ctx, ino, a.fh as number);
      return;
    case Opcode.FUSE_FSYNC:
    case Opcode.FUSE_FSYNCDIR:
      return void (await method(fs, op === Opcode.FUSE_FSYNC ? 'fsync' : 'fsyncdir')(
        ctx,
        ino,
        a.fh as number,
        ((a.fsync_flags as number) & O.FUSE_FSYNC_FDATASYNC) !== 0,
      ));
    case Opcode.FUSE_SETXATTR:
      return void (await method(fs, 'setxattr')(ctx, ino, decodeText(a.name as Uint8Array, 'xattr name'), a.value as Uint8Array, a.flags as number));
    case Opcode.FUSE_GETXATTR: {
      const size = a.size as number;
      checkSize(size);
      const value = await method(fs, 'getxattr')(ctx, ino, decodeText(a.name as Uint8Array, 'xattr name'));
      return sizedReply(value, size);
    }
    case Opcode.FUSE_LISTXATTR: {
      const size = a.size as number;
      checkSize(size);
      const names = await method(fs, 'listxattr')(ctx, ino);
      return sizedReply(Buffer.from(names.map((n) => n + '\0').join(''), 'utf8'), size);
    }
    case Opcode.FUSE_REMOVEXATTR:
      return void (await method(fs, 'removexattr')(ctx, ino, decodeText(a.name as Uint8Array, 'xattr name')));
    case Opcode.FUSE_FLUSH:
      return void (await method(fs, 'flush')(ctx, ino, a.fh as number, a.lock_owner as bigint));
    case Opcode.FUSE_READDIR:
    case Opcode.FUSE_READDIRPLUS: {
      const size = a.size as number;
      checkSize(size);
      const sink = new WireDirSink(size, op === Opcode.FUSE_READDIRPLUS);
      await method(fs, 'readdir')(ctx, ino, a.fh as number, a.offset as number, sink);
      return [sink.w.finish()];
    }
    case Opcode.FUSE_GETLK: {
      const lk = await method(fs, 'getlk')(ctx, ino, a.fh as number, a.owner as bigint, fromWireLock(a.lk as FileLockWire));
      const w = new Writer(SIZE.lk_out);
      writeFileLock(w, lk);
      return [w.finish()];
    }
    case Opcode.FUSE_SETLK:
    case Opcode.FUSE_SETLKW:
      return void (await method(fs, 'setlk')(ctx, ino, a.fh as number, {
        owner: a.owner as bigint,
        lock: fromWireLock(a.lk as FileLockWire),
        sleep: op === Opcode.FUSE_SETLKW,
        flock: ((a.lk_flags as number) & O.FUSE_LK_FLOCK) !== 0,
      }));
    case Opcode.FUSE_ACCESS:
      return void (await method(fs, 'access')(ctx, ino, a.mask as number));
    case Opcode.FUSE_TMPFILE:
      return created(await method(fs, 'tmpfile')(ctx, ino, a.mode as number, a.flags as number));
    case Opcode.FUSE_BMAP:
      return u64(await method(fs, 'bmap')(ctx, ino, a.blocksize as number, a.block as number));
    case Opcode.FUSE_IOCTL: {
      const outSize = a.out_size as number;
      checkSize(outSize);
      const r = await method(fs, 'ioctl')(ctx, ino, a.fh as number, a.cmd as number, a.arg as bigint, a.in_data as Uint8Array, outSize, a.flags as number);
      const data = r.data ? r.data.subarray(0, outSize) : new Uint8Array(0);
      return [new Writer(SIZE.ioctl_out).i32(r.result).u32(0).u32(0).u32(0).finish(), data];
    }
    case Opcode.FUSE_POLL: {
      const flags = a.flags as number;
      const kh = flags & O.FUSE_POLL_SCHEDULE_NOTIFY ? (a.kh as bigint) : undefined;
      return u32(await method(fs, 'poll')(ctx, ino, a.fh as number, kh, a.events as number));
    }
    case Opcode.FUSE_FALLOCATE:
      return void (await method(fs, 'fallocate')(ctx, ino, a.fh as number, a.offset as number, a.length as number, a.mode as number));
    case Opcode.FUSE_LSEEK:
      return u64(await method(fs, 'lseek')(ctx, ino, a.fh as number, a.offset as number, a.whence as number));
    case Opcode.FUSE_COPY_FILE_RANGE:
    case Opcode.FUSE_COPY_FILE_RANGE_64: {
      const len = a.len as number;
      const n = await method(fs, 'copyFileRange')(
        ctx,
        { ino, fh: a.fh_in as number, offset: a.off_in as number },
        { ino: a.nodeid_out as number, fh: a.fh_out as number, offset: a.off_out as number },
        op === Opcode.FUSE_COPY_FILE_RANGE ? Math.min(len, 0xffff_ffff) : len,
        a.flags as number,
      );
      return op === Opcode.FUSE_COPY_FILE_RANGE ? u32(Math.min(n, 0xffff_ffff)) : u64(n);
    }
    case Opcode.FUSE_SYNCFS:
      return void (await method(fs, 'syncfs')(ctx, ino));
    case Opcode.FUSE_STATX: {
      const fh = (a.getattr_flags as number) & O.FUSE_GETATTR_FH ? (a.fh as number) : undefined;
      const r = await method(fs, 'getattr')(ctx, ino, fh);
      const w = new Writer(SIZE.statx_out);
      writeStatxOut(w, r.attr, r.timeout ?? 1, a.sx_mask as number);
      return [w.finish()];
    }
    case Opcode.FUSE_SETUPMAPPING:
    case Opcode.FUSE_REMOVEMAPPING:
      // DAX windows need a shared cache region; not offered, so never negotiated.
      throw new FsError(Errno.ENOSYS);
    default:
      throw new FsError(Errno.ENOSYS);
  }
}

/** GETXATTR/LISTXATTR: size 0 asks for the length; a short buffer is ERANGE. */
function sizedReply(value: Uint8Array, size: number): Uint8Array[] {
  if (size === 0) return u32(value.length);
  if (value.length > size) throw new FsError(Errno.ERANGE);
  return [value];
}

function decodeSetattr(a: Record<string, unknown>): SetAttr {
  const valid = a.valid as number;
  const s: SetAttr = {};
  if (valid & O.FATTR_MODE) s.mode = a.mode as number;
  if (valid & O.FATTR_UID) s.uid = a.uid as number;
  if (valid & O.FATTR_GID) s.gid = a.gid as number;
  if (valid & O.FATTR_SIZE) s.size = a.size as number;
  if (valid & O.FATTR_ATIME_NOW) s.atime = 'now';
  else if (valid & O.FATTR_ATIME) s.atime = { sec: a.atime as number, nsec: nsec(a.atimensec as number) };
  if (valid & O.FATTR_MTIME_NOW) s.mtime = 'now';
  else if (valid & O.FATTR_MTIME) s.mtime = { sec: a.mtime as number, nsec: nsec(a.mtimensec as number) };
  if (valid & O.FATTR_CTIME) s.ctime = { sec: a.ctime as number, nsec: nsec(a.ctimensec as number) };
  if (valid & O.FATTR_FH) s.fh = a.fh as number;
  if (valid & O.FATTR_LOCKOWNER) s.lockOwner = a.lock_owner as bigint;
  if (valid & O.FATTR_KILL_SUIDGID) s.killSuidgid = true;
  return s;
}

function nsec(n: number): number {
  if (n > 999_999_999) throw new FsError(Errno.EINVAL, 'nanoseconds out of range');
  return n;
}
