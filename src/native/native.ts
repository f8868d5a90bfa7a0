/**
 * The native addon (native/dpfs_native.c): only the system calls Node lacks.
 * Loaded lazily so that pure-TypeScript parts (codec, backends) work without it.
 */
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface NativeAddon {
  mount(source: string, target: string, fstype: string, flags: number, data: string): void;
  umount2(target: string, flags: number): void;
  /** Calls `onReadable` on this thread's event loop whenever non-blocking `fd` is readable. */
  watch(fd: number, onReadable: (status: number, events: number) => void): unknown;
  unwatch(handle: unknown): void;
  /**
   * Adaptive busy polling of this thread's event loop before it sleeps, spinning at most
   * `maxUs` µs (0: off); see native/busy_poll.c.
   */
  busyPoll(maxUs: number): void;
  /** This thread's busy polling so far: [waits caught, spins that ran out, ns spun, spin now in ns]. */
  busyPollStats(): [number, number, number, number];
  /** A non-blocking listening unix socket at `path` (an old socket file is replaced). */
  listenUnix(path: string): number;
  /** Accepts one connection: its fd, or -1 when none is pending. */
  acceptUnix(fd: number): number;
  /** One recvmsg: null when nothing is pending; n 0 when the peer closed. */
  recvMsg(fd: number, buf: Buffer): { n: number; fds: number[]; truncated: boolean } | null;
  sendMsg(fd: number, buf: Buffer, fds?: number[]): number;
  /** A connection to a unix socket (made blocking, then switched to non-blocking). */
  connectUnix(path: string): number;
  memfdCreate(name: string, size: number): number;
  /** A non-blocking eventfd. */
  eventfd(): number;
  /** Adds 1 to an eventfd: 0, or -errno. */
  eventfdSignal(fd: number): number;
  /** Reads (resets) an eventfd: its count, 0 when it was 0, or -errno. */
  eventfdDrain(fd: number): number;
  /** preadv2/pwritev2 with RWF_NOWAIT, synchronously: bytes moved, or -errno. */
  rwNowait(fd: number, bufs: Uint8Array[], offset: number, write: boolean): number;
  /**
   * A virtqueue's data path in native code (ring_fast.c): the rings, guest memory as
   * [guest-physical address, bytes, ...], the SharedHandles tables of open files and of
   * inodes, `counts` (READs, WRITEs, READ bytes, GETATTRs served: added to) and `stall` (the
   * handle and ms of the last write at once that waited).
   */
  ringFastCreate(desc: Uint8Array, avail: Uint8Array, used: Uint8Array, num: number, indirect: boolean, regions: (number | Uint8Array)[], handles: Int32Array, inodes: Int32Array | null, counts: Float64Array, stall: Float64Array, names?: Int32Array | null, lookups?: Float64Array | null): unknown;
  /**
   * Serves up to `max` READ/WRITE chains from `lastAvail` on, writes "at once" only up to
   * `writeAtOnceMax` bytes; returns how many (both indices advance by it).
   */
  ringFastServe(ctx: unknown, lastAvail: number, usedIdx: number, max: number, writeAtOnceMax: number): number;
  /** Times the calling thread slept (getrusage ru_nvcsw): a call that raised it waited. */
  threadVoluntarySwitches(): number;
  /**
   * read(2) of one request from /dev/fuse into `scratch`: its bytes, 0 at end of file, or
   * -errno. With `fast` (devFastCreate), GETATTRs of published inodes and open files, and
   * LOOKUPs in published directories of names absent or leading to published inodes, are
   * answered natively and the next request read instead (see native/fusedev.c).
   */
  devRead(devFd: number, scratch: Buffer, fast?: unknown): number;
  /**
   * A context for devRead: the backend's SharedHandles tables by node id and by handle,
   * counts of the GETATTRs [0] and LOOKUPs [1] answered, whether LOOKUPs may be answered
   * (only where the kernel checks permissions), and the backend's SharedNames table and
   * per-slot lookup counts (see src/fs/shared-names.ts).
   */
  devFastCreate(inodes: Int32Array | null, handles: Int32Array | null, counts: Float64Array, lookups: boolean, names: Int32Array | null, namesLookups: Float64Array | null): unknown;
  /** writev(2) of a reply to /dev/fuse; throws on failure. */
  devWritev(devFd: number, chunks: Uint8Array[]): number;
  /** Registers `fd` as a FUSE passthrough backing file on the /dev/fuse `devFd`; returns its id. */
  backingOpen(devFd: number, fd: number): number;
  backingClose(devFd: number, id: number): void;
  /** mmap(MAP_SHARED) of fd, shareable with workers; unmapped once no thread references it. */
  mapShared(fd: number, size: number, offset: number): SharedArrayBuffer;
}

let addon: NativeAddon | undefined;

/** Project root: this file lives in dist/src/native/. */
export const projectRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

export function native(): NativeAddon {
  if (!addon) {
    const require = createRequire(import.meta.url);
    const path = join(projectRoot, 'build', 'Release', 'dpfs_native.node');
    try {
      addon = require(path) as NativeAddon;
    } catch (err) {
      throw new Error(`dpfs native addon not built (${path}): run "npm run build" (${(err as Error).message})`);
    }
  }
  return addon;
}

export const MS_NOSUID = 2;
export const MS_NODEV = 4;
export const MS_NOEXEC = 8;
export const MS_RDONLY = 1;
export const MNT_FORCE = 1;
export const MNT_DETACH = 2;
