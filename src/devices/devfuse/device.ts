/**
 * The /dev/fuse device: mounts a FUSE file system with the kernel's mount(2) and serves
 * it through a Session. Reads happen on dedicated reader threads so the event loop never
 * blocks, and so that the daemon's own process may use the mount without deadlocking.
 */
import { closeSync, constants, existsSync, openSync, readFileSync, statSync, writeFileSync, writev } from 'node:fs';
import { promisify } from 'node:util';
import { Worker } from 'node:worker_threads';
import type { FileSystem } from '../../fs/api.js';
import { Errno, FsError, errnoName, errnoOf } from '../../fuse/errno.js';
import { OpStats } from '../../fuse/op-stats.js';
import type { Sample } from '../../metrics/sample.js';
import { Session } from '../../fuse/session.js';
import { MNT_DETACH, MS_NODEV, MS_NOSUID, MS_RDONLY, native } from '../../native/native.js';
import type { Logger } from '../../util/log.js';
import { silentLogger } from '../../util/log.js';
import { isFuseType, mountAt } from './mounts.js';
import { FuseUringChannel, fuseUringEnabled } from './uring-channel.js';
import { InitFlag, Opcode } from '../../fuse/opcodes.js';
import type { TransportInfo } from '../../fuse/session.js';

const writevAsync = promisify(writev);
const FUSECTL = '/sys/fs/fuse/connections';

export interface DevFuseOptions {
  mountPoint: string;
  fs: FileSystem;
  /**
   * How requests are read: "poll" (default) reads the non-blocking device on the event loop
   * when it is readable; "threads" blocks in read(2) on `readers` threads; "uring" takes
   * them from io_uring (FUSE over io_uring, where the kernel has it enabled; else "poll").
   */
  io?: 'poll' | 'threads' | 'uring';
  /** Reader threads in "threads" mode (default 4). */
  readers?: number;
  /** "uring" mode: ring entries per CPU queue, i.e. requests in flight per CPU (default 16). */
  ringDepth?: number;
  /** Largest WRITE the kernel may send (default 1 MiB). */
  maxWrite?: number;
  /** Let users other than the mounting one use the mount (default true). */
  allowOther?: boolean;
  /** Kernel-side permission checks from mode bits (default: the backend's preference, else true). */
  defaultPermissions?: boolean;
  readOnly?: boolean;
  /** Name shown as the mount source (default "dpfs"). */
  fsName?: string;
  /** fstype suffix: "fuse.<subtype>" (default "dpfs"). */
  subtype?: string;
  log?: Logger;
  /** Log each request and reply. */
  trace?: boolean;
  /** Keep per-opcode counts and latencies for metrics. */
  metrics?: boolean;
}

/** Requests up to this size are copied out of the read buffer; larger ones are served in it. */
const SMALL_REQUEST = 4096;

export class DevFuseDevice {
  readonly session: Session;
  /** Requests by opcode (recorded with `metrics`). */
  readonly opStats = new OpStats();
  /**
   * Requests answered in the read loop itself (native/fusedev.c), which the session never
   * saw: [GETATTRs of inodes and open files the backend published (FileSystem.sharedInodes),
   * LOOKUPs in directories it published, root callers' UNLINKs and RMDIRs there].
   */
  readonly served = new Float64Array(4);
  private fd = -1;
  private readonly workers: Worker[] = [];
  private live = 0;
  private watcher?: unknown;
  private mounted = false;
  private connection?: number;
  private uring?: FuseUringChannel;
  private readonly transport: TransportInfo;
  private readonly log: Logger;
  private endResolve!: () => void;
  /** Resolves when the kernel connection has ended (unmount, abort, stop()). */
  readonly ended: Promise<void> = new Promise((r) => (this.endResolve = r));

