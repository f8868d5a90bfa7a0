/**
 * A FUSE session: takes request buffers from a device, validates and decodes them,
 * calls the FileSystem, and sends exactly one reply per request (none for FORGET,
 * BATCH_FORGET, NOTIFY_REPLY). Nothing a peer sends can make `handle` throw.
 */
import type { FileSystem, InitInfo, RequestContext } from '../fs/api.js';
import { Errno, FsError, errnoName, errnoOf } from './errno.js';
import { type Negotiation, decodeInitIn, encodeInitOut, negotiate } from './init.js';
import { FUSE_INIT_BSWAP_RESERVED, CUSE_INIT_BSWAP_RESERVED, InitFlag, NotifyCode, Opcode, SIZE, opcodeName } from './opcodes.js';
import { type InHeader, decodeArgs, decodeExtensions, decodeInHeader } from './request-codec.js';
import { RequestSpecs, SetxattrExtSpec, WriteInSpec, hasSpec } from './request-specs.js';
import { outHeader, writeOutHeader } from './reply-codec.js';
import { runOp, type OpContext, type OpResult } from './ops.js';
import { Reader, WireError, Writer } from './wire.js';
import { wantedFlags } from './capabilities.js';
import { iovLength } from '../util/iov.js';
import type { OpStats } from './op-stats.js';

/**
 * Sends one reply (or notification) as a single message: the chunks are written together.
 * `placed` counts payload bytes a backend already wrote into the request's ReplyTarget;
 * they follow the chunks.
 */
export type SendFn = (chunks: Uint8Array[], placed?: number) => void;

/**
 * Request and reply data a transport lets stay in place (virtio-fs: guest memory).
 * `payload`: where READ data may be written (the guest's writable buffers after the 16-byte
 * out header), straight from the backend. `writeSrc`: WRITE data, which then does not
 * follow fuse_write_in in the request buffer (whose header still counts it).
 */
export interface ReplyTarget {
  payload: Uint8Array[];
  writeSrc?: Uint8Array[];
}

export interface TransportInfo {
  /** For logs: "devfuse", "virtio-fs". */
  name: string;
  /** Largest WRITE payload the transport can carry. */
  maxWrite: number;
  /** The transport can deliver unsolicited notifications (virtio-fs cannot). */
  notify?: (chunks: Uint8Array[]) => Promise<void>;
  /**
   * Supplementary groups of a caller, for requests that do not carry them (the kernel
   * sends them only with create-type requests). Local transports can read them from /proc.
   * `uid` and `gid` are the request's (a process that changed them has changed its groups).
   */
  groupsOf?: (pid: number, uid: number, gid: number) => readonly number[];
  /** Kernel passthrough backing files (/dev/fuse on Linux 6.9+). */
  backing?: import('../fs/api.js').KernelPassthrough;
  /** virtio-fs: no interrupts, DESTROY at unmount, submounts. */
  virtiofs?: boolean;
  /** /dev/fuse with a FUSE io_uring ready to register once INIT is answered. */
  ioUring?: boolean;
}

export interface SessionLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export interface SessionOptions {
  transport: TransportInfo;
  log?: SessionLogger;
  /** Log every request and reply at debug level. */
  trace?: boolean;
  /** INIT flags to withhold even if both sides support them. */
  disableFlags?: bigint;
  /** Per-opcode counts and latencies, for metrics (recorded only when given). */
  opStats?: OpStats;
}

export type SessionState = 'awaiting-init' | 'running' | 'destroyed' | 'broken';

export interface SessionStats {
  requests: number;
  errors: number;
  malformed: number;
  inFlight: number;
}

const silent: SessionLogger = { debug() {}, info() {}, warn() {}, error() {} };

export class Session {
  state: SessionState = 'awaiting-init';
  /** Why the session broke, when it did. */
  brokenReason?: string;
  info?: InitInfo;
  readonly stats: SessionStats = { requests: 0, errors: 0, malformed: 0, inFlight: 0 };
  private readonly inflight = new Map<bigint, RequestState>();
  private readonly retrieves = new Map<bigint, { resolve: (b: Uint8Array) => void; reject: (e: Error) => void }>();
  private nextNotifyUnique = 1n;
  private setxattrExt = false;
  private readonly log: SessionLogger;
  private readonly destroyWaiters: Array<() => void> = [];

