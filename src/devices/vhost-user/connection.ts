/**
 * One vhost-user connection from a VMM: the message protocol (features, memory table,
 * vring set-up and state), the rings it sets up, and FUSE requests carried over them.
 * A protocol error ends the connection; a broken ring stops that ring; a bad descriptor
 * chain is returned unanswered. None of them reaches past this connection.
 */
import { closeSync, readSync, writeSync } from 'node:fs';
import { Opcode } from '../../fuse/opcodes.js';
import { native } from '../../native/native.js';
import type { Logger } from '../../util/log.js';
import { GuestMemory, type RegionSpec } from './guest-memory.js';
import {
  F,
  FLAG_NEED_REPLY,
  HEADER_SIZE,
  type Header,
  MAX_PAYLOAD,
  PF,
  Req,
  VRING_IDX_MASK,
  VRING_NOFD_MASK,
  decodeHeader,
  encodeReply,
  u64Payload,
} from './protocol.js';
import { ChainError, type Chain, Virtqueue } from './virtqueue.js';

/** What a connection asks of the device that owns it. */
export interface RequestSink {
  /**
   * Handles one FUSE request; `reply` is called at most once with the reply bytes, of which
   * `placed` payload bytes were already written into `target` (the guest's buffers).
   */
  handle(request: Buffer, reply: (chunks: Uint8Array[], placed?: number) => void, target?: { payload: Uint8Array[] }): void;
}

interface Vring {
  num: number;
  addr?: { desc: number; used: number; avail: number };
  base: number;
  kickFd: number;
  callFd: number;
  errFd: number;
  enabled: boolean;
  started: boolean;
  vq?: Virtqueue;
  kickWatch?: unknown;
  notifyScheduled: boolean;
  /** Bumped when the ring stops: replies of an older generation are dropped. */
  generation: number;
}

export const SUPPORTED_FEATURES = F.VIRTIO_F_VERSION_1 | F.VIRTIO_RING_F_INDIRECT_DESC | F.VIRTIO_RING_F_EVENT_IDX | F.VHOST_USER_F_PROTOCOL_FEATURES;
export const SUPPORTED_PROTOCOL_FEATURES = PF.MQ | PF.REPLY_ACK;

export class VhostUserConnection {
  private features = 0n;
  private protocolFeatures = 0n;
  private mem?: GuestMemory;
  private readonly rings: Vring[];
  private watch?: unknown;
  private pendingHeader?: { h: Header; fds: number[]; payload: Buffer; got: number };
  private readonly headerBuf = Buffer.alloc(HEADER_SIZE);
  private closed = false;
  private endResolve!: () => void;
  readonly ended = new Promise<void>((r) => (this.endResolve = r));
  readonly stats = { requests: 0, badChains: 0, zeroCopyBytes: 0, perQueue: [] as number[] };

  constructor(
    private readonly fd: number,
    private readonly queues: number,
    private readonly sink: RequestSink,
    private readonly log: Logger,
  ) {
    this.rings = Array.from({ length: queues }, () => ({
      num: 0,
      base: 0,
      kickFd: -1,
      callFd: -1,
      errFd: -1,
      enabled: false,
      started: false,
      notifyScheduled: false,
      generation: 0,
    }));
    this.watch = native().watch(fd, () => this.onReadable());
  }

  close(reason?: string): void {
    if (this.closed) return;
    this.closed = true;
    if (reason) this.log.warn({ reason }, 'vhost-user connection closed');
    if (this.watch) native().unwatch(this.watch);
    for (let i = 0; i < this.rings.length; i++) this.stopRing(i);
    for (const r of this.rings) {
      closeFd(r.callFd);
      closeFd(r.errFd);
      r.callFd = r.errFd = -1;
    }
    closeFd(this.fd);
    this.mem = undefined;
    this.endResolve();
  }

  /** True once the connection has ended (the peer closed, or a protocol error). */
  get isClosed(): boolean {
    return this.closed;
  }

  // ---- messages ----------------------------------------------------------------------

  /** Reads whatever the peer has sent, including its hang-up, now. */
  poll(): void {
    this.onReadable();
  }

  private onReadable(): void {
    try {
      while (!this.closed && this.readMessage()) {
        /* one message per loop */
      }
    } catch (err) {
      this.close(`protocol error: ${(err as Error).message}`);
    }
  }

