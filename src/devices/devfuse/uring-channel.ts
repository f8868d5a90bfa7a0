/**
 * FUSE over io_uring (Linux 6.14+): requests arrive in ring entries the daemon registered
 * (one queue per possible CPU; the kernel uses the queue of the CPU the caller runs on) and
 * each reply goes back with the entry in one COMMIT_AND_FETCH command, the commands of one
 * event-loop turn in one system call. /dev/fuse still carries INIT, FORGET, INTERRUPT and
 * notifications, so the device keeps polling it.
 *
 * Entry layout (struct fuse_uring_req_header): the fuse_in_header (request) or
 * fuse_out_header (reply) at 0, the opcode's fixed struct at 128, fuse_uring_ent_in_out at
 * 256 (commit id at +8, payload size at +16). The rest of a request (names, WRITE data)
 * is in the payload buffer; a reply's body goes there too. READ data is read straight into
 * the payload and WRITE data written straight from it.
 */
import { readFileSync } from 'node:fs';
import { Errno, errnoName } from '../../fuse/errno.js';
import { Opcode, SIZE } from '../../fuse/opcodes.js';
import { type ReplyTarget, type Session, needsReply } from '../../fuse/session.js';
import { native } from '../../native/native.js';
import type { Logger } from '../../util/log.js';

const CMD_REGISTER = 1;
const CMD_COMMIT_AND_FETCH = 2;
const OP_IN = 128;
const OP_IN_MAX = 128;
const ENT_IN_OUT = 256;
const HEADER_BYTES = 288;
/** Header slots are 512 bytes apart in one buffer; payloads start on page boundaries. */
const HEADER_STRIDE = 512;
const PAGE = 4096;

interface UringAddon {
  fuseUringCreate(devFd: number, entries: number, onComplete: (results: Float64Array) => void): unknown;
  fuseUringCmd(handle: unknown, cmd: number, entry: number, qid: number, header: Uint8Array, payload: Uint8Array): number;
  fuseUringSubmit(handle: unknown): number;
  fuseUringClose(handle: unknown): void;
  fuseUringMemory(bytes: number): ArrayBuffer;
}

interface Entry {
  index: number;
  qid: number;
  header: Buffer;
  payload: Buffer;
  /** Unexpected command failures in a row: the entry is given up after a few. */
  failures: number;
}

/** Whether the kernel lets FUSE connections use io_uring (an administrator's choice). */
export function fuseUringEnabled(): boolean {
  try {
    return readFileSync('/sys/module/fuse/parameters/enable_uring', 'utf8').trim() === 'Y';
  } catch {
    return false;
  }
}

/** The kernel makes one queue per possible CPU ("0-15", "0,2-3"). */
export function possibleCpus(text = readFileSync('/sys/devices/system/cpu/possible', 'utf8')): number {
  let max = -1;
  for (const part of text.trim().split(',')) {
    const [a, b] = part.split('-').map(Number);
    max = Math.max(max, b ?? a ?? -1);
  }
  if (!(max >= 0)) throw new Error(`cannot parse possible CPUs: ${JSON.stringify(text)}`);
  return max + 1;
}

export class FuseUringChannel {
  private readonly addon = native() as unknown as UringAddon;
  private handle: unknown;
  private entries: Entry[] = [];
  private flushScheduled = false;
  private live = 0;
  readonly queues: number;
  /** Requests taken from the ring. */
  served = 0;

  /** Creates the ring (before INIT is answered: only then may the daemon offer io_uring). */
  constructor(
    devFd: number,
    private readonly session: Session,
    private readonly log: Logger,
    /** Entries per queue: how many requests one CPU's callers may have in flight here. */
    readonly depth: number,
    queues = possibleCpus(),
  ) {
    this.queues = queues;
    this.handle = this.addon.fuseUringCreate(devFd, queues * depth, (r) => this.complete(r));
  }

  /**
   * Registers every entry once INIT has been answered (the kernel needs the negotiated
   * sizes). The kernel holds new requests until every queue has an entry.
   */
  register(payloadBytes: number): void {
    const payload = Math.ceil(Math.max(payloadBytes, 2 * PAGE) / PAGE) * PAGE;
    const n = this.queues * this.depth;
    const headers = Buffer.alloc(n * HEADER_STRIDE);
    // One mapping for all payloads, page-aligned for O_DIRECT: untouched pages cost no memory,
    // and the kernel hands out the most recently returned entry first, so few are touched.
    const payloads = Buffer.from(this.addon.fuseUringMemory(n * payload));
    this.live = n;
    for (let i = 0; i < n; i++) {
      const e: Entry = {
        index: i,
        qid: i % this.queues,
        header: headers.subarray(i * HEADER_STRIDE, i * HEADER_STRIDE + HEADER_BYTES),
        payload: payloads.subarray(i * payload, (i + 1) * payload),
        failures: 0,
      };
      this.entries.push(e);
      this.cmd(CMD_REGISTER, e);
    }
    const r = this.addon.fuseUringSubmit(this.handle);
    if (r < 0) throw new Error(`FUSE io_uring registration: ${errnoName(-r)}`);
  }

  close(): void {
    if (this.handle === undefined) return;
    this.addon.fuseUringClose(this.handle);
    this.handle = undefined;
  }

