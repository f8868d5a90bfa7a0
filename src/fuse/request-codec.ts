/**
 * Decoding (and, for tests and the guest-driver harness, encoding) of FUSE requests:
 * struct fuse_in_header, the op arguments per RequestSpecs, and the extension
 * headers that follow them (7.38+: total_extlen, supplementary groups).
 */
import { FUSE_EXT_GROUPS, SIZE } from './opcodes.js';
import type { Field, FileLockWire, ForgetOne } from './request-specs.js';
import { Reader, WireError, Writer, u64FromWords } from './wire.js';

export interface InHeader {
  len: number;
  opcode: number;
  unique: bigint;
  nodeid: number;
  uid: number;
  gid: number;
  pid: number;
  /** Length of the extension area in units of 8 bytes (7.38+; 0 before). */
  total_extlen: number;
}

const u32At = (b: Uint8Array, at: number) => (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16) | (b[at + 3]! << 24)) >>> 0;
const u64At = (b: Uint8Array, at: number) => u64FromWords(u32At(b, at), u32At(b, at + 4));

/** Request ids stay below 2^32 for billions of requests: one small BigInt then. */
function uniqueAt(b: Uint8Array): bigint {
  const hi = u32At(b, 12);
  return hi ? (BigInt(hi) << 32n) | BigInt(u32At(b, 8)) : BigInt(u32At(b, 8));
}

/** `outOfLine`: bytes of the request the transport holds elsewhere (see ReplyTarget.writeSrc). */
export function decodeInHeader(buf: Uint8Array, outOfLine = 0): InHeader {
  if (buf.length < SIZE.in_header) {
    throw new WireError(`request shorter than fuse_in_header: ${buf.length} bytes`);
  }
  // Byte arithmetic rather than a Reader: this runs once per request.
  const h: InHeader = {
    len: u32At(buf, 0),
    opcode: u32At(buf, 4),
    unique: uniqueAt(buf),
    nodeid: u64At(buf, 16),
    uid: u32At(buf, 24),
    gid: u32At(buf, 28),
    pid: u32At(buf, 32),
    total_extlen: buf[36]! | (buf[37]! << 8),
  };
  if (h.len !== buf.length + outOfLine) {
    throw new WireError(`fuse_in_header.len ${h.len} disagrees with the ${buf.length + outOfLine} bytes received`);
  }
  if (SIZE.in_header + h.total_extlen * 8 > h.len) {
    throw new WireError(`total_extlen ${h.total_extlen} exceeds the request`);
  }
  return h;
}

export function encodeInHeader(w: Writer, h: Omit<InHeader, 'len'>, len: number): void {
  w.u32(len).u32(h.opcode).u64(h.unique).u64(h.nodeid).u32(h.uid).u32(h.gid).u32(h.pid).u16(h.total_extlen).u16(0);
}

/** Decodes op arguments laid out per `spec` from `r`. */
export function decodeArgs(spec: readonly Field[], r: Reader): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const f of spec) {
    const [kind, name] = f;
    switch (kind) {
      case 'u16':
        out[name] = r.u16(name);
        break;
      case 'u32':
        out[name] = r.u32(name);
        break;
      case 'i32':
        out[name] = r.i32(name);
        break;
      case 'u64':
        out[name] = r.u64(name);
        break;
      case 'u64b':
        out[name] = r.u64big(name);
        break;
      case 'i64':
        out[name] = r.i64(name);
        break;
      case 'name':
        out[name] = r.cstring(name);
        break;
      case 'data':
        out[name] = r.rest();
        break;
      case 'sized': {
        const n = out[f[2]] as number;
        out[name] = r.bytes(n, name);
        break;
      }
      case 'lk': {
        const lk: FileLockWire = { start: r.u64('lk.start'), end: r.u64('lk.end'), type: r.u32('lk.type'), pid: r.u32('lk.pid') };
        out[name] = lk;
        break;
      }
      case 'forgets': {
        const count = out[f[2]] as number;
        if (count * 16 > r.remaining) throw new WireError(`batch forget count ${count} exceeds the request`);
        const list: ForgetOne[] = new Array(count);
        for (let i = 0; i < count; i++) list[i] = { nodeid: r.u64('nodeid'), nlookup: r.u64('nlookup') };
        out[name] = list;
        break;
      }
    }
  }
  return out;
}

