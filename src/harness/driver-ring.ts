/**
 * One split virtqueue as the guest's driver sees it: places request/reply chains in guest
 * memory, publishes them (event-idx aware), and collects replies from the used ring when the
 * device signals the call eventfd. A ring is described by plain data (`RingLayout`), so the
 * thread that negotiated the device can hand a queue to a worker thread, which drives it
 * alone — as a guest kernel drives each queue from its own CPU.
 */
import { native } from '../native/native.js';

const DESC_F_NEXT = 1;
const DESC_F_WRITE = 2;
const DESC_F_INDIRECT = 4;

/** A request slot: offsets in guest memory of its request and reply areas and of an indirect table. */
export interface SlotLayout {
  head: number;
  req: number;
  rep: number;
  table: number;
}

/** Everything needed to drive a queue, in a form that can be posted to a worker thread. */
export interface RingLayout {
  mem: SharedArrayBuffer;
  num: number;
  descOff: number;
  availOff: number;
  usedOff: number;
  kickFd: number;
  callFd: number;
  slots: SlotLayout[];
  slotBytes: number;
  eventIdx: boolean;
  indirect: boolean;
  /** Where the ring's indices stand when it changes hands (0 on a fresh ring). */
  availIdx?: number;
  lastUsed?: number;
}

interface Slot extends SlotLayout {
  resolve?: (r: Buffer) => void;
  /** Under a closed-loop load (DriverRing.load): called with the reply's length instead. */
  done?: (len: number) => void;
}

/**
 * A closed-loop load of one request shape, `depth` requests kept in flight, with nothing
 * allocated per request: each slot's request is laid out once, `next` rewrites fields of it
 * (an offset) in place before every send, and replies are only checked for an error.
 */
export interface LoadSpec {
  depth: number;
  seconds: number;
  /** Slot i's request. */
  request: (i: number) => Uint8Array;
  replyBytes: number;
  /** Rewrites the request about to be sent (a view of it in guest memory), the n-th of this load. */
  next?: (req: DataView, n: number) => void;
  /** Each request's latency, µs. */
  record?: (us: number) => void;
}

export interface LoadResult {
  ops: number;
  errors: number;
  secs: number;
}

export class DriverRing {
  readonly desc: DataView;
  readonly bytes: Uint8Array;
  private readonly view: DataView;
  readonly num: number;
  private readonly avail16: Uint16Array;
  private readonly used16: Uint16Array;
  private readonly used32: Uint32Array;
  private availIdx = 0;
  private lastUsed = 0;
  private readonly free: Slot[];
  private readonly byHead = new Map<number, Slot>();
  private readonly waiters: Array<() => void> = [];
  private watch?: unknown;

  constructor(readonly layout: RingLayout) {
    const { mem, num, descOff, availOff, usedOff } = layout;
    this.num = num;
    this.bytes = new Uint8Array(mem);
    this.view = new DataView(mem);
    this.desc = new DataView(mem, descOff, 16 * num);
    this.avail16 = new Uint16Array(mem, availOff, 3 + num);
    this.used16 = new Uint16Array(mem, usedOff, 2 + 4 * num + 1);
    this.used32 = new Uint32Array(mem, usedOff + 4, 2 * num);
    this.availIdx = layout.availIdx ?? 0;
    this.lastUsed = layout.lastUsed ?? 0;
    this.free = layout.slots.map((s) => ({ ...s }));
    for (const s of this.free) this.byHead.set(s.head, s);
  }

  /** Starts taking completions in this thread (one thread at a time may drive a ring). */
  start(): void {
    this.watch ??= native().watch(this.layout.callFd, () => this.onCall());
  }

  stop(): void {
    if (this.watch) native().unwatch(this.watch);
    this.watch = undefined;
  }

  /** Stops driving the ring here and describes it for the thread that takes it over. */
  handOff(): RingLayout {
    if (this.free.length !== this.layout.slots.length) throw new Error('a ring changes hands only with no request in flight');
    this.stop();
    return { ...this.layout, availIdx: this.availIdx, lastUsed: this.lastUsed };
  }

  /** Sends one request and resolves with the reply's bytes. */
  async request(req: Uint8Array, replyBytes: number): Promise<Buffer> {
    const { slotBytes } = this.layout;
    if (req.length > slotBytes || replyBytes > slotBytes) throw new Error('request or reply larger than a slot');
    while (this.free.length === 0) await new Promise<void>((r) => this.waiters.push(r));
    const slot = this.free.pop()!;
    this.bytes.set(req, slot.req);
    return new Promise((resolve) => {
      slot.resolve = resolve;
      this.post(slot, req.length, replyBytes);
    });
  }

