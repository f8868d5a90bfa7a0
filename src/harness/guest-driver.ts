/**
 * A software "guest driver": the VMM and the guest kernel's virtio-fs driver in one, so a
 * vhost-user-fs backend (dpfs or virtiofsd) can be benchmarked and attacked without a VM.
 * It creates guest memory (a memfd), negotiates over the socket, lays out split
 * virtqueues, places FUSE requests in descriptor chains (direct or indirect), kicks, and
 * collects replies from the used ring.
 */
import { closeSync } from 'node:fs';
import { native } from '../native/native.js';
import { F, HEADER_SIZE, PF, Req, encodeRequest, u64Payload } from '../devices/vhost-user/protocol.js';
import { DriverRing, type SlotLayout } from './driver-ring.js';

export interface DriverOptions {
  socket: string;
  /** Request queues (the device also gets the hiprio queue 0). */
  queues?: number;
  queueSize?: number;
  /** Requests in flight per queue (and buffer slots laid out for them). */
  depth?: number;
  eventIdx?: boolean;
  indirect?: boolean;
  /** Room for a request's payload (WRITE data) and for a reply, per slot. */
  slotBytes?: number;
}

const VMM_VA_BASE = 0x7f00_0000_0000; // any address the backend must translate, like QEMU's

export class GuestDriver {
  private fd = -1;
  private memFd = -1;
  private mem!: SharedArrayBuffer;
  private bytes!: Uint8Array;
  /** Queue 0 is hiprio; request queues follow. */
  readonly queues: DriverRing[] = [];
  private readonly o: Required<DriverOptions>;
  private replyWaiter?: { resolve: (b: Buffer) => void; reject: (e: Error) => void };
  private sockWatch?: unknown;
  private rx = Buffer.alloc(0);
  private closed = false;

  constructor(opts: DriverOptions) {
    this.o = { queues: 1, queueSize: 256, depth: 32, eventIdx: true, indirect: false, slotBytes: 1024 * 1024 + 8192, ...opts };
    if (this.o.depth > this.o.queueSize / 2) throw new Error('depth must leave two descriptors per request');
  }

  /** Lays out memory and negotiates the device; resolves when every queue is running. */
  async connect(): Promise<void> {
    const nq = 1 + this.o.queues;
    const ringBytes = (n: number) => 16 * n + 4096 + (6 + 2 * n) + 4096 + (6 + 8 * n) + 4096;
    const slotsBytes = this.o.depth * (2 * this.o.slotBytes + 4096);
    const size = Math.ceil((nq * (ringBytes(this.o.queueSize) + slotsBytes)) / 0x200000 + 1) * 0x200000;
    this.memFd = native().memfdCreate('dpfs-guest', size);
    this.mem = native().mapShared(this.memFd, size, 0);
    this.bytes = new Uint8Array(this.mem);
    let off = 4096;
    const align = (a: number) => (off = Math.ceil(off / a) * a);
    for (let q = 0; q < nq; q++) {
      const n = this.o.queueSize;
      align(4096);
      const descOff = off;
      off += 16 * n;
      align(4096);
      const availOff = off;
      off += 6 + 2 * n;
      align(4096);
      const usedOff = off;
      off += 6 + 8 * n;
      const slots: SlotLayout[] = [];
      for (let s = 0; s < this.o.depth; s++) {
        align(4096);
        slots.push({ head: s * 2, req: off, rep: off + this.o.slotBytes, table: off + 2 * this.o.slotBytes });
        off += 2 * this.o.slotBytes + 4096;
      }
      const kickFd = native().eventfd();
      const callFd = native().eventfd();
      const { slotBytes, eventIdx, indirect } = this.o;
      this.queues.push(new DriverRing({ mem: this.mem, num: n, descOff, availOff, usedOff, kickFd, callFd, slots, slotBytes, eventIdx, indirect }));
    }
    if (off > size) throw new Error('guest memory layout overflow');

    this.fd = native().connectUnix(this.o.socket);
    this.sockWatch = native().watch(this.fd, () => this.onSocket());
    const features = (await this.call(Req.GET_FEATURES)).readBigUInt64LE(0);
    let want = F.VIRTIO_F_VERSION_1 | F.VHOST_USER_F_PROTOCOL_FEATURES;
    if (this.o.eventIdx) want |= F.VIRTIO_RING_F_EVENT_IDX;
    if (this.o.indirect) want |= F.VIRTIO_RING_F_INDIRECT_DESC;
    if ((features & want) !== want) throw new Error(`device lacks features 0x${(want & ~features).toString(16)}`);
    this.send(Req.SET_FEATURES, u64Payload(want));
    const pf = (await this.call(Req.GET_PROTOCOL_FEATURES)).readBigUInt64LE(0);
    this.send(Req.SET_PROTOCOL_FEATURES, u64Payload(pf & (PF.MQ | PF.REPLY_ACK)));
    if (pf & PF.MQ) {
      const max = Number((await this.call(Req.GET_QUEUE_NUM)).readBigUInt64LE(0));
      if (max < nq) throw new Error(`device offers ${max} queues, ${nq} needed`);
    }
    this.send(Req.SET_OWNER, Buffer.alloc(0));
    this.sendMemTable();
    this.queues.forEach((ring, q) => {
      const dq = ring.layout;
      const st = Buffer.alloc(8);
      st.writeUInt32LE(q, 0);
      st.writeUInt32LE(dq.num, 4);
      this.send(Req.SET_VRING_NUM, st);
      const addr = Buffer.alloc(40);
      addr.writeUInt32LE(q, 0);
      addr.writeBigUInt64LE(BigInt(VMM_VA_BASE + dq.descOff), 8);
      addr.writeBigUInt64LE(BigInt(VMM_VA_BASE + dq.usedOff), 16);
      addr.writeBigUInt64LE(BigInt(VMM_VA_BASE + dq.availOff), 24);
      this.send(Req.SET_VRING_ADDR, addr);
      const base = Buffer.alloc(8);
      base.writeUInt32LE(q, 0);
      this.send(Req.SET_VRING_BASE, base);
      this.send(Req.SET_VRING_CALL, u64Payload(BigInt(q)), [dq.callFd]);
      this.send(Req.SET_VRING_KICK, u64Payload(BigInt(q)), [dq.kickFd]);
      const en = Buffer.alloc(8);
      en.writeUInt32LE(q, 0);
      en.writeUInt32LE(1, 4);
      this.send(Req.SET_VRING_ENABLE, en);
      ring.start();
    });
    // A round trip proves the device has taken every message above.
    await this.call(Req.GET_FEATURES);
  }

