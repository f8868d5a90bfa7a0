/** FUSE requests over the guest driver, as the guest kernel's virtio-fs client sends them. */
import { Opcode, SIZE } from '../fuse/opcodes.js';
import { encodeRequest } from '../fuse/request-codec.js';
import { type Field, RequestSpecs, type SpecOpcode } from '../fuse/request-specs.js';
import { Writer } from '../fuse/wire.js';

/** What carries a request to the device: the guest driver, or one ring of it in a worker thread. */
export interface RequestSender {
  request(queue: number, req: Uint8Array, replyBytes: number): Promise<Buffer>;
}

export interface FuseReply {
  error: number;
  body: Buffer;
}

/**
 * The bytes of a READ (`what`: its size) or WRITE (`what`: its data) request, for drivers
 * that lay requests out in guest memory themselves (DriverRing.load).
 */
export function ioRequest(unique: bigint, ino: number, fh: number, offset: number, what: number | Uint8Array): Buffer {
  const header = { unique, nodeid: ino, uid: 0, gid: 0, pid: 1 };
  return typeof what === 'number'
    ? encodeRequest({ ...header, opcode: Opcode.FUSE_READ }, RequestSpecs[Opcode.FUSE_READ], { fh, offset, size: what })
    : encodeRequest({ ...header, opcode: Opcode.FUSE_WRITE }, RequestSpecs[Opcode.FUSE_WRITE], { fh, offset, size: what.length, data: what });
}

export class FuseClient {
  private unique: bigint;

  constructor(
    readonly driver: RequestSender,
    /** Request queue to use (1-based). */
    readonly queue = 1,
    /** Where this client's request ids start (clients sharing a device keep theirs apart). */
    firstUnique = 1n,
  ) {
    this.unique = firstUnique;
  }

  async raw(op: number, nodeid: number, spec: readonly Field[], args: Record<string, unknown>, replyBytes = 4096, queue = this.queue): Promise<FuseReply> {
    const req = encodeRequest({ opcode: op, unique: (this.unique += 2n), nodeid, uid: 0, gid: 0, pid: 1 }, spec, args);
    const out = await this.driver.request(queue, req, SIZE.out_header + replyBytes);
    if (out.length < SIZE.out_header) throw new Error(`short reply (${out.length} bytes) to opcode ${op}`);
    return { error: out.readInt32LE(4), body: out.subarray(SIZE.out_header, out.readUInt32LE(0)) };
  }

  call<O extends SpecOpcode>(op: O, nodeid: number, args: Record<string, unknown>, replyBytes = 4096): Promise<FuseReply> {
    return this.raw(op, nodeid, RequestSpecs[op] as readonly Field[], args, replyBytes);
  }

  private async ok<O extends SpecOpcode>(op: O, nodeid: number, args: Record<string, unknown>, replyBytes = 4096): Promise<Buffer> {
    const r = await this.call(op, nodeid, args, replyBytes);
    if (r.error) throw new Error(`opcode ${op} failed: errno ${-r.error}`);
    return r.body;
  }

  /** INIT as a Linux 6.1 guest sends it (protocol 7.38). */
  async init(): Promise<void> {
    const body = new Writer().u32(7).u32(38).u32(131072).u32(0x73fffffb).u32(0x1).zeros(44).finish();
    const r = await this.raw(Opcode.FUSE_INIT, 0, [['data', 'raw']], { raw: body }, 64);
    if (r.error) throw new Error(`INIT failed: errno ${-r.error}`);
  }

  async lookup(parent: number, name: string): Promise<number> {
    return Number((await this.ok(Opcode.FUSE_LOOKUP, parent, { name }, SIZE.entry_out)).readBigUInt64LE(0));
  }
  getattr(ino: number): Promise<FuseReply> {
    return this.call(Opcode.FUSE_GETATTR, ino, {}, SIZE.attr_out);
  }
  async open(ino: number, flags: number): Promise<number> {
    return Number((await this.ok(Opcode.FUSE_OPEN, ino, { flags }, SIZE.open_out)).readBigUInt64LE(0));
  }
  async create(parent: number, name: string, mode: number, flags: number): Promise<{ ino: number; fh: number }> {
    const b = await this.ok(Opcode.FUSE_CREATE, parent, { name, mode, flags, umask: 0 }, SIZE.entry_out + SIZE.open_out);
    return { ino: Number(b.readBigUInt64LE(0)), fh: Number(b.readBigUInt64LE(SIZE.entry_out)) };
  }
  read(ino: number, fh: number, offset: number, size: number): Promise<FuseReply> {
    return this.call(Opcode.FUSE_READ, ino, { fh, offset, size }, size);
  }
  write(ino: number, fh: number, offset: number, data: Uint8Array): Promise<FuseReply> {
    return this.call(Opcode.FUSE_WRITE, ino, { fh, offset, size: data.length, data }, 8);
  }
  forget(ino: number, nlookup: number): Promise<FuseReply> {
    return this.raw(Opcode.FUSE_FORGET, ino, RequestSpecs[Opcode.FUSE_FORGET], { nlookup }, 0, 0).catch(() => ({ error: 0, body: Buffer.alloc(0) }));
  }
}