  constructor(readonly options: DevFuseOptions) {
    this.log = (options.log ?? silentLogger).child({ device: 'devfuse', mountPoint: options.mountPoint });
    this.transport = {
      name: 'devfuse',
      maxWrite: options.maxWrite ?? 1024 * 1024,
      groupsOf: procGroups,
      backing: {
        open: (fd) => native().backingOpen(this.fd, fd),
        close: (id) => native().backingClose(this.fd, id),
      },
      notify: async (chunks) => {
        // Off the event loop: a notification may wait on kernel locks held by a request we serve.
        await writevAsync(this.fd, chunks);
      },
    };
    this.session = new Session(options.fs, { transport: this.transport, log: this.log, trace: options.trace, opStats: options.metrics ? this.opStats : undefined });
  }

  /** The device's own values for metrics. */
  samples(): Sample[] {
    return [{ name: 'dpfs_requests_in_flight', help: 'Requests taken and not yet answered', type: 'gauge', value: this.session.stats.inFlight }];
  }

  /** Mounts and starts serving; resolves once the kernel's INIT has been answered. */
  async start(): Promise<void> {
    const o = this.options;
    const mp = o.mountPoint;
    recoverStale(mp, this.log);
    let st;
    try {
      st = statSync(mp);
    } catch (err) {
      throw new Error(`mount point ${mp}: ${(err as Error).message}`);
    }
    if (!st.isDirectory()) throw new Error(`mount point ${mp} is not a directory`);
    const poll = (o.io ?? 'poll') !== 'threads';
    this.fd = openSync('/dev/fuse', constants.O_RDWR | (poll ? constants.O_NONBLOCK : 0));
    if (o.io === 'uring') this.openUring(o.ringDepth ?? 16);
    const uid = process.getuid?.() ?? 0;
    const gid = process.getgid?.() ?? 0;
    const defaultPermissions = o.defaultPermissions ?? o.fs.capabilities?.defaultPermissions ?? true;
    const data = [
      `fd=${this.fd}`,
      `rootmode=${(st.mode & 0o170000).toString(8)}`,
      `user_id=${uid}`,
      `group_id=${gid}`,
      ...(defaultPermissions ? ['default_permissions'] : []),
      ...((o.allowOther ?? true) ? ['allow_other'] : []),
    ].join(',');
    const flags = MS_NOSUID | MS_NODEV | (o.readOnly ? MS_RDONLY : 0);
    const maxWrite = o.maxWrite ?? 1024 * 1024;
    if (poll) this.startPolling(maxWrite + 64 * 1024, defaultPermissions);
    else this.startReaders(o.readers ?? 4, maxWrite + 64 * 1024);
    try {
      native().mount(o.fsName ?? 'dpfs', mp, `fuse.${o.subtype ?? 'dpfs'}`, flags, data);
    } catch (err) {
      await this.shutdownReaders();
      throw new Error(`mount ${mp}: ${(err as Error).message}`);
    }
    this.mounted = true;
    this.connection = mountAt(mp)?.minor;
    await Promise.race([this.session.whenRunning(), this.ended]);
    if (this.session.state !== 'running') {
      const reason = this.session.brokenReason ?? 'connection ended';
      await this.stop();
      throw new Error(`FUSE session did not start: ${reason}`);
    }
    this.registerUring();
    this.log.info({ connection: this.connection, readers: this.workers.length, io: this.uring ? 'uring' : poll ? 'poll' : 'threads' }, 'mounted');
  }

