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
}

export class DriverRing {
  readonly desc: DataView;
  readonly bytes: Uint8Array;
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

  /** The first slot's request area, free for the fuzzer's hand-made chains. */
  get scratch(): number {
    return this.byHead.get(0)!.req;
  }

  private post(slot: Slot, reqLen: number, repLen: number): void {
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
    this.publish(slot.head);
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