  constructor(
    readonly fs: FileSystem,
    readonly options: SessionOptions,
  ) {
    this.log = options.log ?? silent;
  }

  private readonly runningWaiters: Array<() => void> = [];

  /** Resolves once INIT has been answered (or the session broke). */
  whenRunning(): Promise<void> {
    if (this.state !== 'awaiting-init') return Promise.resolve();
    return new Promise((r) => this.runningWaiters.push(r));
  }

  /** Resolves once DESTROY arrived (or the session broke). */
  whenDestroyed(): Promise<void> {
    if (this.state === 'destroyed' || this.state === 'broken') return Promise.resolve();
    return new Promise((r) => this.destroyWaiters.push(r));
  }

  /**
   * Handles one request buffer. `send` is called at most once, with the full reply.
   * Never throws; never rejects. Returns true when the request was answered at once and
   * nothing holds `buf` any more (a transport may read the next request into it); false
   * when the request (or a backend) may still use it.
   */
  handle(buf: Uint8Array, send: SendFn, target?: ReplyTarget): boolean {
    this.stats.requests++;
    const outOfLine = target?.writeSrc ? iovLength(target.writeSrc) : 0;
    let h: InHeader;
    try {
      h = decodeInHeader(buf, outOfLine);
      if (outOfLine && (h.opcode !== Opcode.FUSE_WRITE || h.total_extlen !== 0)) throw new WireError('data out of line for a request other than a plain WRITE');
    } catch (err) {
      this.malformed(buf, send, err);
      return true;
    }
    const reply = new PendingReply(this, h, send, this.options.opStats ? performance.now() : 0);
    if (this.options.opStats && !needsReply(h.opcode)) this.options.opStats.record(h.opcode, 0, false);
    try {
      return this.route(h, buf, reply, target);
    } catch (err) {
      // Decoding errors land here; anything a backend throws is caught in runRequest.
      if (err instanceof WireError) {
        this.stats.malformed++;
        if (this.options.opStats) this.options.opStats.malformed++;
        this.log.warn({ op: opcodeName(h.opcode), unique: h.unique, err: err.message }, 'malformed request');
        if (needsReply(h.opcode)) reply.error(Errno.EINVAL);
      } else {
        this.log.error({ op: opcodeName(h.opcode), err }, 'internal error handling request');
        if (needsReply(h.opcode)) reply.error(Errno.EIO);
      }
    }
    return true;
  }

  private malformed(buf: Uint8Array, send: SendFn, err: unknown): void {
    this.stats.malformed++;
    if (this.options.opStats) this.options.opStats.malformed++;
    const msg = err instanceof Error ? err.message : String(err);
    this.log.warn({ bytes: buf.length, err: msg }, 'malformed request header');
    // With at least len/opcode/unique readable, answer so the peer's request does not hang.
    if (buf.length >= 16) {
      const r = new Reader(buf);
      r.skip(4);
      const opcode = r.u32();
      const unique = r.u64big();
      if (needsReply(opcode) && unique !== 0n) {
        const w = new Writer(SIZE.out_header);
        writeOutHeader(w, SIZE.out_header, -Errno.EIO, unique);
        this.safeSend(send, [w.finish()]);
      }
    }
  }

  /** Sends a reply (called once per request by PendingReply; `started`: performance.now() at arrival). */
  sendReply(h: InHeader, send: SendFn, error: number, body: Uint8Array[], placed: number, started: number): void {
    this.options.opStats?.record(h.opcode, (performance.now() - started) / 1000, error !== 0);
    let len = SIZE.out_header + placed;
    for (const b of body) len += b.length;
    const header = outHeader(len, error ? -error : 0, h.unique);
    if (this.options.trace) {
      this.log.debug({ unique: h.unique, op: opcodeName(h.opcode), error: error ? errnoName(error) : 0, len }, 'reply');
    }
    if (error) this.stats.errors++;
    this.safeSend(send, body.length ? [header, ...body] : [header], placed);
  }

