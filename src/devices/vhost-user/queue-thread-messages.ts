/** Messages between the main thread and a queue thread (see queue-threads.ts). */
import type { SharedRegion } from './guest-memory.js';

export interface RingStart {
  q: number;
  gen: number;
  num: number;
  /** Ring addresses in the VMM's virtual address space. */
  addr: { desc: number; used: number; avail: number };
  base: number;
  eventIdx: boolean;
  indirect: boolean;
  kickFd: number;
  callFd: number;
}

/** To a queue thread. All but `done` are answered through the control block before the sender goes on. */
export type ToQueueThread =
  | { t: 'memory'; regions: SharedRegion[] | null }
  /** The backend's shared open files, whose READs and WRITEs the thread serves itself. */
  | { t: 'handles'; buffer: SharedArrayBuffer; inodes?: SharedArrayBuffer }
  | ({ t: 'start' } & RingStart)
  | { t: 'call'; q: number; callFd: number }
  | { t: 'stop'; q: number }
  /** Completions: head and written length, in pairs. */
  | { t: 'done'; q: number; gen: number; c: number[] };

/** From a queue thread. */
export type FromQueueThread =
  /**
   * Requests taken from ring q: request i is data[ends[i-1]..ends[i]) for chain heads[i],
   * and its writable buffers are gpa[i] (guest-physical address and length pairs). A WRITE
   * whose data stays in guest memory has it at wsrc[i] (pairs too), else null.
   */
  | { t: 'requests'; q: number; gen: number; data: ArrayBuffer; heads: number[]; ends: number[]; gpa: number[][]; wsrc: (number[] | null)[] }
  | { t: 'badChain'; q: number; head: number; message: string }
  | { t: 'broken'; q: number; gen: number; message: string }
  | { t: 'notifyFailed'; q: number; message: string };

/** Control block slots (an Int32Array over a SharedArrayBuffer). */
export const CTL_SEQ = 0;
export const CTL_STATUS = 1;
export const CTL_VALUE = 2;
export const CTL_SLOTS = 3;
