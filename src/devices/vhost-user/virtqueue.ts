/**
 * A split virtqueue, device side (virtio 1.x, 2.7). Ring indices shared with the driver
 * are read and written with Atomics (sequentially consistent: they order the element
 * writes before the index publish, as the spec requires). Descriptor chains are walked with
 * every address and length checked, at most `num` steps (or the indirect table's size), and
 * indirect tables may not nest.
 */
import { u64FromWords } from '../../fuse/wire.js';
import type { SharedHandles } from '../../fs/shared-handles.js';
import type { SharedNames } from '../../fs/shared-names.js';
import { native } from '../../native/native.js';
import { type GuestMemory, VirtioError } from './guest-memory.js';

const VIRTQ_DESC_F_NEXT = 1;
const VIRTQ_DESC_F_WRITE = 2;
const VIRTQ_DESC_F_INDIRECT = 4;
/** A request or reply larger than this is refused (FUSE needs ~1 MiB + headers). */
const MAX_CHAIN_BYTES = 32 * 1024 * 1024;

export interface Chain {
  head: number;
  readable: Uint8Array[];
  writable: Uint8Array[];
  /** Guest-physical address and length of each buffer, in pairs (for another thread to map). */
  readableGpa: number[];
  writableGpa: number[];
}

export interface RingAddrs {
  desc: Uint8Array;
  avail: Uint8Array;
  used: Uint8Array;
}

/** Views of a ring's three parts, from their VMM virtual addresses. Throws if one lies outside memory. */
export function ringViews(mem: GuestMemory, addr: { desc: number; avail: number; used: number }, num: number): RingAddrs {
  return { desc: mem.sliceVa(addr.desc, 16 * num), avail: mem.sliceVa(addr.avail, 6 + 2 * num), used: mem.sliceVa(addr.used, 6 + 8 * num) };
}

/**
 * READ and WRITE on published open files, and GETATTR of published inodes, served by native
 * code straight off the ring (ring_fast.c); `counts` gets what it served — READs, WRITEs,
 * READ bytes, GETATTRs; `onStall` hears of writes at once that waited.
 */
/**
 * The words of FastPathSpec.counts, per queue, in an array of them (see fastCounts);
 * ring_fast.c adds to them (COUNT_*) before a request's used entry is published.
 */
export const FAST_COUNTS = { reads: 0, writes: 1, readBytes: 2, getattrs: 3, lookups: 4, words: 5 } as const;
export type FastCount = Exclude<keyof typeof FAST_COUNTS, 'words'>;

/** Queue q's counts in an array of every queue's. */
export function fastCounts(all: Float64Array, q: number): Float64Array {
  return all.subarray(FAST_COUNTS.words * q, FAST_COUNTS.words * (q + 1));
}

export interface FastPathSpec {
  handles: SharedHandles;
  inodes?: SharedHandles;
  /**
   * Known inodes by host identity (with `inodes`): LOOKUPs in directories held in memory are
   * answered natively too, counted per slot for the backend. Only where the backend's own
   * thread serves the ring, since it takes the counts between requests.
   */
  names?: SharedNames;
  counts: Float64Array;
  onStall?: (fh: number, ms: number) => void;
}

export class Virtqueue {
  lastAvail = 0;
  usedIdx = 0;
  private fast?: { ctx: unknown; stall: Float64Array; spec: FastPathSpec };
  private readonly descDv: DataView;
  private readonly avail16: Uint16Array;
  private readonly used16: Uint16Array;
  private readonly used32: Uint32Array;
  /** The used ring's avail_event field (event-idx). */
  private readonly availEvent: Uint16Array;
  /** The used index at our last notification decision (event-idx). */
  private signalledUsed = 0;