  /** Logs a backend's attempt to answer one request twice. */
  secondReply(h: InHeader): void {
    this.log.error({ op: opcodeName(h.opcode), unique: h.unique }, 'second reply to one request suppressed');
  }

  private safeSend(send: SendFn, chunks: Uint8Array[], placed = 0): void {
    try {
      send(chunks, placed);
    } catch (err) {
      const errno = errnoOf(err);
      // ENOENT: the kernel already dropped the request (interrupted); nothing to do.
      if (errno !== Errno.ENOENT) this.log.warn({ err: (err as Error).message }, 'sending reply failed');
    }
  }

  /** Returns whether the request is done with (see handle). */
  private route(h: InHeader, buf: Uint8Array, reply: Reply, target?: ReplyTarget): boolean {
    const op = h.opcode;
    if (op === FUSE_INIT_BSWAP_RESERVED || op === CUSE_INIT_BSWAP_RESERVED) {
      this.break('peer speaks big-endian FUSE; dpfs supports little-endian peers only');
      reply.error(Errno.EPROTO);
      return true;
    }
    if (this.state === 'broken') {
      if (needsReply(op)) reply.error(Errno.EIO);
      return true;
    }
    if (op === Opcode.FUSE_INIT) {
      this.handleInit(h, buf, reply);
      return false; // a backend's init may still be running
    }
    if (this.state === 'awaiting-init') {
      this.log.warn({ op: opcodeName(op) }, 'request before INIT');
      if (needsReply(op)) reply.error(Errno.EIO);
      return true;
    }
    if (this.state === 'destroyed') {
      if (needsReply(op)) reply.error(Errno.ENOTCONN);
      return true;
    }
    if (op === Opcode.FUSE_INTERRUPT) {
      this.handleInterrupt(h, buf, reply);
      return true;
    }
    if (op === Opcode.FUSE_NOTIFY_REPLY) {
      this.handleNotifyReply(h, buf);
      return false; // its data went to a waiter
    }
    if (!hasSpec(op)) {
      this.log.debug({ op }, 'unknown opcode');
      reply.error(Errno.ENOSYS);
      return true;
    }
    const ext = decodeExtensions(buf, h);
    const outOfLine = h.len - buf.length; // WRITE data held in place (handle checked its length)
    const bodyEnd = h.len - h.total_extlen * 8 - outOfLine;
    const spec = op === Opcode.FUSE_SETXATTR && this.setxattrExt ? SetxattrExtSpec : outOfLine ? WriteInSpec : RequestSpecs[op];
    const args = decodeArgs(spec, new Reader(buf, SIZE.in_header, bodyEnd));
    if (outOfLine && args.size !== outOfLine) throw new WireError(`WRITE of ${String(args.size)} bytes with ${outOfLine} bytes of data`);
    if (this.options.trace) {
      this.log.debug({ unique: h.unique, op: opcodeName(op), nodeid: h.nodeid, uid: h.uid, pid: h.pid, args: summarize(args) }, 'request');
    }
    if (op === Opcode.FUSE_DESTROY) {
      void this.runDestroy(reply);
      return false;
    }
    return this.runRequest(h, op, args, ext.groups ?? [], reply, target);
  }

