/**
 * READ and WRITE served by a queue thread itself, on the open files a backend published
 * (SharedHandles): the data moves between guest memory and the host file in one system call
 * on this thread, and the reply goes straight to the used ring. Anything else — a handle not
 * published, a read that would wait, an error, a request in any shape but the kernel's
 * plain one — returns null and goes to the main thread as usual, which then answers it
 * (reading or writing again is harmless: both are positional).
 */
import { readvSync, writevSync } from 'node:fs';
import { Opcode, FUSE_WRITE_KILL_SUIDGID } from '../../fuse/opcodes.js';
import { SH_READ, SH_READ_AT_ONCE, SH_WRITE, SH_WRITE_AT_ONCE, type SharedHandles } from '../../fs/shared-handles.js';
import { readCached } from '../../fs/page-cache.js';
import { native } from '../../native/native.js';
import { iovAfter, iovLength, iovUpTo } from '../../util/iov.js';
import { scatter } from './fuse-request.js';
import type { Chain } from './virtqueue.js';

const IN_HEADER = 40;
const IO_IN = 40; // fuse_read_in and fuse_write_in
const OUT_HEADER = 16;
const WRITE_OUT = 8;
const IOV_MAX = 1024;

/** Serves `chain` here if it can; returns the bytes written to its writable buffers, or null. */
export function serveInThread(chain: Chain, head: Buffer, handles: SharedHandles): number | null {
  if (head.length < IN_HEADER + IO_IN) return null;
  const op = head.readUInt32LE(4);
  if (op !== Opcode.FUSE_READ && op !== Opcode.FUSE_WRITE) return null;
  const len = head.readUInt32LE(0);
  if (head.readUInt16LE(36) !== 0) return null; // extensions: the main thread's business
  const size = head.readUInt32LE(56);
  const offHi = head.readUInt32LE(52);
  if (offHi >= 2 ** 21) return null; // at or past 2^53: answered by the backend
  const offset = offHi * 2 ** 32 + head.readUInt32LE(48);
  const readable = iovLength(chain.readable);
  const capacity = iovLength(chain.writable);
  let dst: Uint8Array[];
  let src: Uint8Array[] | undefined;
  if (op === Opcode.FUSE_READ) {
    if (len !== IN_HEADER + IO_IN || readable !== len || capacity < OUT_HEADER + size) return null;
    dst = iovUpTo(iovAfter(chain.writable, OUT_HEADER), size);
  } else {
    if (len !== IN_HEADER + IO_IN + size || readable !== len || capacity < OUT_HEADER + WRITE_OUT) return null;
    if (head.readUInt32LE(60) & FUSE_WRITE_KILL_SUIDGID) return null; // as the caller: the backend
    src = iovAfter(chain.readable, IN_HEADER + IO_IN);
    dst = [];
  }
  if ((src ?? dst).length > IOV_MAX) return null;
  const slot = handles.enter(head.readUInt32LE(40), head.readUInt32LE(44));
  if (slot < 0) return null;
  let n: number;
  try {
    const fd = handles.fd(slot);
    const flags = handles.flags(slot);
    if (src) {
      if (!(flags & SH_WRITE)) return null;
      n = flags & SH_WRITE_AT_ONCE ? writevSync(fd, src, offset) : native().rwNowait(fd, src, offset, true);
      if (n !== size) return null; // refused, an error, or short: the backend answers
    } else {
      if (!(flags & SH_READ)) return null;
      if (flags & SH_READ_AT_ONCE) n = size ? readvSync(fd, dst, offset) : 0;
      else {
        // From the page cache only; a miss goes to the backend, which reads it all again
        // (positional: harmless).
        n = size ? readCached(fd, dst, offset) : 0;
        if (n < 0) return null;
      }
    }
  } catch {
    return null;
  } finally {
    handles.leave(slot);
  }
  const reply = Buffer.alloc(src ? OUT_HEADER + WRITE_OUT : OUT_HEADER);
  const total = src ? OUT_HEADER + WRITE_OUT : OUT_HEADER + n;
  reply.writeUInt32LE(total, 0);
  reply.writeInt32LE(0, 4);
  head.copy(reply, 8, 8, 16); // unique
  if (src) reply.writeUInt32LE(n, OUT_HEADER);
  scatter([reply], chain.writable); // fits: checked above; READ data follows, already in place
  return total;
}
