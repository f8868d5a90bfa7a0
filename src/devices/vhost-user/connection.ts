/**
 * One vhost-user connection from a VMM: the message protocol (features, memory table,
 * vring set-up and state), the rings it sets up, and FUSE requests carried over them.
 * A protocol error ends the connection; a broken ring stops that ring; a bad descriptor
 * chain is returned unanswered. None of them reaches past this connection.
 */
import { closeSync } from 'node:fs';
import { Opcode } from '../../fuse/opcodes.js';
import type { ReplyTarget } from '../../fuse/session.js';
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
import type { QueueThreadSink, QueueThreads } from './queue-threads.js';
import { scatter, splitRequest } from './fuse-request.js';
import { RingRunner } from './ring-runner.js';
import { type FastPathSpec, Virtqueue, ringViews } from './virtqueue.js';
import { offloadPays } from '../../util/loop-load.js';
import { AT_ONCE_MAX } from '../../fs/shared-handles.js';

/** What a connection asks of the device that owns it. */
export interface RequestSink {
  /**
   * Handles one FUSE request; `reply` is called at most once with the reply bytes, of which
   * `placed` payload bytes were already written into `target` (the guest's buffers).
   */
  handle(request: Buffer, reply: (chunks: Uint8Array[], placed?: number) => void, target?: ReplyTarget): void;
  /** What request queue q's native data path may serve, if it has one. */
  fastPath?(q: number): FastPathSpec | undefined;
}

interface Vring {
  num: number;
  addr?: { desc: number; used: number; avail: number };
  /** Where the ring resumes (SET_VRING_BASE, or where it stopped). */
  base: number;
  kickFd: number;
  callFd: number;
  errFd: number;
  enabled: boolean;
  /** Served on this thread... */
  runner?: RingRunner;
  /** ...or by a queue thread, with this generation. */
  remoteGen?: number;
}

export const SUPPORTED_FEATURES = F.VIRTIO_F_VERSION_1 | F.VIRTIO_RING_F_INDIRECT_DESC | F.VIRTIO_RING_F_EVENT_IDX | F.VHOST_USER_F_PROTOCOL_FEATURES;
export const SUPPORTED_PROTOCOL_FEATURES = PF.MQ | PF.REPLY_ACK;