  /** Reads (part of) one message; returns true if another may be pending. */
  private readMessage(): boolean {
    if (!this.pendingHeader) {
      // The header is read on its own, so descriptors arrive with exactly their message.
      const r = native().recvMsg(this.fd, this.headerBuf);
      if (r === null) return false;
      if (r.n === 0) {
        for (const fd of r.fds) closeFd(fd);
        this.close();
        return false;
      }
      if (r.n !== HEADER_SIZE || r.truncated) {
        for (const fd of r.fds) closeFd(fd);
        throw new Error(`short or over-stuffed message header (${r.n} bytes)`);
      }
      const h = decodeHeader(this.headerBuf);
      if (h.size > MAX_PAYLOAD) {
        for (const fd of r.fds) closeFd(fd);
        throw new Error(`payload of ${h.size} bytes for request ${h.request}`);
      }
      this.pendingHeader = { h, fds: r.fds, payload: Buffer.alloc(h.size), got: 0 };
    }
    const p = this.pendingHeader;
    while (p.got < p.payload.length) {
      const r = native().recvMsg(this.fd, p.payload.subarray(p.got));
      if (r === null) return false;
      for (const fd of r.fds) closeFd(fd); // descriptors belong with headers only
      if (r.n === 0) {
        this.close('peer closed mid-message');
        return false;
      }
      p.got += r.n;
    }
    this.pendingHeader = undefined;
    this.dispatch(p.h, p.payload, p.fds);
    return true;
  }

  private reply(request: number, payload: Buffer): void {
    native().sendMsg(this.fd, encodeReply(request, payload));
  }

  private dispatch(h: Header, p: Buffer, fds: number[]): void {
    const need = (n: number) => {
      if (p.length < n) throw new Error(`request ${Req[h.request] ?? h.request}: payload ${p.length} < ${n} bytes`);
    };
    const takeFds = (n: number) => {
      if (fds.length !== n) {
        for (const fd of fds) closeFd(fd);
        throw new Error(`request ${Req[h.request] ?? h.request}: expected ${n} descriptors, got ${fds.length}`);
      }
      return fds;
    };
    const ring = (index: number) => {
      const r = this.rings[index];
      if (!r) throw new Error(`vring index ${index} out of range (device has ${this.queues})`);
      return r;
    };
    let replied = false;
    switch (h.request) {
      case Req.GET_FEATURES:
        takeFds(0);
        this.reply(h.request, u64Payload(SUPPORTED_FEATURES));
        replied = true;
        break;
      case Req.SET_FEATURES:
        takeFds(0);
        need(8);
        this.features = p.readBigUInt64LE(0) & SUPPORTED_FEATURES;
        break;
      case Req.GET_PROTOCOL_FEATURES:
        takeFds(0);
        this.reply(h.request, u64Payload(SUPPORTED_PROTOCOL_FEATURES));
        replied = true;
        break;
      case Req.SET_PROTOCOL_FEATURES:
        takeFds(0);
        need(8);
        this.protocolFeatures = p.readBigUInt64LE(0) & SUPPORTED_PROTOCOL_FEATURES;
        break;
      case Req.GET_QUEUE_NUM:
        takeFds(0);
        this.reply(h.request, u64Payload(BigInt(this.queues)));
        replied = true;
        break;
      case Req.SET_OWNER:
        takeFds(0);
        break;
      case Req.RESET_OWNER:
        takeFds(0);
        for (let i = 0; i < this.rings.length; i++) this.stopRing(i);
        break;
      case Req.SET_MEM_TABLE: {
        need(8);
        const n = p.readUInt32LE(0);
        if (n === 0 || n > 8) throw new Error(`memory table with ${n} regions`);
        need(8 + 32 * n);
        const regions: RegionSpec[] = [];
        for (let i = 0; i < n; i++) {
          const at = 8 + 32 * i;
          regions.push({
            guestPhysAddr: Number(p.readBigUInt64LE(at)),
            size: Number(p.readBigUInt64LE(at + 8)),
            userAddr: Number(p.readBigUInt64LE(at + 16)),
            mmapOffset: Number(p.readBigUInt64LE(at + 24)),
          });
        }
        this.mem = GuestMemory.map(regions, takeFds(n));
        // Rings already set up are re-derived from the new table.
        for (let i = 0; i < this.rings.length; i++) if (this.rings[i]!.vq) this.buildQueue(i);
        this.log.info({ regions: n, bytes: regions.reduce((a, r) => a + r.size, 0) }, 'guest memory mapped');
        break;
      }
      case Req.SET_VRING_NUM: {
        takeFds(0);
        need(8);
        const num = p.readUInt32LE(4);
        if (num === 0 || num > 32768 || num & (num - 1)) throw new Error(`vring size ${num}`);
        ring(p.readUInt32LE(0)).num = num;
        break;
      }
      case Req.SET_VRING_ADDR: {
        takeFds(0);
        need(40);
        const r = ring(p.readUInt32LE(0));
        r.addr = { desc: Number(p.readBigUInt64LE(8)), used: Number(p.readBigUInt64LE(16)), avail: Number(p.readBigUInt64LE(24)) };
        break;
      }
      case Req.SET_VRING_BASE:
        takeFds(0);
        need(8);
        ring(p.readUInt32LE(0)).base = p.readUInt32LE(4) & 0xffff;
        break;
      case Req.GET_VRING_BASE: {
        takeFds(0);
        need(8);
        const index = p.readUInt32LE(0);
        const r = ring(index);
        const base = r.vq ? r.vq.lastAvail : r.base;
        this.stopRing(index);
        const out = Buffer.alloc(8);
        out.writeUInt32LE(index, 0);
        out.writeUInt32LE(base, 4);
        this.reply(h.request, out);
        replied = true;
        break;
      }
      case Req.SET_VRING_KICK:
      case Req.SET_VRING_CALL:
      case Req.SET_VRING_ERR: {
        need(8);
        const v = p.readBigUInt64LE(0);
        const r = ring(Number(v & VRING_IDX_MASK));
        const nofd = (v & VRING_NOFD_MASK) !== 0n;
        const fd = nofd ? (takeFds(0), -1) : takeFds(1)[0]!;
        if (h.request === Req.SET_VRING_KICK) {
          this.stopRing(Number(v & VRING_IDX_MASK));
          r.kickFd = fd;
          if (fd >= 0) this.startRing(Number(v & VRING_IDX_MASK));
        } else if (h.request === Req.SET_VRING_CALL) {
          closeFd(r.callFd);
          r.callFd = fd;
        } else {
          closeFd(r.errFd);
          r.errFd = fd;
        }
        break;
      }
      case Req.SET_VRING_ENABLE: {
        takeFds(0);
        need(8);
        const index = p.readUInt32LE(0);
        const r = ring(index);
        r.enabled = p.readUInt32LE(4) !== 0;
        if (r.enabled && r.vq) this.process(index);
        break;
      }
      case Req.SET_BACKEND_REQ_FD:
      case Req.SET_LOG_FD:
        for (const fd of fds) closeFd(fd);
        break;
      case Req.SET_VRING_ENDIAN:
        takeFds(0);
        break;
      default:
        for (const fd of fds) closeFd(fd);
        this.log.warn({ request: h.request }, 'unsupported vhost-user request');
        if (h.flags & FLAG_NEED_REPLY && this.protocolFeatures & PF.REPLY_ACK) this.reply(h.request, u64Payload(1n));
        return;
    }
    if (!replied && h.flags & FLAG_NEED_REPLY && this.protocolFeatures & PF.REPLY_ACK) this.reply(h.request, u64Payload(0n));
  }

