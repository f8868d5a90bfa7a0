/**
 * INIT negotiation: decode fuse_init_in for any kernel from 7.12 on, choose the
 * protocol minor and the flags both sides support, and encode fuse_init_out in the
 * size that minor expects.
 */
import {
  COMPAT_22_INIT_OUT_SIZE,
  COMPAT_INIT_OUT_SIZE,
  FUSE_KERNEL_MINOR_VERSION,
  FUSE_KERNEL_VERSION,
  FUSE_MIN_MINOR_VERSION,
  InitFlag,
  SIZE,
} from './opcodes.js';
import { Reader, Writer } from './wire.js';

export interface InitIn {
  major: number;
  minor: number;
  max_readahead: number;
  /** flags | flags2 << 32 */
  flags: bigint;
}

export function decodeInitIn(body: Uint8Array): InitIn {
  const r = new Reader(body);
  const major = r.u32('major');
  const minor = r.u32('minor');
  let max_readahead = 0;
  let flags = 0n;
  if (r.remaining >= 8) {
    max_readahead = r.u32('max_readahead');
    flags = BigInt(r.u32('flags'));
    // flags2 exists from 7.36 and is only meaningful when FUSE_INIT_EXT is set.
    if (r.remaining >= 4 && flags & InitFlag.FUSE_INIT_EXT) flags |= BigInt(r.u32('flags2')) << 32n;
  }
  return { major, minor, max_readahead, flags };
}

export interface InitOut {
  major: number;
  minor: number;
  max_readahead: number;
  flags: bigint;
  max_background: number;
  congestion_threshold: number;
  max_write: number;
  time_gran: number;
  max_pages: number;
  map_alignment: number;
  max_stack_depth: number;
  request_timeout: number;
}

export function encodeInitOut(w: Writer, o: InitOut): void {
  const size = initOutSize(o.minor);
  const start = w.length;
  w.u32(o.major).u32(o.minor);
  if (size > COMPAT_INIT_OUT_SIZE) {
    w.u32(o.max_readahead).u32(Number(o.flags & 0xffff_ffffn));
    w.u16(o.max_background).u16(o.congestion_threshold).u32(o.max_write);
  }
  if (size > COMPAT_22_INIT_OUT_SIZE) {
    w.u32(o.time_gran).u16(o.max_pages).u16(o.map_alignment).u32(Number(o.flags >> 32n));
    w.u32(o.max_stack_depth).u16(o.request_timeout);
    w.zeros(size - (w.length - start));
  }
}

export function initOutSize(minor: number): number {
  if (minor < 5) return COMPAT_INIT_OUT_SIZE;
  if (minor < 23) return COMPAT_22_INIT_OUT_SIZE;
  return SIZE.init_out;
}

export interface NegotiationInput {
  kernel: InitIn;
  /** Flags this side would like (what the backend and the transport support). */
  wanted: bigint;
  maxWrite: number;
  maxBackground?: number;
}

export type Negotiation =
  | { ok: true; out: InitOut }
  /** Answer with only major/minor and wait for another INIT (kernel speaks a newer major). */
  | { ok: 'retry'; out: InitOut }
  | { ok: false; reason: string };

export function negotiate({ kernel, wanted, maxWrite, maxBackground = 64 }: NegotiationInput): Negotiation {
  const base: InitOut = {
    major: FUSE_KERNEL_VERSION,
    minor: FUSE_KERNEL_MINOR_VERSION,
    max_readahead: 0,
    flags: 0n,
    max_background: 0,
    congestion_threshold: 0,
    max_write: 0,
    time_gran: 0,
    max_pages: 0,
    map_alignment: 0,
    max_stack_depth: 0,
    request_timeout: 0,
  };
  if (kernel.major > FUSE_KERNEL_VERSION) return { ok: 'retry', out: base };
  if (kernel.major < FUSE_KERNEL_VERSION) {
    return { ok: false, reason: `kernel speaks FUSE ${kernel.major}.${kernel.minor}; ${FUSE_KERNEL_VERSION}.x is required` };
  }
  if (kernel.minor < FUSE_MIN_MINOR_VERSION) {
    return { ok: false, reason: `kernel FUSE protocol 7.${kernel.minor} is older than the supported 7.${FUSE_MIN_MINOR_VERSION}` };
  }
  const minor = Math.min(kernel.minor, FUSE_KERNEL_MINOR_VERSION);
  let flags = kernel.flags & wanted;
  // Bits above 31 only travel when both sides set FUSE_INIT_EXT.
  if (!(flags & InitFlag.FUSE_INIT_EXT)) flags &= 0xffff_ffffn;
  const pages = Math.max(1, Math.floor(maxWrite / 4096));
  const maxPages = flags & InitFlag.FUSE_MAX_PAGES ? Math.min(pages, 0xffff) : 0;
  // Without FUSE_MAX_PAGES the kernel caps requests at 32 pages.
  const effectiveMaxWrite = maxPages ? maxPages * 4096 : Math.min(maxWrite, 32 * 4096);
  return {
    ok: true,
    out: {
      ...base,
      minor,
      max_readahead: kernel.max_readahead,
      flags,
      max_background: maxBackground,
      congestion_threshold: Math.floor((maxBackground * 3) / 4),
      max_write: effectiveMaxWrite,
      time_gran: 1,
      max_pages: maxPages,
    },
  };
}