  /** The ring exists before INIT is answered: io_uring is offered only if it could be made. */
  private openUring(depth: number): void {
    if (!fuseUringEnabled()) {
      this.log.warn({}, 'FUSE over io_uring is not enabled in this kernel (fuse module parameter enable_uring); reading /dev/fuse instead');
      return;
    }
    try {
      this.uring = new FuseUringChannel(this.fd, this.session, this.log, depth);
      this.transport.ioUring = true;
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'FUSE io_uring unavailable; reading /dev/fuse instead');
    }
  }

  /** After INIT: the kernel holds requests until every CPU's queue has entries. */
  private registerUring(): void {
    if (!this.uring) return;
    const info = this.session.info!;
    if (!(info.flags & InitFlag.FUSE_OVER_IO_URING)) {
      this.log.warn({}, 'kernel declined FUSE over io_uring; reading /dev/fuse instead');
      this.uring.close();
      this.uring = undefined;
      return;
    }
    try {
      this.uring.register(info.maxWrite);
      this.log.info({ queues: this.uring.queues, depth: this.uring.depth }, 'serving requests over io_uring');
    } catch (err) {
      // The kernel would hold every request for a ring that never comes: end the connection.
      this.log.error({ err: (err as Error).message }, 'FUSE io_uring registration failed; aborting the connection');
      abortConnection(this.connection, this.log);
    }
  }

  private send = (chunks: Uint8Array[]) => {
    native().devWritev(this.fd, chunks);
  };

  private finish(): void {
    this.later.flush(true);
    this.mounted = false;
    this.log.info({ requests: this.session.stats.requests, overIoUring: this.uring?.served }, 'connection ended');
    this.uring?.close();
    this.uring = undefined;
    if (this.fd >= 0) {
      closeSync(this.fd);
      this.fd = -1;
    }
    this.endResolve();
  }

  /**
   * Reads one request each time the device is readable. Level-triggered polling calls
   * again while more are queued, and reading only once avoids a thrown EAGAIN per wakeup.
   */
  private startPolling(bufSize: number, kernelChecks: boolean): void {
    let buf = Buffer.allocUnsafe(bufSize);
    const fast = this.fastPath(kernelChecks);
    const readOne = () => {
      const r = native().devRead(this.fd, buf, fast);
      if (r > SMALL_REQUEST) {
        // A big request (WRITE data) is served in place: answered at once, it leaves the
        // buffer free for the next read; still in flight, it keeps it, and the next read
        // goes into a new one (no copy either way).
        if (!this.session.handle(r === buf.length ? buf : buf.subarray(0, r), this.send)) buf = Buffer.allocUnsafe(bufSize);
        return;
      }
      if (r > 0) {
        // A small one is copied out (from Node's buffer pool: no allocation of its own), so
        // the buffer stays free whatever becomes of it.
        const req = Buffer.allocUnsafe(r);
        req.set(buf.subarray(0, r));
        if (!this.later.defer(req)) this.session.handle(req, this.send);
        return;
      }
      if (r === -Errno.EAGAIN || r === -Errno.EINTR || r === -Errno.ENOENT) return;
      this.stopPolling(r === 0 ? 'EOF' : errnoName(-r));
    };
    // Each turn ends by serving what the turn before held back (see `later`).
    this.watcher = native().watch(this.fd, () => {
      readOne();
      this.later.flush();
    });
  }

  /**
   * Where the backend publishes inodes whose attributes can be read at once, GETATTR is
   * answered as the request is read: one statx, no trip through the session; so is a
   * LOOKUP in a directory held in memory of a name that is absent or leads to an inode the
   * backend knows (FileSystem.sharedNames), where the kernel checks permissions itself
   * (`kernelChecks`: it refused callers that may not search the directory, so the answer is
   * theirs too). Not while tracing, which logs every request.
   */
  private fastPath(kernelChecks: boolean): unknown {
    const { fs, trace } = this.options;
    if (trace || (!fs.sharedInodes && !fs.sharedHandles)) return undefined;
    const names = fs.sharedNames;
    return native().devFastCreate(fs.sharedInodes?.table ?? null, fs.sharedHandles?.table ?? null, this.served, kernelChecks, names?.table.table ?? null, names?.lookups ?? null);
  }

  /** Requests answered in the read loop (see `served`), for metrics. */
  servedNatively(): [op: number, count: number][] {
    return [
      [Opcode.FUSE_GETATTR, this.served[0]!],
      [Opcode.FUSE_LOOKUP, this.served[1]!],
      [Opcode.FUSE_UNLINK, this.served[2]!],
      [Opcode.FUSE_RMDIR, this.served[3]!],
    ];
  }

  /**
   * RELEASEs and FORGETs held back until the next turn of the read loop: the kernel waits for
   * no one on them (the closing or unlinking process has moved on), and the request that
   * caller sends next (the directory's GETATTR for its next create or unlink) follows within
   * µs; served first, it is answered while the caller would otherwise wait for ours. They
   * wait at most one more turn of the loop, or a millisecond when nothing else comes. (A
   * LOOKUP served before a FORGET sent earlier is no harm: lookup counts only add up.)
   */
  private readonly later = new Deferred((req) => this.session.handle(req, this.send));

  private stopPolling(why: string | undefined): void {
    if (why !== 'ENODEV' && why !== 'EOF') this.log.error({ err: why }, 'reading /dev/fuse failed');
    if (this.watcher) native().unwatch(this.watcher);
    this.watcher = undefined;
    this.finish();
  }

  private startReaders(n: number, bufSize: number): void {
    const url = new URL('./reader-worker.js', import.meta.url);
    for (let i = 0; i < n; i++) {
      // A clean execArgv: the parent's flags (--input-type, -e, inspectors) mean nothing to a reader.
      const w = new Worker(url, { workerData: { fd: this.fd, bufSize }, execArgv: [] });
      this.live++;
      w.on('message', (msg: Uint8Array | { end: string }) => {
        if (msg instanceof Uint8Array) {
          this.session.handle(msg, this.send);
        } else if (msg && 'end' in msg && msg.end !== 'ENODEV' && msg.end !== 'EOF') {
          this.log.error({ reader: i, err: msg.end }, 'reader stopped');
        }
      });
      w.on('error', (err) => this.log.error({ reader: i, err: err.message }, 'reader thread failed'));
      w.on('exit', () => {
        if (--this.live === 0) this.finish();
      });
      this.workers.push(w);
    }
  }

  private async shutdownReaders(): Promise<void> {
    if (this.fd >= 0 && this.connection === undefined) {
      // Never mounted: closing is not enough while readers sit in read(); end them directly.
      await Promise.all(this.workers.map((w) => w.terminate().catch(() => undefined)));
      if (this.watcher) native().unwatch(this.watcher);
      this.watcher = undefined;
      if (this.fd >= 0) this.finish();
    }
  }

  /** Unmounts (lazily if busy), aborts the connection if needed, and waits for the readers. */
  async stop(): Promise<void> {
    if (this.fd < 0) return;
    const mp = this.options.mountPoint;
    if (this.mounted) {
      try {
        native().umount2(mp, 0);
      } catch (err) {
        const errno = errnoOf(err);
        if (errno === Errno.EBUSY) {
          this.log.warn({}, 'mount busy; detaching lazily');
          try {
            native().umount2(mp, MNT_DETACH);
          } catch (e) {
            this.log.warn({ err: (e as Error).message }, 'lazy unmount failed');
          }
        } else if (errno !== Errno.EINVAL && errno !== Errno.ENOENT) {
          this.log.warn({ err: (err as Error).message }, 'unmount failed');
        }
      }
    }
    // If something still holds the detached mount, abort the connection so we can exit.
    const timer = setTimeout(() => abortConnection(this.connection, this.log), 2000);
    await this.ended;
    clearTimeout(timer);
    this.log.info({}, 'unmounted');
  }
}