  // ---- rings -------------------------------------------------------------------------

  private buildQueue(index: number): boolean {
    const r = this.rings[index]!;
    if (!this.mem || !r.addr || !r.num) return false;
    try {
      r.vq = new Virtqueue(
        this.mem,
        r.num,
        {
          desc: this.mem.sliceVa(r.addr.desc, 16 * r.num),
          avail: this.mem.sliceVa(r.addr.avail, 6 + 2 * r.num),
          used: this.mem.sliceVa(r.addr.used, 6 + 8 * r.num),
        },
        {
          eventIdx: (this.features & F.VIRTIO_RING_F_EVENT_IDX) !== 0n,
          indirect: (this.features & F.VIRTIO_RING_F_INDIRECT_DESC) !== 0n,
        },
      );
      r.vq.setBase(r.base);
      return true;
    } catch (err) {
      this.log.error({ ring: index, err: (err as Error).message }, 'cannot set up vring');
      r.vq = undefined;
      return false;
    }
  }

  /** A ring runs once it has a kick descriptor; without protocol features it is enabled too. */
  private startRing(index: number): void {
    const r = this.rings[index]!;
    if (!this.buildQueue(index)) return;
    if (!(this.features & F.VHOST_USER_F_PROTOCOL_FEATURES)) r.enabled = true;
    r.started = true;
    r.kickWatch = native().watch(r.kickFd, () => this.onKick(index));
    this.process(index); // buffers made available before the kick descriptor arrived
  }

