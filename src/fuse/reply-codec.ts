/**
 * Encoders for the reply structs of include/uapi/linux/fuse.h. Each writes into a
 * Writer so a reply is built in one buffer; the session prepends fuse_out_header.
 */
import type { Attr, Entry, FileLock, StatFs, Timespec } from '../fs/api.js';
import { SIZE } from './opcodes.js';
import { Writer } from './wire.js';

const OFFSET_MAX = 0x7fff_ffff_ffff_ffffn;

export function writeOutHeader(w: Writer, len: number, error: number, unique: bigint): void {
  w.u32(len).i32(error).u64(unique);
}

/** fuse_out_header as a buffer of its own (one per reply: no Writer needed). */
export function outHeader(len: number, error: number, unique: bigint): Buffer {
  const b = Buffer.allocUnsafe(SIZE.out_header);
  b.writeUInt32LE(len, 0);
  b.writeInt32LE(error, 4);
  b.writeBigUInt64LE(unique, 8);
  return b;
}

/** Splits seconds (possibly fractional) into the (u64 sec, u32 nsec) pair of *_valid fields. */
export function splitTimeout(seconds: number): [number, number] {
  if (!(seconds > 0)) return [0, 0];
  if (!Number.isFinite(seconds) || seconds > 2 ** 52) return [2 ** 52, 0];
  const sec = Math.floor(seconds);
  return [sec, Math.min(999_999_999, Math.round((seconds - sec) * 1e9))];
}

export function writeAttr(w: Writer, a: Attr): void {
  w.u64(a.ino).u64(a.size).u64(a.blocks);
  w.i64(a.atime.sec).i64(a.mtime.sec).i64(a.ctime.sec);
  w.u32(a.atime.nsec).u32(a.mtime.nsec).u32(a.ctime.nsec);
  w.u32(a.mode).u32(a.nlink).u32(a.uid).u32(a.gid).u32(a.rdev).u32(a.blksize).u32(a.flags ?? 0);
}

export function writeEntryOut(w: Writer, e: Entry): void {
  const [es, ens] = splitTimeout(e.entryTimeout ?? 1);
  const [as, ans] = splitTimeout(e.attrTimeout ?? 1);
  w.u64(e.ino).u64(e.generation ?? 0).u64(es).u64(as).u32(ens).u32(ans);
  writeAttr(w, e.attr);
}

export function writeAttrOut(w: Writer, attr: Attr, timeout = 1): void {
  const [s, ns] = splitTimeout(timeout);
  w.u64(s).u32(ns).u32(0);
  writeAttr(w, attr);
}

export function writeOpenOut(w: Writer, fh: number, openFlags: number, backingId = 0): void {
  w.u64(fh).u32(openFlags).i32(backingId);
}

export function writeStatfsOut(w: Writer, s: StatFs): void {
  w.u64(s.blocks).u64(s.bfree).u64(s.bavail).u64(s.files).u64(s.ffree);
  w.u32(s.bsize).u32(s.namelen).u32(s.frsize).u32(0).zeros(24);
}

export function writeFileLock(w: Writer, lk: FileLock): void {
  w.u64(lk.start).u64(lk.end === Infinity || lk.end >= 2 ** 63 ? OFFSET_MAX : lk.end).u32(lk.type).u32(lk.pid);
}

/** struct fuse_statx_out: (attr_valid, attr_valid_nsec, flags, spare[2]) + struct fuse_statx. */
export function writeStatxOut(w: Writer, a: Attr, timeout: number, mask: number): void {
  const [s, ns] = splitTimeout(timeout);
  w.u64(s).u32(ns).u32(0).zeros(16);
  const STATX_BASIC_STATS = 0x7ff;
  const STATX_BTIME = 0x800;
  const have = STATX_BASIC_STATS | (a.btime ? STATX_BTIME : 0);
  w.u32(have & (mask | STATX_BASIC_STATS)).u32(a.blksize).u64(0); // mask, blksize, attributes
  w.u32(a.nlink).u32(a.uid).u32(a.gid).u16(a.mode).u16(0);
  w.u64(a.ino).u64(a.size).u64(a.blocks).u64(0); // attributes_mask
  const t = (ts: Timespec | undefined) => w.i64(ts?.sec ?? 0).u32(ts?.nsec ?? 0).i32(0);
  t(a.atime);
  t(a.btime);
  t(a.ctime);
  t(a.mtime);
  w.u32(Math.floor(a.rdev / 256) & 0xfff).u32((a.rdev & 0xff) | ((a.rdev >>> 12) & 0xfff00));
  w.u32(0).u32(0).zeros(14 * 8);
}

export function direntSize(nameLen: number, plus: boolean): number {
  const base = (plus ? SIZE.direntplus : SIZE.dirent) + nameLen;
  return (base + 7) & ~7;
}

export function writeDirent(w: Writer, ino: number, off: number, type: number, name: Uint8Array): void {
  w.u64(ino).u64(off).u32(name.length).u32(type).bytes(name).align(8);
}
