import type { Timespec } from '../fs/api.js';

// Wall clock at nanosecond resolution: the epoch time at start plus a monotonic offset.
const baseNs = BigInt(Date.now()) * 1_000_000n - process.hrtime.bigint();

export function nowTimespec(): Timespec {
  const ns = baseNs + process.hrtime.bigint();
  return { sec: Number(ns / 1_000_000_000n), nsec: Number(ns % 1_000_000_000n) };
}

export function compareTimespec(a: Timespec, b: Timespec): number {
  return a.sec - b.sec || a.nsec - b.nsec;
}