  private cmd(cmd: number, e: Entry): void {
    if (this.handle === undefined) return;
    const r = this.addon.fuseUringCmd(this.handle, cmd, e.index, e.qid, e.header, e.payload);
    if (r < 0) {
      this.lose(e, -r);
      return;
    }
    this.scheduleFlush();
  }

  /** The commands of one event-loop turn go to the kernel in one system call. */
  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      if (this.handle === undefined) return;
      const r = this.addon.fuseUringSubmit(this.handle);
      if (r === -Errno.EBUSY || r === -Errno.EAGAIN || r === -Errno.EINTR) this.scheduleFlush();
      else if (r < 0) this.log.error({ err: errnoName(-r) }, 'FUSE io_uring submit failed');
    });
  }

  private complete(results: Float64Array): void {
    for (let i = 0; i < results.length; i += 2) {
      const e = this.entries[results[i]!];
      const res = results[i + 1]!;
      if (!e) continue;
      if (res < 0) this.failed(e, -res);
      else {
        e.failures = 0;
        this.serve(e);
      }
    }
  }

  /** A command ended in error: the connection ended, or the entry is re-registered. */
  private failed(e: Entry, errno: number): void {
    if (errno === Errno.ENOTCONN || errno === Errno.ECANCELED || errno === Errno.ECONNABORTED || this.handle === undefined) {
      this.lose(e, 0);
      return;
    }
    this.log.warn({ entry: e.index, qid: e.qid, err: errnoName(errno) }, 'FUSE io_uring entry failed; registering it again');
    if (++e.failures > 3) this.lose(e, errno);
    else this.cmd(CMD_REGISTER, e);
  }

  private lose(e: Entry, errno: number): void {
    if (errno) this.log.error({ entry: e.index, qid: e.qid, err: errnoName(errno) }, 'FUSE io_uring entry given up');
    if (--this.live === 0 && this.handle !== undefined) this.log.debug({}, 'FUSE io_uring entries all ended');
  }

  /** Hands the request in entry `e` to the session; its reply commits the entry. */
  private serve(e: Entry): void {
    this.served++;
    const h = e.header;
    const len = h.readUInt32LE(0);
    const opcode = h.readUInt32LE(4);
    const extlen = h.readUInt16LE(36);
    const payloadSz = h.readUInt32LE(ENT_IN_OUT + 16);
    const opSize = len - SIZE.in_header - payloadSz;
    if (opSize < 0 || opSize > OP_IN_MAX || payloadSz > e.payload.length) {
      // Only a kernel that lays entries out differently gets here: fail the request, keep the entry.
      this.log.error({ len, opcode, payloadSz }, 'FUSE io_uring request does not fit the entry layout');
      this.commitRaw(e, -Errno.EIO);
      return;
    }
    // A private copy of the request (backends may keep its bytes past the entry's reuse),
    // except a plain WRITE's data: that stays in the entry and the backend writes it from there.
    const dataInPlace = opcode === Opcode.FUSE_WRITE && extlen === 0 && payloadSz > 0;
    const buf = Buffer.allocUnsafe(dataInPlace ? SIZE.in_header + opSize : len);
    h.copy(buf, 0, 0, SIZE.in_header);
    h.copy(buf, SIZE.in_header, OP_IN, OP_IN + opSize);
    let target: ReplyTarget | undefined;
    if (dataInPlace) target = { payload: [], writeSrc: [e.payload.subarray(0, payloadSz)] };
    else {
      e.payload.copy(buf, SIZE.in_header + opSize, 0, payloadSz);
      if (opcode === Opcode.FUSE_READ) target = { payload: [e.payload] };
    }
    let answered = false;
    this.session.handle(
      buf,
      (chunks, placed = 0) => {
        if (answered) return;
        answered = true;
        this.reply(e, chunks, placed);
      },
      target,
    );
    // Requests without a reply (NOTIFY_REPLY) still give their entry back.
    if (!needsReply(opcode) && !answered) {
      answered = true;
      this.commitRaw(e, 0);
    }
  }

  /** chunks[0] is the fuse_out_header; the body follows it in the payload (or was placed there). */
  private reply(e: Entry, chunks: Uint8Array[], placed: number): void {
    let off = 0;
    for (let i = 1; i < chunks.length; i++) {
      const c = chunks[i]!;
      if (off + c.length > e.payload.length) {
        this.log.error({ bytes: off + c.length, room: e.payload.length }, 'reply larger than the FUSE io_uring payload');
        this.commitRaw(e, -Errno.EIO);
        return;
      }
      e.payload.set(c, off);
      off += c.length;
    }
    if (placed && off) {
      this.log.error({}, 'reply mixes placed data with a body');
      this.commitRaw(e, -Errno.EIO);
      return;
    }
    e.header.set(chunks[0]!.subarray(0, SIZE.out_header), 0);
    e.header.writeUInt32LE(placed || off, ENT_IN_OUT + 16);
    this.cmd(CMD_COMMIT_AND_FETCH, e);
  }

  /** A reply of only a header, built here. */
  private commitRaw(e: Entry, error: number): void {
    const h = e.header;
    const unique = h.readBigUInt64LE(8);
    h.writeUInt32LE(SIZE.out_header, 0);
    h.writeInt32LE(error, 4);
    h.writeBigUInt64LE(unique, 8);
    h.writeUInt32LE(0, ENT_IN_OUT + 16);
    this.cmd(CMD_COMMIT_AND_FETCH, e);
  }
}