  private runRequest(h: InHeader, op: Opcode, args: Record<string, unknown>, groups: number[], reply: Reply, target?: ReplyTarget): boolean {
    const groupsOf = this.options.transport.groupsOf;
    const ctx = new RequestState(h, typeof args.umask === 'number' ? args.umask : 0, groups.length || !groupsOf ? groups : undefined, groupsOf);
    const replies = needsReply(op);
    this.stats.inFlight++;
    const octx: OpContext = { fs: this.fs, header: h, args, info: this.info!, ctx, session: this, target };
    let result: OpResult | Promise<OpResult>;
    try {
      result = runOp(op, octx);
    } catch (err) {
      this.stats.inFlight--;
      this.failed(op, replies, reply, err);
      return true;
    }
    if (!(result instanceof Promise)) {
      // Answered at once: answered at once (no microtask in between), and never listed as
      // in flight — no INTERRUPT can name it before its reply.
      this.stats.inFlight--;
      this.succeeded(replies, reply, result);
      return true;
    }
    if (replies) this.inflight.set(h.unique, ctx);
    const settled = () => {
      this.stats.inFlight--;
      if (replies) this.inflight.delete(h.unique);
    };
    result.then(
      (body) => (settled(), this.succeeded(replies, reply, body)),
      (err: unknown) => (settled(), this.failed(op, replies, reply, err)),
    );
    return false;
  }

  private succeeded(replies: boolean, reply: Reply, body: OpResult): void {
    if (!replies) return;
    if (body && 'placed' in body) reply.ok([], body.placed);
    else reply.ok(body ?? []);
  }

  private failed(op: Opcode, replies: boolean, reply: Reply, err: unknown): void {
    if (!replies) {
      this.log.warn({ op: opcodeName(op), err: (err as Error)?.message }, 'request without reply failed');
    } else if (err instanceof FsError) {
      reply.error(err.errno);
    } else if (err instanceof WireError) {
      this.stats.malformed++;
      reply.error(Errno.EINVAL);
    } else {
      const errno = errnoOf(err);
      if (errno === undefined) this.log.error({ op: opcodeName(op), err }, 'backend threw a non-errno error; answering EIO');
      reply.error(errno ?? Errno.EIO);
    }
  }

  private handleInit(h: InHeader, buf: Uint8Array, reply: Reply): void {
    if (this.state !== 'awaiting-init') {
      this.log.warn({}, 'second INIT ignored');
      reply.error(Errno.EPROTO);
      return;
    }
    const kernel = decodeInitIn(buf.subarray(SIZE.in_header, h.len));
    const result: Negotiation = negotiate({
      kernel,
      wanted: wantedFlags(this.fs, this.options.transport) & ~(this.options.disableFlags ?? 0n),
      maxWrite: this.options.transport.maxWrite,
    });
    if (result.ok === false) {
      this.break(result.reason);
      reply.error(Errno.EPROTO);
      return;
    }
    // Kernel passthrough: backing files may sit one stacking level below this mount.
    if (result.ok === true && result.out.flags & InitFlag.FUSE_PASSTHROUGH) result.out.max_stack_depth = 1;
    const w = new Writer(SIZE.init_out);
    encodeInitOut(w, result.out);
    if (result.ok === 'retry') {
      this.log.info({ kernelMajor: kernel.major }, 'kernel offers a newer major version; answering 7.x');
      reply.ok([w.finish()]);
      return;
    }
    const out = result.out;
    const passthrough = (out.flags & InitFlag.FUSE_PASSTHROUGH) !== 0n;
    this.setxattrExt = (out.flags & InitFlag.FUSE_SETXATTR_EXT) !== 0n;
    this.info = {
      minor: out.minor,
      flags: out.flags,
      maxWrite: out.max_write,
      maxReadahead: out.max_readahead,
      passthrough: passthrough ? this.options.transport.backing : undefined,
    };
    this.log.info({ transport: this.options.transport.name, kernel: `${kernel.major}.${kernel.minor}`, minor: out.minor, maxWrite: out.max_write }, 'FUSE session initialised');
    const finishInit = () => {
      this.state = 'running';
      reply.ok([w.finish()]);
      for (const r of this.runningWaiters.splice(0)) r();
    };
    if (this.fs.init) {
      Promise.resolve()
        .then(() => this.fs.init!(this.info!))
        .then(finishInit, (err) => {
          this.break(`backend init failed: ${(err as Error)?.message ?? err}`);
          reply.error(errnoOf(err) ?? Errno.EIO);
        });
    } else {
      finishInit();
    }
  }

