/**
 * Positional reads, writes and fsyncs on an open host file. Reads and writes first try the
 * page cache synchronously (preadv2/pwritev2 with RWF_NOWAIT: one system call, never waits
 * for a device or server); what that cannot do goes to io_uring (the kernel's own workers
 * do what would wait) or, where io_uring is refused, to libuv's pool. Access was checked
 * when the file was opened as the caller, so no credentials are needed here.
 */
import { fdatasync, fsync as fsFsync, readv as fsReadv, writev as fsWritev } from 'node:fs';
import { Errno } from '../../fuse/errno.js';
import { native } from '../../native/native.js';
import { Uring } from '../../native/uring.js';
import { iovAfter, iovLength } from '../../util/iov.js';

const IOV_MAX = 1024;

/** Per open file: which directions the host file system lets us try without waiting. */
export interface NowaitState {
  noNowaitRead?: boolean;
  noNowaitWrite?: boolean;
}

/** Reads into `bufs` at `offset` until they are full or the file ends; returns the bytes read. */
export async function readAt(fd: number, bufs: Uint8Array[], offset: number, state: NowaitState): Promise<number> {
  let done = 0;
  const fits = bufs.length <= IOV_MAX; // what preadv2 and io_uring take in one call
  if (!state.noNowaitRead && fits) {
    const n = native().rwNowait(fd, bufs, offset, false);
    if (n === 0 || n === iovLength(bufs)) return n; // end of file, or all from the page cache
    if (n > 0) done = n;
    else if (n !== -Errno.EAGAIN) state.noNowaitRead = true; // EOPNOTSUPP (or an error the pool will report)
  }
  // The rest waits for I/O; a short read there means the end of the file.
  const rest = done ? iovAfter(bufs, done) : bufs;
  const ring = fits ? Uring.get() : null;
  return done + (await (ring ? ring.readv(fd, rest, offset + done) : poolv(fsReadv, fd, rest, offset + done)));
}

/** Writes `bufs` at `offset`; returns the bytes written. */
export async function writeAt(fd: number, bufs: Uint8Array[], offset: number, state: NowaitState): Promise<number> {
  let done = 0;
  const fits = bufs.length <= IOV_MAX;
  if (!state.noNowaitWrite && fits) {
    const n = native().rwNowait(fd, bufs, offset, true);
    if (n === iovLength(bufs)) return n;
    if (n > 0) done = n;
    else if (n !== -Errno.EAGAIN) state.noNowaitWrite = true;
  }
  const rest = done ? iovAfter(bufs, done) : bufs;
  const ring = fits ? Uring.get() : null;
  return done + (await (ring ? ring.writev(fd, rest, offset + done) : poolv(fsWritev, fd, rest, offset + done)));
}

/** fsync or fdatasync. */
export function syncFile(fd: number, datasync: boolean): Promise<unknown> {
  const ring = Uring.get();
  if (ring) return ring.fsync(fd, datasync);
  return new Promise<void>((resolve, reject) => (datasync ? fdatasync : fsFsync)(fd, (err) => (err ? reject(err) : resolve())));
}

function poolv(
  op: (fd: number, bufs: Uint8Array[], pos: number, cb: (err: NodeJS.ErrnoException | null, n: number) => void) => void,
  fd: number,
  bufs: Uint8Array[],
  offset: number,
): Promise<number> {
  return new Promise((resolve, reject) => op(fd, bufs, offset, (err, n) => (err ? reject(err) : resolve(n))));
}
