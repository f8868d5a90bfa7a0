/** Drives a Session the way a kernel would, over plain buffers, and collects the replies. */
import type { FileSystem } from '../../src/fs/api.js';
import { Opcode, SIZE } from '../../src/fuse/opcodes.js';
import { encodeRequest } from '../../src/fuse/request-codec.js';
import { type Field, RequestSpecs, SetxattrExtSpec, type SpecOpcode } from '../../src/fuse/request-specs.js';
import { Session } from '../../src/fuse/session.js';
import { Writer } from '../../src/fuse/wire.js';

export interface OutMsg {
  len: number;
  error: number;
  unique: bigint;
  body: Buffer;
}

export function parseOut(chunks: Uint8Array[]): OutMsg {
  const b = Buffer.concat(chunks);
  return { len: b.readUInt32LE(0), error: b.readInt32LE(4), unique: b.readBigUInt64LE(8), body: b.subarray(SIZE.out_header) };
}

export class SessionPeer {
  readonly session: Session;
  readonly sent: { unique: bigint; replies: OutMsg[] }[] = [];
  /** Unique of the most recent call. */
  lastUnique = 0n;
  private unique = 100n;

  constructor(fs: FileSystem) {
    this.session = new Session(fs, { transport: { name: 'test', maxWrite: 1 << 20 } });
  }

  /** Sends raw bytes; resolves with every reply that arrives within the settle time. */
  async raw(buf: Uint8Array, settleMs = 5): Promise<OutMsg[]> {
    const replies: OutMsg[] = [];
    this.session.handle(buf, (chunks) => replies.push(parseOut(chunks)));
    await new Promise((r) => setTimeout(r, settleMs));
    return replies;
  }

  async init(minor = 45, flags = 0x73fffffb, flags2 = 0x5fd): Promise<OutMsg> {
    const w = new Writer().u32(7).u32(minor).u32(131072).u32(flags).u32(flags2).zeros(44);
    const buf = encodeRequest({ opcode: Opcode.FUSE_INIT, unique: 2n }, [['data', 'raw']], { raw: w.finish() });
    // The backend's init may take a while (a passthrough opens its export through the pool).
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no reply to INIT')), 10000);
      this.session.handle(buf, (chunks) => {
        clearTimeout(timer);
        resolve(parseOut(chunks));
      });
    });
  }

  /** Sends one request and waits for its single reply. */
  call<O extends SpecOpcode>(op: O, nodeid: number, args: Record<string, unknown>, cred: { uid?: number; gid?: number; groups?: number[] } = {}): Promise<OutMsg> {
    const unique = this.unique++;
    this.lastUnique = unique;
    // The peer negotiates FUSE_SETXATTR_EXT, so SETXATTR carries the extended struct.
    const spec = op === Opcode.FUSE_SETXATTR ? SetxattrExtSpec : (RequestSpecs[op] as readonly Field[]);
    const buf = encodeRequest({ opcode: op, unique, nodeid, uid: cred.uid ?? 0, gid: cred.gid ?? 0, pid: 1, groups: cred.groups }, spec, args);
    return new Promise((resolve, reject) => {
      let n = 0;
      this.session.handle(buf, (chunks) => {
        if (++n > 1) reject(new Error('second reply'));
        resolve(parseOut(chunks));
      });
    });
  }
}