  /** Runs a closed-loop load on this ring (see LoadSpec); no other request may be in flight. */
  load(spec: LoadSpec): Promise<LoadResult> {
    if (this.free.length !== this.layout.slots.length) throw new Error('a load starts only with no request in flight');
    if (spec.depth < 1 || spec.depth > this.free.length) throw new Error(`depth ${spec.depth} out of 1..${this.free.length}`);
    const reqs = Array.from({ length: spec.depth }, (_, i) => spec.request(i));
    if (reqs.some((r) => r.length > this.layout.slotBytes) || spec.replyBytes > this.layout.slotBytes) throw new Error('request or reply larger than a slot');
    const slots = this.free.splice(0, spec.depth);
    return new Promise((resolve) => {
      let n = 0;
      let ops = 0;
      let errors = 0;
      let inFlight = 0;
      const t0 = performance.now();
      const until = t0 + spec.seconds * 1000;
      const sent = new Float64Array(this.num);
      const send = (slot: Slot, view: DataView) => {
        spec.next?.(view, n++);
        sent[slot.head] = performance.now();
        inFlight++;
        this.publish(slot.head);
      };
      slots.forEach((slot, i) => {
        const req = reqs[i]!;
        this.bytes.set(req, slot.req);
        const view = new DataView(this.layout.mem, slot.req, req.length);
        slot.done = (len) => {
          const now = performance.now();
          inFlight--;
          ops++;
          spec.record?.((now - sent[slot.head]!) * 1000);
          if (len < 16 || this.view.getInt32(slot.rep + 4, true) !== 0) errors++;
          if (now < until) return send(slot, view);
          slot.done = undefined;
          this.free.push(slot);
          if (inFlight === 0) resolve({ ops, errors, secs: (now - t0) / 1000 });
        };
        this.describe(slot, req.length, spec.replyBytes);
        send(slot, view);
      });
    });
  }

  /** The first slot's request area, free for the fuzzer's hand-made chains. */
  get scratch(): number {
    return this.byHead.get(0)!.req;
  }

  private post(slot: Slot, reqLen: number, repLen: number): void {
    this.describe(slot, reqLen, repLen);
    this.publish(slot.head);
  }

  /** Writes the descriptors of a slot's chain (request, then reply). */
  private describe(slot: Slot, reqLen: number, repLen: number): void {
    const put = (dv: DataView, i: number, addr: number, len: number, flags: number, next: number) => {
      dv.setUint32(i * 16, addr >>> 0, true); // two halves: no BigInt per descriptor
      dv.setUint32(i * 16 + 4, Math.floor(addr / 2 ** 32), true);
      dv.setUint32(i * 16 + 8, len, true);
      dv.setUint16(i * 16 + 12, flags, true);
      dv.setUint16(i * 16 + 14, next, true);
    };
    if (this.layout.indirect) {
      const table = new DataView(this.layout.mem, slot.table, 32);
      put(table, 0, slot.req, reqLen, DESC_F_NEXT, 1);
      put(table, 1, slot.rep, repLen, DESC_F_WRITE, 0);
      put(this.desc, slot.head, slot.table, 32, DESC_F_INDIRECT, 0);
    } else {
      put(this.desc, slot.head, slot.req, reqLen, DESC_F_NEXT, slot.head + 1);
      put(this.desc, slot.head + 1, slot.rep, repLen, DESC_F_WRITE, 0);
    }
  }

  /** Makes a chain head available and kicks, as the driver would (event-idx aware). */
  publish(head: number): void {
    const old = this.availIdx;
    Atomics.store(this.avail16, 2 + (this.availIdx % this.num), head);
    this.availIdx = (this.availIdx + 1) & 0xffff;
    Atomics.store(this.avail16, 1, this.availIdx);
    let kick: boolean;
    if (this.layout.eventIdx) {
      const availEvent = Atomics.load(this.used16, 2 + 4 * this.num);
      kick = ((this.availIdx - availEvent - 1) & 0xffff) < ((this.availIdx - old) & 0xffff);
    } else {
      kick = (Atomics.load(this.used16, 0) & 1) === 0; // VIRTQ_USED_F_NO_NOTIFY
    }
    if (kick) native().eventfdSignal(this.layout.kickFd);
  }

  private onCall(): void {
    native().eventfdDrain(this.layout.callFd); // 0 when spurious
    for (;;) {
      const usedIdx = Atomics.load(this.used16, 1);
      while (this.lastUsed !== usedIdx) {
        const e = this.lastUsed % this.num;
        const head = this.used32[e * 2]!;
        const len = this.used32[e * 2 + 1]!;
        this.lastUsed = (this.lastUsed + 1) & 0xffff;
        const slot = this.byHead.get(head);
        if (slot?.done) {
          slot.done(len);
          continue;
        }
        if (!slot?.resolve) continue;
        const r = slot.resolve;
        slot.resolve = undefined;
        const reply = Buffer.from(this.bytes.subarray(slot.rep, slot.rep + Math.min(len, this.layout.slotBytes)));
        this.free.push(slot);
        this.waiters.shift()?.();
        r(reply);
      }
      // used_event: interrupt me for the next completion.
      if (this.layout.eventIdx) Atomics.store(this.avail16, 2 + this.num, this.lastUsed);
      if (Atomics.load(this.used16, 1) === this.lastUsed) return;
    }
  }
}