  private stopRing(index: number): void {
    const r = this.rings[index]!;
    if (r.kickWatch) native().unwatch(r.kickWatch);
    r.kickWatch = undefined;
    closeFd(r.kickFd);
    r.kickFd = -1;
    if (r.vq) r.base = r.vq.lastAvail;
    r.vq = undefined;
    r.started = false;
    r.generation++;
  }

  private onKick(index: number): void {
    const r = this.rings[index]!;
    try {
      readSync(r.kickFd, Buffer.alloc(8));
    } catch {
      /* EAGAIN: already drained */
    }
    this.process(index);
  }

  private process(index: number): void {
    const r = this.rings[index]!;
    const vq = r.vq;
    if (!vq || !r.enabled || this.closed) return;
    for (;;) {
      let chain: Chain | null;
      try {
        chain = vq.pop();
      } catch (err) {
        if (err instanceof ChainError) {
          this.stats.badChains++;
          this.log.warn({ ring: index, head: err.head, err: err.message }, 'bad descriptor chain returned unanswered');
          vq.push(err.head, 0);
          this.scheduleNotify(index);
          continue;
        }
        this.log.error({ ring: index, err: (err as Error).message }, 'ring broken; stopping it until the VMM resets it');
        this.stopRing(index);
        return;
      }
      if (!chain) {
        vq.armKick();
        if (!vq.hasWork()) return; // a buffer made available while we armed: go on
        continue;
      }
      this.serve(index, r.generation, vq, chain);
    }
  }

  private serve(index: number, generation: number, vq: Virtqueue, chain: Chain): void {
    this.stats.requests++;
    this.stats.perQueue[index] = (this.stats.perQueue[index] ?? 0) + 1;
    const request = Buffer.concat(chain.readable); // a private copy: the guest cannot change it under us
    let done = false;
    const complete = (len: number) => {
      if (done) return;
      done = true;
      const r = this.rings[index]!;
      if (r.generation !== generation || r.vq !== vq || this.closed) return; // ring stopped meanwhile
      vq.push(chain.head, len);
      this.scheduleNotify(index);
    };
    // Reply payload may be written in place after the out header (zero-copy READ).
    const first = chain.writable[0];
    const target = first && first.length >= 16 ? { payload: [first.subarray(16), ...chain.writable.slice(1)].filter((b) => b.length > 0) } : undefined;
    this.sink.handle(
      request,
      (chunks, placed = 0) => {
        this.stats.zeroCopyBytes += placed;
        complete(scatter(chunks, chain.writable) + placed);
      },
      target,
    );
    // Requests that get no reply (FORGET, BATCH_FORGET) still return their chain.
    const op = request.length >= 8 ? request.readUInt32LE(4) : 0;
    if (!done && (op === Opcode.FUSE_FORGET || op === Opcode.FUSE_BATCH_FORGET || request.length < 16)) complete(0);
  }

  private scheduleNotify(index: number): void {
    const r = this.rings[index]!;
    if (r.notifyScheduled) return;
    r.notifyScheduled = true;
    // One interrupt for everything completed in this turn of the event loop.
    setImmediate(() => {
      r.notifyScheduled = false;
      if (!r.vq || r.callFd < 0) return;
      if (r.vq.shouldNotify()) {
        try {
          writeSync(r.callFd, ONE);
        } catch (err) {
          this.log.warn({ ring: index, err: (err as Error).message }, 'cannot signal the guest');
        }
      }
    });
  }
}

const ONE = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]);

/** Copies a reply into the chain's writable buffers; a reply that does not fit becomes EIO. */
function scatter(chunks: Uint8Array[], writable: Uint8Array[]): number {
  let total = 0;
  for (const c of chunks) total += c.length;
  let capacity = 0;
  for (const w of writable) capacity += w.length;
  if (total > capacity) {
    if (capacity < 16 || chunks[0]!.length < 16) return 0;
    const hdr = Buffer.from(chunks[0]!.subarray(0, 16));
    hdr.writeUInt32LE(16, 0);
    hdr.writeInt32LE(-5, 4); // EIO
    chunks = [hdr];
    total = 16;
  }
  let wi = 0;
  let wo = 0;
  for (const c of chunks) {
    let co = 0;
    while (co < c.length) {
      const w = writable[wi]!;
      const n = Math.min(w.length - wo, c.length - co);
      w.set(c.subarray(co, co + n), wo);
      co += n;
      wo += n;
      if (wo === w.length) {
        wi++;
        wo = 0;
      }
    }
  }
  return total;
}

function closeFd(fd: number): void {
  if (fd >= 0) {
    try {
      closeSync(fd);
    } catch {
      /* already closed */
    }
  }
}

