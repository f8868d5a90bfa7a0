/** Reads that never wait for a device: what the host's page cache holds, taken at once. */
import { native } from '../native/native.js';
import { iovAfter, iovLength } from '../util/iov.js';

/**
 * Reads `bufs` at `offset` from the page cache only (preadv2 RWF_NOWAIT): the bytes read,
 * all of them or up to the end of the file; or a negative errno (-EAGAIN: some of it must
 * come from the device; -EOPNOTSUPP: the file system cannot say). A short count is the end
 * of the file or the cached part of the range: the next try, from where it stopped, tells
 * which (0: the end), so reads that meet the end of a file need no trip elsewhere.
 */
export function readCached(fd: number, bufs: Uint8Array[], offset: number): number {
  const total = iovLength(bufs);
  let done = 0;
  for (;;) {
    const n = native().rwNowait(fd, done ? iovAfter(bufs, done) : bufs, offset + done, false);
    if (n === 0) return done;
    if (n < 0) return n;
    done += n;
    if (done === total) return done;
  }
}
