/** Helpers for scattered buffers (I/O vectors). */

/** Their total length. */
export function iovLength(bufs: readonly Uint8Array[]): number {
  let n = 0;
  for (const b of bufs) n += b.length;
  return n;
}

/** The buffers after the first `n` bytes (views, no copy). */
export function iovAfter(bufs: readonly Uint8Array[], n: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const b of bufs) {
    if (n >= b.length) {
      n -= b.length;
      continue;
    }
    out.push(n > 0 ? b.subarray(n) : b);
    n = 0;
  }
  return out;
}

/** The first `n` bytes (views, no copy). */
export function iovUpTo(bufs: readonly Uint8Array[], n: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const b of bufs) {
    if (n <= 0) break;
    out.push(b.length > n ? b.subarray(0, n) : b);
    n -= b.length;
  }
  return out;
}

/** A copy of the first `n` bytes (fewer if there are not so many). */
export function iovHead(bufs: readonly Uint8Array[], n: number): Buffer {
  const out = Buffer.allocUnsafe(Math.min(n, iovLength(bufs)));
  let at = 0;
  for (const b of bufs) {
    if (at === out.length) break;
    const k = Math.min(b.length, out.length - at);
    out.set(k === b.length ? b : b.subarray(0, k), at);
    at += k;
  }
  return out;
}

/** (address, length) pairs after the first `n` bytes. */
export function rangesAfter(pairs: readonly number[], n: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < pairs.length; i += 2) {
    const len = pairs[i + 1]!;
    if (n >= len) {
      n -= len;
      continue;
    }
    out.push(pairs[i]! + n, len - n);
    n = 0;
  }
  return out;
}