/** Encodes op arguments per `spec` (inverse of decodeArgs). Missing numeric fields encode as 0. */
export function encodeArgs(spec: readonly Field[], args: Record<string, unknown>, w: Writer): void {
  for (const f of spec) {
    const [kind, name] = f;
    const v = args[name];
    switch (kind) {
      case 'u16':
        w.u16((v as number) ?? 0);
        break;
      case 'u32':
        w.u32((v as number) ?? 0);
        break;
      case 'i32':
        w.i32((v as number) ?? 0);
        break;
      case 'u64':
      case 'u64b':
        w.u64((v as number | bigint) ?? 0);
        break;
      case 'i64':
        w.i64((v as number) ?? 0);
        break;
      case 'name':
        w.bytes(toBytes(v)).u8(0);
        break;
      case 'data':
      case 'sized':
        w.bytes((v as Uint8Array) ?? new Uint8Array(0));
        break;
      case 'lk': {
        const lk = v as FileLockWire;
        w.u64(lk.start).u64(lk.end).u32(lk.type).u32(lk.pid);
        break;
      }
      case 'forgets':
        for (const one of v as ForgetOne[]) w.u64(one.nodeid).u64(one.nlookup);
        break;
    }
  }
}

function toBytes(v: unknown): Uint8Array {
  if (typeof v === 'string') return Buffer.from(v, 'utf8');
  if (v instanceof Uint8Array) return v;
  throw new TypeError('name must be a string or bytes');
}

export interface Extensions {
  groups?: number[];
}

/** Parses the extension area (the last total_extlen*8 bytes of the request). */
export function decodeExtensions(buf: Uint8Array, h: InHeader): Extensions {
  const ext: Extensions = {};
  if (h.total_extlen === 0) return ext;
  const r = new Reader(buf, h.len - h.total_extlen * 8, h.len);
  while (r.remaining > 0) {
    const start = r.offset;
    const size = r.u32('fuse_ext_header.size');
    const type = r.u32('fuse_ext_header.type');
    if (size < 8 || size % 8 !== 0 || start + size > h.len) {
      throw new WireError(`bad extension header size ${size}`);
    }
    if (type === FUSE_EXT_GROUPS) {
      const nr = r.u32('fuse_supp_groups.nr_groups');
      if (4 + nr * 4 > size - 8) throw new WireError(`supplementary group count ${nr} exceeds its extension`);
      const groups: number[] = [];
      for (let i = 0; i < nr; i++) groups.push(r.u32('group'));
      ext.groups = groups;
    }
    // Unknown extension types are skipped: they were not negotiated, and their size is known.
    r.skip(start + size - r.offset, 'extension');
  }
  return ext;
}

export function encodeGroupsExtension(w: Writer, groups: readonly number[]): void {
  const body = 4 + groups.length * 4;
  const size = 8 + Math.ceil(body / 8) * 8;
  w.u32(size).u32(FUSE_EXT_GROUPS).u32(groups.length);
  for (const g of groups) w.u32(g);
  w.zeros(size - 8 - body);
}

export interface RequestHeaderInput {
  opcode: number;
  unique: bigint;
  nodeid?: number;
  uid?: number;
  gid?: number;
  pid?: number;
  /** Supplementary groups, sent as a FUSE_EXT_GROUPS extension. */
  groups?: readonly number[];
}

/** Builds a complete request: header, arguments laid out by `spec`, extensions. */
export function encodeRequest(h: RequestHeaderInput, spec: readonly Field[], args: Record<string, unknown>): Buffer {
  const body = new Writer(64);
  encodeArgs(spec, args, body);
  const ext = new Writer(16);
  if (h.groups) encodeGroupsExtension(ext, h.groups);
  const len = SIZE.in_header + body.length + ext.length;
  const w = new Writer(len);
  encodeInHeader(w, { opcode: h.opcode, unique: h.unique, nodeid: h.nodeid ?? 0, uid: h.uid ?? 0, gid: h.gid ?? 0, pid: h.pid ?? 0, total_extlen: ext.length / 8 }, len);
  w.bytes(body.finish()).bytes(ext.finish());
  return w.finish();
}
