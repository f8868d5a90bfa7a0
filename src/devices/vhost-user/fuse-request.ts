/** What of a FUSE request taken from a descriptor chain is copied out of guest memory, and how its reply is copied in. */
import { Opcode } from '../../fuse/opcodes.js';
import { iovAfter, iovHead, iovLength } from '../../util/iov.js';

/** FUSE_IN_HEADER and fuse_write_in: all of a WRITE that is parsed. */
export const WRITE_HEAD = 80;

/** Whether a request that starts with `head` is a WRITE (with no extensions after its data). */
function isPlainWrite(head: Buffer): boolean {
  return head.length === WRITE_HEAD && head.readUInt32LE(4) === Opcode.FUSE_WRITE && head.readUInt16LE(36) === 0;
}

/**
 * A copy of the start of a request (what a WRITE's parsing needs), and whether the rest is
 * WRITE data that may stay in guest memory.
 */
export function requestHead(readable: Uint8Array[]): { head: Buffer; dataInPlace: boolean } {
  const head = iovHead(readable, WRITE_HEAD);
  return { head, dataInPlace: isPlainWrite(head) && iovLength(readable) > WRITE_HEAD };
}

/**
 * The private copy of a request that is parsed (the guest cannot change it under us). A
 * WRITE's data is not parsed: it stays in guest memory and goes to the backend from there,
 * as a device's DMA would read it.
 */
export function splitRequest(readable: Uint8Array[]): { request: Buffer; writeSrc?: Uint8Array[] } {
  const { head, dataInPlace } = requestHead(readable);
  if (dataInPlace) return { request: head, writeSrc: iovAfter(readable, WRITE_HEAD) };
  // The head is the whole request unless there is more (a READ is exactly WRITE_HEAD long).
  return { request: head.length === WRITE_HEAD && iovLength(readable) > WRITE_HEAD ? Buffer.concat(readable) : head };
}

/** Copies a reply into the chain's writable buffers; a reply that does not fit becomes EIO. */
export function scatter(chunks: Uint8Array[], writable: Uint8Array[]): number {
  let total = 0;
  for (const c of chunks) total += c.length;
  let capacity = 0;
  for (const w of writable) capacity += w.length;
  if (total > capacity) {
    if (capacity < 16 || chunks[0]!.length < 16) return 0;
    const hdr = Buffer.from(chunks[0]!.subarray(0, 16));
    hdr.writeUInt32LE(16, 0);
    hdr.writeInt32LE(-5, 4); // EIO
    chunks = [hdr];
    total = 16;
  }
  let wi = 0;
  let wo = 0;
  for (const c of chunks) {
    let co = 0;
    while (co < c.length) {
      const w = writable[wi]!;
      const n = Math.min(w.length - wo, c.length - co);
      w.set(co === 0 && n === c.length ? c : c.subarray(co, co + n), wo);
      co += n;
      wo += n;
      if (wo === w.length) {
        wi++;
        wo = 0;
      }
    }
  }
  return total;
}
