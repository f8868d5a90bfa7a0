/**
 * The virtio-fs device over vhost-user: the software twin of a DPU's virtio-fs function.
 * QEMU's vhost-user-fs-pci (or any VMM) connects to the socket; the guest mounts the
 * device with `mount -t virtiofs TAG /mnt`. One VMM at a time per socket; when it goes
 * away the socket takes the next one (a restarted VMM) without restarting the daemon.
 */
import { closeSync, unlinkSync } from 'node:fs';
import type { FileSystem } from '../../fs/api.js';
import { Opcode } from '../../fuse/opcodes.js';
import { OpStats } from '../../fuse/op-stats.js';
import type { Sample } from '../../metrics/sample.js';
import { Session } from '../../fuse/session.js';
import { native } from '../../native/native.js';
import { type Logger, silentLogger } from '../../util/log.js';
import { type RequestSink, VhostUserConnection } from './connection.js';
import { QueueThreads } from './queue-threads.js';
import { FAST_COUNTS, type FastCount, type FastPathSpec, fastCounts } from './virtqueue.js';

export interface VhostUserFsOptions {
  socketPath: string;
  fs: FileSystem;
  /** Request queues (QEMU's num-request-queues); the device also has the hiprio queue. */
  requestQueues?: number;
  /**
   * Queue threads doing the ring work of the request queues (at most one per queue), and
   * serving READ and WRITE on the backend's shared open files themselves; 0 (the default)
   * serves every queue on the event loop. Other requests go to the FUSE session on the main
   * thread, and that hand-off costs the main thread more than the ring work it saves: on 16
   * cores, 8 queues gave 194K null 4 KiB reads/s on the event loop against 127K on 8 threads
   * (docs/architecture.md). With the passthrough, data-heavy tenants gain from threads.
   */
  threads?: number;
  log?: Logger;
  trace?: boolean;
  /** Keep per-opcode counts and latencies for metrics. */
  metrics?: boolean;
}

export class VhostUserFsDevice implements RequestSink {
  private listenFd = -1;
  private listenWatch?: unknown;
  connection?: VhostUserConnection;
  session: Session;
  private readonly log: Logger;
  private stopped = false;
  /** The queue threads, when the request queues have them. */
  threads?: QueueThreads;
  connections = 0;
  /**
   * What the rings' native data path served (the session never saw it): each queue's
   * FAST_COUNTS (READs, WRITEs, READ bytes written straight into guest memory, GETATTRs,
   * LOOKUPs); in
   * shared memory, since queue threads add theirs.
   */
  readonly served = new Float64Array(new SharedArrayBuffer(32 * 1024));
  /** Requests served per queue (0: hiprio), over all connections. */
  readonly perQueue: number[] = [];
  /** READ payload bytes written straight into guest memory, over all connections. */
  get zeroCopyBytes(): number {
    let native = 0;
    for (let i = FAST_COUNTS.readBytes; i < this.served.length; i += FAST_COUNTS.words) native += this.served[i]!;
    return this.pastZeroCopy + (this.connection?.stats.zeroCopyBytes ?? 0) + native;
  }
  private pastZeroCopy = 0;
  private pastBadChains = 0;
  /** Requests by opcode over every session (recorded with `metrics`). */
  readonly opStats = new OpStats();

  constructor(readonly options: VhostUserFsOptions) {
    this.log = (options.log ?? silentLogger).child({ device: 'vhost-user-fs', socket: options.socketPath });
    this.session = this.newSession();
  }

  private newSession(): Session {
    return new Session(this.options.fs, {
      transport: { name: 'virtio-fs', maxWrite: 1024 * 1024, virtiofs: true },
      log: this.log,
      trace: this.options.trace,
      opStats: this.options.metrics ? this.opStats : undefined,
    });
  }

  private get requestQueues(): number {
    return this.options.requestQueues ?? 1;
  }

  /** Queue threads serving the request queues (0: the event loop serves them). */
  get queueThreads(): number {
    return this.threads?.count ?? 0;
  }

  start(): void {
    const requestQueues = this.requestQueues;
    const threads = Math.min(this.options.threads ?? 0, requestQueues);
    if (threads > 0) {
      this.threads = new QueueThreads(threads, this.log, this.served);
      // READ and WRITE on the backend's shared open files are served on the queue threads.
      if (this.options.fs.sharedHandles) this.threads.setHandles(this.options.fs.sharedHandles.buffer, this.options.fs.sharedInodes?.buffer);
    }
    this.listenFd = native().listenUnix(this.options.socketPath);
    this.listenWatch = native().watch(this.listenFd, () => this.onAcceptable());
    this.log.info({ queues: 1 + requestQueues, threads }, 'listening for a VMM');
  }

  private onAcceptable(): void {
    for (;;) {
      const fd = native().acceptUnix(this.listenFd);
      if (fd < 0) return;
      // A VMM that restarts may knock before its old connection's hang-up was read.
      this.connection?.poll();
      if (this.connection?.isClosed) this.connection = undefined;
      if (this.connection) {
        this.log.warn({}, 'a second VMM tried to connect; refused');
        closeSync(fd);
        continue;
      }
      this.connections++;
      const conn = new VhostUserConnection(fd, 1 + this.requestQueues, this, this.log, this.threads);
      this.connection = conn;
      this.log.info({}, 'VMM connected');
      void conn.ended.then(() => {
        this.pastZeroCopy += conn.stats.zeroCopyBytes;
        this.pastBadChains += conn.stats.badChains;
        conn.stats.perQueue.forEach((n, i) => (this.perQueue[i] = (this.perQueue[i] ?? 0) + n));
        if (this.connection === conn) this.connection = undefined;
        this.log.info({}, 'VMM disconnected');
      });
    }
  }

