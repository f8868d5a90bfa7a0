/**
 * A /dev/fuse reader thread: blocks in read(2) on its own thread (never on the
 * event loop or libuv's pool) and hands each request to the main thread.
 */
import { readSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';

const { fd, bufSize } = workerData as { fd: number; bufSize: number };
const buf = Buffer.allocUnsafe(bufSize);

for (;;) {
  let n: number;
  try {
    n = readSync(fd, buf, 0, bufSize, null);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    // ENOENT: the request was interrupted before we read it; EINTR/EAGAIN: try again.
    if (code === 'EINTR' || code === 'ENOENT' || code === 'EAGAIN') continue;
    // ENODEV: unmounted or aborted — the normal end of a session.
    parentPort!.postMessage({ end: code ?? String(err) });
    break;
  }
  if (n === 0) {
    parentPort!.postMessage({ end: 'EOF' });
    break;
  }
  const msg = new Uint8Array(n);
  msg.set(buf.subarray(0, n));
  parentPort!.postMessage(msg, [msg.buffer]);
}