  constructor(
    private readonly mem: GuestMemory,
    readonly num: number,
    private readonly rings: RingAddrs,
    private readonly opts: { eventIdx: boolean; indirect: boolean },
  ) {
    if (num === 0 || num > 32768 || (num & (num - 1)) !== 0) throw new VirtioError(`bad queue size ${num}`);
    if (rings.desc.length < 16 * num || rings.avail.length < 6 + 2 * num || rings.used.length < 6 + 8 * num) throw new VirtioError('rings too small');
    if (rings.avail.byteOffset % 2 || rings.used.byteOffset % 4 || rings.desc.byteOffset % 16) throw new VirtioError('misaligned rings');
    this.descDv = new DataView(rings.desc.buffer, rings.desc.byteOffset, 16 * num);
    this.avail16 = new Uint16Array(rings.avail.buffer, rings.avail.byteOffset, 3 + num);
    this.used16 = new Uint16Array(rings.used.buffer, rings.used.byteOffset, 2);
    this.used32 = new Uint32Array(rings.used.buffer, rings.used.byteOffset + 4, 2 * num);
    this.availEvent = new Uint16Array(rings.used.buffer, rings.used.byteOffset + 4 + 8 * num, 1);
  }

  /** The same ring over a new mapping of its memory (a new memory table): its indices carry over. */
  remapped(mem: GuestMemory, rings: RingAddrs): Virtqueue {
    const vq = new Virtqueue(mem, this.num, rings, this.opts);
    vq.lastAvail = this.lastAvail;
    vq.usedIdx = this.usedIdx;
    vq.signalledUsed = this.signalledUsed;
    if (this.fast) vq.enableFastPath(this.fast.spec);
    return vq;
  }

  /** Lets native code serve READ and WRITE on `spec.handles`, GETATTR of `spec.inodes` (see serveFast). */
  enableFastPath(spec: FastPathSpec): void {
    if (spec.counts.length < FAST_COUNTS.words) throw new RangeError('fast path counts too short');
    const stall = new Float64Array(2); // handle, ms
    const names = spec.inodes ? spec.names : undefined; // a lookup starts from a published directory
    const ctx = native().ringFastCreate(this.rings.desc, this.rings.avail, this.rings.used, this.num, this.opts.indirect, this.mem.regionList(), spec.handles.table, spec.inodes?.table ?? null, spec.counts, stall, names?.table.table ?? null, names?.lookups ?? null);
    this.fast = { ctx, stall, spec };
  }

  /**
   * Serves up to `max` chains from the next one on in native code, as long as they are plain
   * READs and WRITEs on published handles or GETATTRs of published inodes; returns how many (0: the next chain, if any, is
   * for pop()). `writeAtOnceMax`: the largest write that may wait a little (local disk) to
   * run here (0: none).
   */
  serveFast(max: number, writeAtOnceMax: number): number {
    const f = this.fast;
    if (!f) return 0;
    const n = native().ringFastServe(f.ctx, this.lastAvail, this.usedIdx, max, writeAtOnceMax);
    if (n === 0) return 0;
    this.lastAvail = (this.lastAvail + n) & 0xffff;
    this.usedIdx = (this.usedIdx + n) & 0xffff;
    const s = f.stall;
    if (s[1]) {
      f.spec.onStall?.(s[0]!, s[1]);
      s[1] = 0;
    }
    return n;
  }

  /** Starts from the indices the VMM handed over (SET_VRING_BASE). */
  setBase(lastAvail: number): void {
    this.lastAvail = lastAvail & 0xffff;
    this.usedIdx = Atomics.load(this.used16, 1);
    this.signalledUsed = this.usedIdx;
  }

  hasWork(): boolean {
    return Atomics.load(this.avail16, 1) !== this.lastAvail;
  }

  /** Chains the driver made available that are not taken yet. */
  pending(): number {
    return (Atomics.load(this.avail16, 1) - this.lastAvail) & 0xffff;
  }

  /** Takes the next available chain, or null. Throws VirtioError for a broken ring. */
  pop(): Chain | null {
    const availIdx = Atomics.load(this.avail16, 1);
    if (availIdx === this.lastAvail) return null;
    if (((availIdx - this.lastAvail) & 0xffff) > this.num) throw new VirtioError(`avail index jumped by more than the queue size`);
    const head = Atomics.load(this.avail16, 2 + (this.lastAvail % this.num));
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    if (head >= this.num) throw new ChainError(head, `head ${head} out of range`);
    return this.walk(head);
  }