/** A mount left by a daemon that died answers ENOTCONN: detach it so we can mount again. */
export function recoverStale(mp: string, log: Logger): void {
  const m = mountAt(mp);
  let stale = false;
  try {
    statSync(mp);
  } catch (err) {
    stale = errnoOf(err) === Errno.ENOTCONN;
  }
  if (!stale && !(m && isFuseType(m.fstype))) return;
  if (!stale) throw new FsError(Errno.EBUSY, `${mp} is already a live FUSE mount (${m!.source}); unmount it first`);
  log.warn({ mountPoint: mp }, 'detaching stale FUSE mount left by a dead daemon');
  if (m) abortConnection(m.minor, log);
  native().umount2(mp, MNT_DETACH);
}

function abortConnection(conn: number | undefined, log: Logger): void {
  if (conn === undefined) return;
  try {
    if (!existsSync(`${FUSECTL}/${conn}`)) {
      try {
        native().mount('fusectl', FUSECTL, 'fusectl', 0, '');
      } catch {
        /* already mounted or unavailable */
      }
    }
    if (existsSync(`${FUSECTL}/${conn}/abort`)) {
      writeFileSync(`${FUSECTL}/${conn}/abort`, '1');
      log.warn({ connection: conn }, 'aborted FUSE connection');
    }
  } catch (err) {
    log.warn({ connection: conn, err: (err as Error).message }, 'could not abort FUSE connection');
  }
}