  /** SET_MEM_TABLE with the guest memory as one region (or, for the fuzzer, a region made up). */
  sendMemTable(region: { gpa: number; size: number; va: number; offset: number } = { gpa: 0, size: this.mem.byteLength, va: VMM_VA_BASE, offset: 0 }): void {
    const table = Buffer.alloc(8 + 32);
    table.writeUInt32LE(1, 0);
    table.writeBigUInt64LE(BigInt(region.gpa), 8);
    table.writeBigUInt64LE(BigInt(region.size), 16);
    table.writeBigUInt64LE(BigInt(region.va), 24);
    table.writeBigUInt64LE(BigInt(region.offset), 32);
    this.send(Req.SET_MEM_TABLE, table, [this.memFd]);
  }

  /** Bytes of guest memory. */
  get memorySize(): number {
    return this.mem.byteLength;
  }

  /** Hands the device the memory table again, as a VMM does when guest memory is hot-plugged. */
  async resendMemoryTable(): Promise<void> {
    this.sendMemTable();
    await this.call(Req.GET_FEATURES); // taken once the device answers what follows it
  }

  /** Sends a raw message (tests and the fuzzer use this for hostile ones). */
  send(req: number, payload: Buffer, fds?: number[], flags?: number): void {
    native().sendMsg(this.fd, encodeRequest(req, payload, flags), fds);
  }

  private call(req: number, payload = Buffer.alloc(0)): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      this.replyWaiter = { resolve, reject };
      this.send(req, payload);
    });
  }

  private onSocket(): void {
    const buf = Buffer.alloc(4096);
    for (;;) {
      const r = native().recvMsg(this.fd, buf);
      if (r === null) break;
      for (const fd of r.fds) closeSync(fd);
      if (r.n === 0) {
        this.closed = true;
        this.replyWaiter?.reject(new Error('device closed the connection'));
        this.replyWaiter = undefined;
        if (this.sockWatch) native().unwatch(this.sockWatch);
        this.sockWatch = undefined;
        return;
      }
      this.rx = Buffer.concat([this.rx, buf.subarray(0, r.n)]);
    }
    while (this.rx.length >= HEADER_SIZE && this.rx.length >= HEADER_SIZE + this.rx.readUInt32LE(8)) {
      const size = this.rx.readUInt32LE(8);
      const payload = Buffer.from(this.rx.subarray(HEADER_SIZE, HEADER_SIZE + size));
      this.rx = this.rx.subarray(HEADER_SIZE + size);
      const w = this.replyWaiter;
      this.replyWaiter = undefined;
      w?.resolve(payload);
    }
  }

  get connected(): boolean {
    return !this.closed;
  }

  /** Sends one FUSE request on request queue `q` (1-based; 0 is hiprio) and resolves with the reply. */
  request(q: number, req: Uint8Array, replyBytes: number): Promise<Buffer> {
    return this.queues[q]!.request(req, replyBytes);
  }

  /** Raw access for the fuzzer: the descriptor table and guest memory of a queue. */
  raw(q: number): { desc: DataView; bytes: Uint8Array; num: number; scratch: number } {
    const ring = this.queues[q]!;
    return { desc: ring.desc, bytes: ring.bytes, num: ring.num, scratch: ring.scratch };
  }

  close(): void {
    for (const ring of this.queues) {
      ring.stop();
      closeSync(ring.layout.kickFd);
      closeSync(ring.layout.callFd);
    }
    if (this.sockWatch) native().unwatch(this.sockWatch);
    if (this.fd >= 0) closeSync(this.fd);
    if (this.memFd >= 0) closeSync(this.memFd);
    this.fd = this.memFd = -1;
  }
}