  private walk(head: number): Chain {
    const chain: Chain = { head, readable: [], writable: [], readableGpa: [], writableGpa: [] };
    let total = 0;
    let dv = this.descDv;
    let size = this.num;
    let i = head;
    let indirect = false;
    for (let steps = 0; ; steps++) {
      if (steps >= size) throw new ChainError(head, 'descriptor chain loops or is too long');
      if (i >= size) throw new ChainError(head, `descriptor index ${i} out of range`);
      const at = i * 16;
      // Beyond 2^53 it saturates: no guest memory lies there, so the slice below refuses it.
      const addr = u64FromWords(dv.getUint32(at, true), dv.getUint32(at + 4, true));
      const len = dv.getUint32(at + 8, true);
      const flags = dv.getUint16(at + 12, true);
      const next = dv.getUint16(at + 14, true);
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        if (!this.opts.indirect) throw new ChainError(head, 'indirect descriptor not negotiated');
        if (indirect) throw new ChainError(head, 'indirect table inside an indirect table');
        if (flags & VIRTQ_DESC_F_NEXT) throw new ChainError(head, 'indirect descriptor with NEXT');
        if (len === 0 || len % 16) throw new ChainError(head, `indirect table length ${len}`);
        let table: Uint8Array;
        try {
          table = this.mem.slice(addr, len);
        } catch (err) {
          throw new ChainError(head, (err as Error).message);
        }
        dv = new DataView(table.buffer, table.byteOffset, len);
        size = len / 16;
        indirect = true;
        i = 0;
        steps = -1;
        continue;
      }
      total += len;
      if (total > MAX_CHAIN_BYTES) throw new ChainError(head, 'chain larger than 32 MiB');
      let buf: Uint8Array;
      try {
        buf = this.mem.slice(addr, len);
      } catch (err) {
        throw new ChainError(head, (err as Error).message);
      }
      if (flags & VIRTQ_DESC_F_WRITE) {
        chain.writable.push(buf);
        chain.writableGpa.push(addr, len);
      } else if (chain.writable.length) throw new ChainError(head, 'readable descriptor after a writable one');
      else {
        chain.readable.push(buf);
        chain.readableGpa.push(addr, len);
      }
      if (!(flags & VIRTQ_DESC_F_NEXT)) return chain;
      i = next;
    }
  }

  /** Returns a chain to the driver with `len` bytes written. */
  push(head: number, len: number): void {
    const slot = this.usedIdx % this.num;
    this.used32[slot * 2] = head;
    this.used32[slot * 2 + 1] = len;
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
    Atomics.store(this.used16, 1, this.usedIdx); // publishes the element written above
  }

  /** Event-idx: asks the driver to kick when it makes `lastAvail` available. */
  armKick(): void {
    if (this.opts.eventIdx) Atomics.store(this.availEvent, 0, this.lastAvail);
  }

  /** Whether the driver wants an interrupt for what was pushed since the last call. */
  shouldNotify(): boolean {
    if (!this.opts.eventIdx) {
      return (Atomics.load(this.avail16, 0) & 1) === 0; // VIRTQ_AVAIL_F_NO_INTERRUPT
    }
    const usedEvent = Atomics.load(this.avail16, 2 + this.num);
    const newIdx = this.usedIdx;
    // Everything pushed since the last decision counts, however many completions it batched.
    const old = this.signalledUsed;
    this.signalledUsed = newIdx;
    // vring_need_event: notify if used_event lies in (old, new].
    return ((newIdx - usedEvent - 1) & 0xffff) < ((newIdx - old) & 0xffff);
  }
}

/** A chain that cannot be served; the queue itself is still usable. */
export class ChainError extends VirtioError {
  constructor(
    readonly head: number,
    message: string,
  ) {
    super(message);
  }
}