  private async runDestroy(reply: Reply): Promise<void> {
    this.state = 'destroyed';
    for (const a of this.inflight.values()) a.abort();
    try {
      await this.fs.destroy?.();
    } catch (err) {
      this.log.warn({ err: (err as Error)?.message }, 'backend destroy failed');
    }
    reply.ok();
    this.wake();
  }

  private handleInterrupt(h: InHeader, buf: Uint8Array, reply: Reply): void {
    const args = decodeArgs(RequestSpecs[Opcode.FUSE_INTERRUPT], new Reader(buf, SIZE.in_header, h.len));
    const target = args.unique as bigint;
    const ctl = this.inflight.get(target);
    if (ctl) {
      ctl.abort();
      return; // no reply: the interrupted request answers (EINTR or its result)
    }
    // Not seen yet (another reader has it) or already answered: EAGAIN makes the kernel
    // requeue the interrupt if, and only if, the request is still pending.
    reply.error(Errno.EAGAIN);
  }

  private handleNotifyReply(h: InHeader, buf: Uint8Array): void {
    const args = decodeArgs(RequestSpecs[Opcode.FUSE_NOTIFY_REPLY], new Reader(buf, SIZE.in_header, h.len));
    const waiter = this.retrieves.get(h.unique);
    if (!waiter) {
      this.log.warn({ unique: h.unique }, 'NOTIFY_REPLY for an unknown retrieve');
      return;
    }
    this.retrieves.delete(h.unique);
    waiter.resolve(Buffer.from(args.data as Uint8Array));
  }

  private break(reason: string): void {
    if (this.state === 'broken') return;
    this.state = 'broken';
    this.brokenReason = reason;
    this.log.error({ reason }, 'FUSE session broken');
    this.wake();
  }

  private wake(): void {
    for (const w of this.retrieves.values()) w.reject(new FsError(Errno.ENOTCONN, 'session ended'));
    this.retrieves.clear();
    for (const r of this.destroyWaiters.splice(0)) r();
    for (const r of this.runningWaiters.splice(0)) r();
  }

  // ---- notifications (kernel cache control) -------------------------------------------

  private async notify(code: NotifyCode, body: Uint8Array[]): Promise<void> {
    const send = this.options.transport.notify;
    if (!send) throw new FsError(Errno.ENOSYS, `${this.options.transport.name} cannot deliver notifications`);
    if (this.state !== 'running') throw new FsError(Errno.ENOTCONN, 'session is not running');
    let len = SIZE.out_header;
    for (const b of body) len += b.length;
    const w = new Writer(SIZE.out_header);
    writeOutHeader(w, len, code, 0n);
    await send([w.finish(), ...body]);
  }

  /** Drops cached data (off/len; len 0 = to end, off -1 = attributes only) of an inode. */
  notifyInvalInode(ino: number, off: number, len: number): Promise<void> {
    return this.notify(NotifyCode.FUSE_NOTIFY_INVAL_INODE, [new Writer(24).u64(ino).i64(off).i64(len).finish()]);
  }

  /** Drops a cached name (or only expires it, when the kernel supports that). */
  notifyInvalEntry(parent: number, name: string, expireOnly = false): Promise<void> {
    const n = Buffer.from(name);
    return this.notify(NotifyCode.FUSE_NOTIFY_INVAL_ENTRY, [new Writer(16 + n.length + 1).u64(parent).u32(n.length).u32(expireOnly ? 1 : 0).bytes(n).u8(0).finish()]);
  }

  /** Tells the kernel that `name` in `parent` (which was `child`) is gone. */
  notifyDelete(parent: number, child: number, name: string): Promise<void> {
    const n = Buffer.from(name);
    return this.notify(NotifyCode.FUSE_NOTIFY_DELETE, [new Writer(24 + n.length + 1).u64(parent).u64(child).u32(n.length).u32(0).bytes(n).u8(0).finish()]);
  }

