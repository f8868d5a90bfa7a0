/**
 * Little-endian byte reader and writer for the FUSE wire format.
 * The reader never reads past its bound: every accessor checks first and throws
 * WireError, which the session turns into an error reply.
 */

export class WireError extends Error {
  override name = 'WireError';
}

const TWO32 = 0x1_0000_0000;

/** A u64 from its 32-bit words as a JS number; above 2^53 it saturates to Number.MAX_SAFE_INTEGER+1 (never wraps). */
export function u64FromWords(lo: number, hi: number): number {
  return hi >= 0x20_0000 ? Number.MAX_SAFE_INTEGER + 1 : hi * TWO32 + lo;
}

/** An i64 from its 32-bit words (`hi` signed) as a JS number: exact within ±2^53, the range of real times and offsets. */
export function i64FromWords(lo: number, hi: number): number {
  return hi * TWO32 + lo;
}

export class Reader {
  private pos: number;
  private readonly dv: DataView;
  constructor(
    readonly buf: Uint8Array,
    start = 0,
    private readonly end = buf.length,
  ) {
    if (start < 0 || end > buf.length || start > end) throw new WireError('reader bounds out of range');
    this.pos = start;
    this.dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  get offset(): number {
    return this.pos;
  }
  get remaining(): number {
    return this.end - this.pos;
  }

  private need(n: number, what: string): number {
    if (n < 0 || this.pos + n > this.end) {
      throw new WireError(`truncated ${what}: need ${n} bytes, have ${this.end - this.pos}`);
    }
    const at = this.pos;
    this.pos += n;
    return at;
  }

  skip(n: number, what = 'padding'): void {
    this.need(n, what);
  }
  u16(what = 'u16'): number {
    return this.dv.getUint16(this.need(2, what), true);
  }
  u32(what = 'u32'): number {
    return this.dv.getUint32(this.need(4, what), true);
  }
  i32(what = 'i32'): number {
    return this.dv.getInt32(this.need(4, what), true);
  }
  u64big(what = 'u64'): bigint {
    return this.dv.getBigUint64(this.need(8, what), true);
  }
  /** A u64 as a JS number; values above 2^53 saturate to Number.MAX_SAFE_INTEGER+1 (never silently wrap). */
  u64(what = 'u64'): number {
    const at = this.need(8, what);
    return u64FromWords(this.dv.getUint32(at, true), this.dv.getUint32(at + 4, true));
  }
  /** An i64 as a JS number (see i64FromWords). */
  i64(what = 'i64'): number {
    const at = this.need(8, what);
    return i64FromWords(this.dv.getUint32(at, true), this.dv.getInt32(at + 4, true));
  }
  bytes(n: number, what = 'bytes'): Uint8Array {
    const at = this.need(n, what);
    return this.buf.subarray(at, at + n);
  }
  /** The rest of the bounded region. */
  rest(): Uint8Array {
    return this.bytes(this.remaining);
  }
  /** A NUL-terminated byte string (without its NUL). */
  cstring(what = 'name'): Uint8Array {
    const start = this.pos;
    const nul = this.buf.indexOf(0, start);
    if (nul < 0 || nul >= this.end) throw new WireError(`${what} is not NUL-terminated`);
    this.pos = nul + 1;
    return this.buf.subarray(start, nul);
  }
}

/** Growable little-endian writer; `finish()` returns the written bytes. */
export class Writer {
  private buf: Buffer;
  private dv: DataView;
  private pos = 0;
  constructor(capacity = 256) {
    this.buf = Buffer.allocUnsafe(capacity);
    this.dv = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
  }
  get length(): number {
    return this.pos;
  }
  private ensure(n: number): number {
    if (this.pos + n > this.buf.length) {
      const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + n));
      this.buf.copy(next, 0, 0, this.pos);
      this.buf = next;
      this.dv = new DataView(next.buffer, next.byteOffset, next.byteLength);
    }
    const at = this.pos;
    this.pos += n;
    return at;
  }
  u8(v: number): this {
    const at = this.ensure(1);
    this.buf[at] = v;
    return this;
  }
  u16(v: number): this {
    const at = this.ensure(2);
    this.dv.setUint16(at, v, true);
    return this;
  }
  u32(v: number): this {
    const at = this.ensure(4);
    this.dv.setUint32(at, v >>> 0, true);
    return this;
  }
  i32(v: number): this {
    const at = this.ensure(4);
    this.dv.setInt32(at, v | 0, true);
    return this;
  }
  /** Writes a non-negative number or bigint as u64. */
  u64(v: number | bigint): this {
    const at = this.ensure(8);
    if (typeof v === 'bigint') {
      this.dv.setBigUint64(at, BigInt.asUintN(64, v), true);
    } else {
      this.dv.setUint32(at, v % TWO32 >>> 0, true);
      this.dv.setUint32(at + 4, Math.floor(v / TWO32) >>> 0, true);
    }
    return this;
  }
  i64(v: number | bigint): this {
    const at = this.ensure(8);
    if (typeof v === 'bigint' || !Number.isSafeInteger(v)) {
      this.dv.setBigInt64(at, BigInt.asIntN(64, BigInt(v)), true);
    } else {
      // Without a BigInt: the low word, and the high word with the sign.
      const hi = Math.floor(v / TWO32);
      this.dv.setUint32(at, v - hi * TWO32, true);
      this.dv.setInt32(at + 4, hi, true);
    }
    return this;
  }
  zeros(n: number): this {
    const at = this.ensure(n);
    this.buf.fill(0, at, at + n);
    return this;
  }
  bytes(b: Uint8Array): this {
    const at = this.ensure(b.length);
    this.buf.set(b, at);
    return this;
  }
  /** Pads with zeros to the next multiple of `align`. */
  align(align: number): this {
    const pad = (align - (this.pos % align)) % align;
    return pad ? this.zeros(pad) : this;
  }
  finish(): Buffer {
    return this.buf.subarray(0, this.pos);
  }
}
