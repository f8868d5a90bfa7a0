/** What of a FUSE request taken from a descriptor chain is copied out of guest memory. */
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
  return { request: head.length === WRITE_HEAD ? Buffer.concat(readable) : head };
}