  /** One of queue q's native data path counts. */
  servedCount(q: number, what: FastCount): number {
    return this.served[FAST_COUNTS.words * q + FAST_COUNTS[what]] ?? 0;
  }

  /** Requests of queue q the native data path served. */
  servedOn(q: number): number {
    return this.servedCount(q, 'reads') + this.servedCount(q, 'writes') + this.servedCount(q, 'getattrs') + this.servedCount(q, 'lookups');
  }

  /** The native data path's share of each queue's requests (see `served`). */
  fastPath(q: number): FastPathSpec | undefined {
    const handles = this.options.fs.sharedHandles;
    if (!handles || FAST_COUNTS.words * (q + 1) > this.served.length) return undefined;
    // The event loop serves this ring (queue threads set theirs up without names): LOOKUPs
    // too, unless each request is to be traced.
    const names = this.options.trace ? undefined : this.options.fs.sharedNames;
    return { handles, inodes: this.options.fs.sharedInodes, names, counts: fastCounts(this.served, q), onStall: (fh, ms) => handles.onStall?.(fh, ms) };
  }

  /** READs, WRITEs, GETATTRs and LOOKUPs the native data path served (the session never saw them). */
  servedNatively(): [op: number, count: number][] {
    const sum = (what: FastCount) => {
      let n = 0;
      for (let q = 1; q <= this.requestQueues; q++) n += this.servedCount(q, what);
      return n;
    };
    return [
      [Opcode.FUSE_READ, sum('reads')],
      [Opcode.FUSE_WRITE, sum('writes')],
      [Opcode.FUSE_GETATTR, sum('getattrs')],
      [Opcode.FUSE_LOOKUP, sum('lookups')],
    ];
  }

  /** The device's own values for metrics. */
  samples(): Sample[] {
    const live = this.connection?.stats;
    const out: Sample[] = [
      { name: 'dpfs_requests_in_flight', help: 'Requests taken and not yet answered', type: 'gauge', value: this.session.stats.inFlight },
      { name: 'dpfs_virtio_connections_total', help: 'VMM connections accepted', type: 'counter', value: this.connections },
      { name: 'dpfs_virtio_connected', help: 'Whether a VMM is connected', type: 'gauge', value: this.connection && !this.connection.isClosed ? 1 : 0 },
      { name: 'dpfs_virtio_bad_chains_total', help: 'Descriptor chains returned unanswered (malformed or outside guest memory)', type: 'counter', value: this.pastBadChains + (live?.badChains ?? 0) },
      { name: 'dpfs_virtio_zero_copy_bytes_total', help: 'READ data written straight into guest memory', type: 'counter', value: this.zeroCopyBytes },
    ];
    if (this.threads) {
      const { hits: caught, misses: missed, spinSeconds: seconds } = this.threads.busyPollTotals();
      const help = 'Waits of the queue threads\' event loops that spun before sleeping: caught or missed (refreshed every second)';
      out.push({ name: 'dpfs_queue_threads_busy_poll_waits_total', help, type: 'counter', value: caught, labels: { result: 'caught' } });
      out.push({ name: 'dpfs_queue_threads_busy_poll_waits_total', help, type: 'counter', value: missed, labels: { result: 'missed' } });
      out.push({ name: 'dpfs_queue_threads_busy_poll_seconds_total', help: 'CPU time the queue threads spent spinning for the next request', type: 'counter', value: seconds });
    }
    const queues = Math.max(this.perQueue.length, live?.perQueue.length ?? 0, this.threads ? 1 + this.requestQueues : 0);
    for (let q = 0; q < queues; q++) {
      const here = this.servedOn(q); // served by the native data path
      out.push({ name: 'dpfs_virtio_queue_requests_total', help: 'Requests taken from each virtqueue (0: hiprio)', type: 'counter', value: (this.perQueue[q] ?? 0) + (live?.perQueue[q] ?? 0) + here, labels: { queue: String(q) } });
    }
    return out;
  }

  handle(request: Buffer, reply: (chunks: Uint8Array[], placed?: number) => void, target?: { payload: Uint8Array[] }): void {
    // A guest that boots again starts a new FUSE session on the same device.
    if (request.length >= 8 && request.readUInt32LE(4) === Opcode.FUSE_INIT && this.session.state !== 'awaiting-init') {
      this.log.info({}, 'new FUSE session (guest re-initialised)');
      this.session = this.newSession();
    }
    this.session.handle(request, reply, target);
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.listenWatch) native().unwatch(this.listenWatch);
    if (this.listenFd >= 0) closeSync(this.listenFd);
    try {
      unlinkSync(this.options.socketPath);
    } catch {
      /* gone already */
    }
    this.connection?.close();
    await this.threads?.terminate();
    await this.options.fs.destroy?.();
  }
}