const groupCache = new Map<number, { groups: number[]; at: number; uid: number; gid: number }>();
const GROUPS_TTL_MS = 1000;

/**
 * Supplementary groups of a local caller (the kernel gives its thread's id), from /proc
 * (empty if it is gone). Reading /proc costs more than a request, so they are kept for a
 * second while the caller's uid and gid stay the same: a process that drops privileges
 * changes those, and is read again. (A thread that changes only its supplementary groups is
 * seen with its old ones for up to that second.)
 */
export function procGroups(pid: number, uid: number, gid: number): number[] {
  const now = Date.now();
  const hit = groupCache.get(pid);
  if (hit && hit.uid === uid && hit.gid === gid && now - hit.at < GROUPS_TTL_MS) return hit.groups;
  const groups = readProcGroups(pid);
  if (groupCache.size >= 4096) groupCache.clear();
  groupCache.set(pid, { groups, at: now, uid, gid });
  return groups;
}

function readProcGroups(pid: number): number[] {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const line = /^Groups:(.*)$/m.exec(status);
    return line ? line[1]!.trim().split(/\s+/).filter(Boolean).map(Number) : [];
  } catch {
    return [];
  }
}

export function devFuseUsable(): { ok: boolean; reason: string } {
  try {
    const fd = openSync('/dev/fuse', 'r+');
    closeSync(fd);
  } catch (err) {
    return { ok: false, reason: `/dev/fuse: ${(err as Error).message}` };
  }
  const fsTypes = readFileSync('/proc/filesystems', 'utf8');
  if (!/\bfuse\b/.test(fsTypes)) return { ok: false, reason: 'kernel has no fuse file system type' };
  return { ok: true, reason: 'ok' };
}

/** Requests nobody waits for (RELEASE, FORGET) held for one turn of the read loop (see DevFuseDevice.later). */
class Deferred {
  private held: Buffer[] = [];
  /** How many of `held` came in this turn (they wait for the next). */
  private fresh = 0;
  private timer?: NodeJS.Timeout;

  constructor(private readonly serve: (req: Buffer) => void) {}

  /** Holds `req` if it is a RELEASE or a FORGET; false if it is to be served now. */
  defer(req: Buffer): boolean {
    if (req.length < 8 || this.held.length >= 64) return false;
    const op = req.readUInt32LE(4);
    if (op !== Opcode.FUSE_RELEASE && op !== Opcode.FUSE_FORGET && op !== Opcode.FUSE_BATCH_FORGET) return false;
    this.held.push(req);
    this.fresh++;
    this.timer ??= setTimeout(() => {
      this.timer = undefined;
      this.flush(true);
    }, 1);
    return true;
  }

  /** Ends a turn: serves what was held before it (all of it when `all`). */
  flush(all = false): void {
    const keep = all ? 0 : this.fresh;
    this.fresh = 0;
    if (this.held.length <= keep) return;
    const due = this.held.splice(0, this.held.length - keep);
    if (!this.held.length && this.timer) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    for (const req of due) this.serve(req);
  }
}