  /** Pushes data into the kernel's page cache for an inode. */
  notifyStore(ino: number, offset: number, data: Uint8Array): Promise<void> {
    return this.notify(NotifyCode.FUSE_NOTIFY_STORE, [new Writer(24).u64(ino).u64(offset).u32(data.length).u32(0).finish(), data]);
  }

  /** Asks the kernel for cached data of an inode; resolves with what it had. */
  notifyRetrieve(ino: number, offset: number, size: number): Promise<Uint8Array> {
    const unique = this.nextNotifyUnique++;
    return new Promise<Uint8Array>((resolve, reject) => {
      this.retrieves.set(unique, { resolve, reject });
      const header = new Writer(32).u64(unique).u64(ino).u64(offset).u32(size).u32(0).finish();
      this.notify(NotifyCode.FUSE_NOTIFY_RETRIEVE, [header]).catch((err: Error) => {
        this.retrieves.delete(unique);
        reject(err);
      });
    });
  }

  /** Wakes a poller registered through POLL with FUSE_POLL_SCHEDULE_NOTIFY. */
  notifyPoll(kh: bigint): Promise<void> {
    return this.notify(NotifyCode.FUSE_NOTIFY_POLL, [new Writer(8).u64(kh).finish()]);
  }
}

/** An AbortSignal made only if a backend asks for it: most requests never do. */
/**
 * One request in flight: its RequestContext for the backend (one object, accessors on the
 * prototype: this is on every request's path) and what an INTERRUPT aborts.
 */
class RequestState implements RequestContext {
  readonly unique: bigint;
  readonly uid: number;
  readonly gid: number;
  readonly pid: number;
  private ctl?: AbortController;
  private aborted = false;

  constructor(
    h: InHeader,
    readonly umask: number,
    /** Undefined until asked for, when they must be looked up (most requests never need them). */
    private groupList: readonly number[] | undefined,
    private readonly groupsOf: ((pid: number, uid: number, gid: number) => readonly number[]) | undefined,
  ) {
    this.unique = h.unique;
    this.uid = h.uid;
    this.gid = h.gid;
    this.pid = h.pid;
  }

  get groups(): readonly number[] {
    return (this.groupList ??= this.groupsOf ? this.groupsOf(this.pid, this.uid, this.gid) : []);
  }

  /** Created on first use: few backends watch it. */
  get signal(): AbortSignal {
    if (!this.ctl) {
      this.ctl = new AbortController();
      if (this.aborted) this.ctl.abort();
    }
    return this.ctl.signal;
  }

  abort(): void {
    this.aborted = true;
    this.ctl?.abort();
  }
}

/** The reply to one request: at most one is sent. */
class PendingReply implements Reply {
  done = false;
  constructor(
    private readonly session: Session,
    private readonly h: InHeader,
    private readonly send: SendFn,
    private readonly started: number,
  ) {}

  ok(body: Uint8Array[] = [], placed = 0): void {
    this.finish(0, body, placed);
  }

  error(errno: number): void {
    this.finish(errno > 0 && errno < 4096 ? errno : Errno.EIO, [], 0);
  }

  private finish(error: number, body: Uint8Array[], placed: number): void {
    if (this.done) {
      this.session.secondReply(this.h);
      return;
    }
    this.done = true;
    this.session.sendReply(this.h, this.send, error, body, placed, this.started);
  }
}

export interface Reply {
  ok(body?: Uint8Array[], placed?: number): void;
  error(errno: number): void;
  readonly done: boolean;
}

/** Opcodes the kernel expects no reply to. */
export function needsReply(op: number): boolean {
  return op !== Opcode.FUSE_FORGET && op !== Opcode.FUSE_BATCH_FORGET && op !== Opcode.FUSE_NOTIFY_REPLY;
}

function summarize(args: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(args)) {
    if (v instanceof Uint8Array) {
      out[k] = k.includes('name') ? Buffer.from(v).toString('utf8') : `<${v.length} bytes>`;
    } else if (Array.isArray(v)) {
      out[k] = `<${v.length} items>`;
    } else {
      out[k] = typeof v === 'bigint' ? v.toString() : v;
    }
  }
  return out;
}