export class VhostUserConnection implements QueueThreadSink {
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
    /** Serve the request queues (1..) there; the hiprio queue stays on this thread. */
    private readonly threads?: QueueThreads,
  ) {
    this.rings = Array.from({ length: queues }, () => ({ num: 0, base: 0, kickFd: -1, callFd: -1, errFd: -1, enabled: false }));
    if (threads) threads.sink = this;
    this.watch = native().watch(fd, () => this.onReadable());
  }

  close(reason?: string): void {
    if (this.closed) return;
    this.closed = true;
    if (reason) this.log.warn({ reason }, 'vhost-user connection closed');
    if (this.watch) native().unwatch(this.watch);
    for (let i = 0; i < this.rings.length; i++) {
      try {
        this.stopRing(i);
      } catch (err) {
        this.log.error({ ring: i, err: (err as Error).message }, 'cannot stop vring');
      }
    }
    try {
      this.threads?.setMemory(undefined);
    } catch {
      /* a failed thread holds nothing we can release */
    }
    if (this.threads?.sink === this) this.threads.sink = undefined;
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
        const mem = GuestMemory.map(regions, takeFds(n));
        // Running rings carry on over the new table with their indices, so chains in flight
        // still complete; a ring the new table no longer holds is stopped.
        this.rings.forEach((r, i) => {
          if (!r.runner && r.remoteGen === undefined) return;
          try {
            if (r.runner) r.runner.remap(mem, ringViews(mem, r.addr!, r.num));
            else this.queueOver(mem, r); // checked here with the same rules before its thread remaps it
          } catch (err) {
            this.log.error({ ring: i, err: (err as Error).message }, 'vring outside the new memory table; stopped');
            this.deactivate(i);
          }
        });
        this.mem = mem;
        this.threads?.setMemory(mem);
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
        this.stopRing(index);
        const out = Buffer.alloc(8);
        out.writeUInt32LE(index, 0);
        out.writeUInt32LE(r.base, 4);
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
        const index = Number(v & VRING_IDX_MASK);
        if (h.request === Req.SET_VRING_KICK) {
          this.stopRing(index);
          r.kickFd = fd;
          // A ring starts once it has a kick descriptor; without protocol features it is enabled too.
          if (!(this.features & F.VHOST_USER_F_PROTOCOL_FEATURES)) r.enabled = true;
          this.activate(index);
        } else if (h.request === Req.SET_VRING_CALL) {
          const old = r.callFd;
          r.callFd = fd;
          r.runner?.setCallFd(fd);
          if (r.remoteGen !== undefined) this.threads!.setCallFd(index, fd);
          closeFd(old); // only now that no thread signals it any more
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
        if (r.enabled) this.activate(index);
        else this.deactivate(index);
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

  // ---- rings ----------------------------------------------------------------------

  /** Starts serving ring `index` if it is complete (memory, size, addresses, kick) and enabled. */
  private activate(index: number): void {
    const r = this.rings[index]!;
    if (r.runner || r.remoteGen !== undefined || this.closed) return;
    if (!this.mem || !r.addr || !r.num || r.kickFd < 0 || !r.enabled) return;
    let vq: Virtqueue;
    try {
      // Built here even for a queue thread: a bad ring address is refused before it goes there.
      vq = this.queueOver(this.mem, r);
    } catch (err) {
      this.log.error({ ring: index, err: (err as Error).message }, 'cannot set up vring');
      return;
    }
    if (this.threads && index > 0) {
      const { eventIdx, indirect } = this.ringFeatures();
      r.remoteGen = this.threads.start({ q: index, num: r.num, addr: r.addr, base: r.base, eventIdx, indirect, kickFd: r.kickFd, callFd: r.callFd });
      return;
    }
    vq.setBase(r.base);
    const fast = index > 0 ? this.sink.fastPath?.(index) : undefined;
    if (fast) vq.enableFastPath(fast);
    const runner: RingRunner = new RingRunner(vq, r.kickFd, r.callFd, {
      request: (chain) => {
        const { request, writeSrc } = splitRequest(chain.readable);
        this.serve(index, request, chain.writable, (len) => runner.complete(chain.head, len), writeSrc);
      },
      badChain: (head, message) => this.badChain(index, head, message),
      broken: (message) => this.ringBroken(index, message),
      notifyFailed: (message) => this.notifyFailed(index, message),
      // Writes at once are the event loop's time: not where the loop is saturated and
      // io_uring's workers can run them on cores to spare (see passthrough/file-io.ts).
      writeAtOnceMax: () => (offloadPays() ? 0 : AT_ONCE_MAX),
    });
    r.runner = runner;
    runner.start();
  }

  private ringFeatures(): { eventIdx: boolean; indirect: boolean } {
    return { eventIdx: (this.features & F.VIRTIO_RING_F_EVENT_IDX) !== 0n, indirect: (this.features & F.VIRTIO_RING_F_INDIRECT_DESC) !== 0n };
  }

  /** Ring r over `mem`; throws where a part lies outside it or is misaligned. */
  private queueOver(mem: GuestMemory, r: Vring): Virtqueue {
    return new Virtqueue(mem, r.num, ringViews(mem, r.addr!, r.num), this.ringFeatures());
  }

  /** Stops serving ring `index`, keeping where it stopped; returns whether it was running. */
  private deactivate(index: number): boolean {
    const r = this.rings[index]!;
    if (r.runner) {
      r.base = r.runner.stop();
      r.runner = undefined;
      return true;
    }
    if (r.remoteGen !== undefined) {
      r.remoteGen = undefined;
      const base = this.threads!.stop(index);
      if (base >= 0) r.base = base;
      return true;
    }
    return false;
  }

  private stopRing(index: number): void {
    const r = this.rings[index]!;
    this.deactivate(index);
    closeFd(r.kickFd); // only now that no thread watches it any more
    r.kickFd = -1;
  }

  // ---- requests from queue threads (QueueThreadSink) -----------------------------------

  request(q: number, gen: number, head: number, request: Buffer, writableGpa: number[], writeSrcGpa?: number[]): void {
    const r = this.rings[q];
    if (!r || r.remoteGen !== gen || !this.mem) return; // the ring has stopped since
    let writable: Uint8Array[];
    let writeSrc: Uint8Array[] | undefined;
    try {
      writable = this.views(writableGpa);
      if (writeSrcGpa) writeSrc = this.views(writeSrcGpa);
    } catch {
      return; // checked by the thread against the same memory; cannot happen unless it changed
    }
    this.serve(
      q,
      request,
      writable,
      (len) => {
        if (r.remoteGen === gen && !this.closed) this.threads!.complete(q, gen, head, len);
      },
      writeSrc,
    );
  }

  /** Guest memory at (guest-physical address, length) pairs. */
  private views(gpa: number[]): Uint8Array[] {
    const out: Uint8Array[] = [];
    for (let i = 0; i < gpa.length; i += 2) out.push(this.mem!.slice(gpa[i]!, gpa[i + 1]!));
    return out;
  }

  badChain(q: number, head: number, message: string): void {
    this.stats.badChains++;
    this.log.warn({ ring: q, head, err: message }, 'bad descriptor chain returned unanswered');
  }

  broken(q: number, gen: number, message: string): void {
    if (this.rings[q]?.remoteGen === gen) this.ringBroken(q, message);
  }

  notifyFailed(q: number, message: string): void {
    this.log.warn({ ring: q, err: message }, 'cannot signal the guest');
  }

  threadFailed(reason: string): void {
    this.close(`queue thread failed: ${reason}`);
  }

  private ringBroken(q: number, message: string): void {
    this.log.error({ ring: q, err: message }, 'ring broken; stopping it until the VMM resets it');
    try {
      this.stopRing(q);
    } catch (err) {
      this.close(`cannot stop vring ${q}: ${(err as Error).message}`);
    }
  }

  // ---- serving -----------------------------------------------------------------------

  /** `writeSrc`: a WRITE's data, left in guest memory (see splitRequest). */
  private serve(index: number, request: Buffer, writable: Uint8Array[], complete: (len: number) => void, writeSrc?: Uint8Array[]): void {
    this.stats.requests++;
    this.stats.perQueue[index] = (this.stats.perQueue[index] ?? 0) + 1;
    let done = false;
    const finish = (len: number) => {
      if (done) return;
      done = true;
      complete(len);
    };
    const op = request.length >= 8 ? request.readUInt32LE(4) : 0;
    this.sink.handle(
      request,
      (chunks, placed = 0) => {
        this.stats.zeroCopyBytes += placed;
        finish(scatter(chunks, writable) + placed);
      },
      op === Opcode.FUSE_READ ? readTarget(writable) : writeSrc ? { payload: [], writeSrc } : undefined,
    );
    // Requests that get no reply (FORGET, BATCH_FORGET) still return their chain.
    if (!done && (op === Opcode.FUSE_FORGET || op === Opcode.FUSE_BATCH_FORGET || request.length < 16)) finish(0);
  }
}

/** Where READ data may be written in place: the writable buffers after the out header. */
function readTarget(writable: Uint8Array[]): { payload: Uint8Array[] } | undefined {
  const first = writable[0];
  if (!first || first.length < 16) return undefined;
  const payload = first.length > 16 ? [first.subarray(16)] : [];
  for (let i = 1; i < writable.length; i++) if (writable[i]!.length > 0) payload.push(writable[i]!);
  return { payload };
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

