import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { MemoryFs } from '../src/backends/memory/memory-fs.js';
import { Errno } from '../src/fuse/errno.js';
import { FUSE_INIT_BSWAP_RESERVED, Opcode, SIZE } from '../src/fuse/opcodes.js';
import { encodeRequest } from '../src/fuse/request-codec.js';
import { RequestSpecs } from '../src/fuse/request-specs.js';
import { Writer } from '../src/fuse/wire.js';
import { type OutMsg, SessionPeer, parseOut } from './helpers/session-peer.js';
import { WRITE_HEAD, splitRequest } from '../src/devices/vhost-user/fuse-request.js';
import type { ReplyTarget } from '../src/fuse/session.js';

const S_IFREG = 0o100000;

async function ready(): Promise<SessionPeer> {
  const p = new SessionPeer(new MemoryFs());
  const r = await p.init();
  assert.equal(r.error, 0);
  return p;
}

/** The session still answers a well-formed request correctly. */
async function stillServes(p: SessionPeer): Promise<void> {
  const r = await p.call(Opcode.FUSE_GETATTR, 1, {});
  assert.equal(r.error, 0);
  assert.equal(r.body.length, SIZE.attr_out);
}

test('requests before INIT get EIO; INIT then enables service', async () => {
  const p = new SessionPeer(new MemoryFs());
  const r = await p.call(Opcode.FUSE_GETATTR, 1, {});
  assert.equal(r.error, -Errno.EIO);
  assert.equal((await p.init()).error, 0);
  await stillServes(p);
});

test('a big-endian INIT is answered with EPROTO and a clear reason', async () => {
  const p = new SessionPeer(new MemoryFs());
  const w = new Writer().u32(0x68000000).u32(FUSE_INIT_BSWAP_RESERVED).u64(0x0200000000000000n).zeros(24).zeros(64);
  const buf = w.finish();
  buf.writeUInt32LE(buf.length, 0); // length as we would read it, so the header passes
  const [r] = await p.raw(buf);
  assert.equal(r!.error, -Errno.EPROTO);
  assert.equal(p.session.state, 'broken');
  assert.match(p.session.brokenReason!, /big-endian/);
});

test('unknown opcodes get ENOSYS and the session goes on', async () => {
  const p = await ready();
  for (const op of [7, 19, 54, 999, 4096, 0xffffffff]) {
    const buf = encodeRequest({ opcode: op, unique: 7n, nodeid: 1 }, [], {});
    const [r] = await p.raw(buf);
    assert.equal(r!.error, -Errno.ENOSYS, `opcode ${op}`);
    assert.equal(r!.unique, 7n);
  }
  await stillServes(p);
});

test('truncated op structs and names without NUL are answered EINVAL', async () => {
  const p = await ready();
  for (const op of Object.keys(RequestSpecs).map(Number)) {
    if (op === Opcode.FUSE_INIT || op === Opcode.FUSE_FORGET || op === Opcode.FUSE_BATCH_FORGET || op === Opcode.FUSE_NOTIFY_REPLY || op === Opcode.FUSE_INTERRUPT) continue;
    const spec = RequestSpecs[op as keyof typeof RequestSpecs];
    if (spec.length === 0) continue;
    // 3 bytes of arguments: shorter than every fixed struct and never NUL-terminated.
    const w = new Writer();
    const len = SIZE.in_header + 3;
    w.u32(len).u32(op).u64(50n).u64(1).u32(0).u32(0).u32(0).u32(0).bytes(Buffer.from('abc'));
    const replies = await p.raw(w.finish());
    assert.equal(replies.length, 1, `opcode ${op}`);
    assert.ok(replies[0]!.error === -Errno.EINVAL || replies[0]!.error === -Errno.ENOSYS, `opcode ${op}: ${replies[0]!.error}`);
    assert.equal(replies[0]!.unique, 50n);
  }
  await stillServes(p);
});

test('WRITE whose size disagrees with the data, and absurd READ sizes, are refused', async () => {
  const p = await ready();
  const created = await p.call(Opcode.FUSE_CREATE, 1, { flags: 2, mode: S_IFREG | 0o644, umask: 0, name: 'f' });
  assert.equal(created.error, 0);
  const ino = Number(created.body.readBigUInt64LE(0));
  const fh = Number(created.body.readBigUInt64LE(SIZE.entry_out));
  const w = encodeRequest({ opcode: Opcode.FUSE_WRITE, unique: 60n, nodeid: ino }, RequestSpecs[Opcode.FUSE_WRITE], { fh, offset: 0, size: 100, data: Buffer.alloc(10) });
  const [r] = await p.raw(w);
  assert.equal(r!.error, -Errno.EINVAL);
  const rd = await p.call(Opcode.FUSE_READ, ino, { fh, offset: 0, size: 0xffffffff });
  assert.equal(rd.error, -Errno.EINVAL);
  const bf = encodeRequest({ opcode: Opcode.FUSE_BATCH_FORGET, unique: 61n }, [['u32', 'count'], ['u32', 'dummy']], { count: 1_000_000 });
  assert.deepEqual(await p.raw(bf), [], 'no reply to a (bad) BATCH_FORGET');
  await stillServes(p);
});

test('WRITE data held in place by the transport: split anywhere, checked against its header', async () => {
  const p = await ready();
  const created = await p.call(Opcode.FUSE_CREATE, 1, { flags: 2, mode: S_IFREG | 0o644, umask: 0, name: 'z' });
  const ino = Number(created.body.readBigUInt64LE(0));
  const fh = Number(created.body.readBigUInt64LE(SIZE.entry_out));
  const data = Buffer.from(Array.from({ length: 5000 }, (_, i) => i % 251));
  const whole = encodeRequest({ opcode: Opcode.FUSE_WRITE, unique: 70n, nodeid: ino }, RequestSpecs[Opcode.FUSE_WRITE], { fh, offset: 3, size: data.length, data });
  // Chains as a guest lays them out: the header over three buffers, the data over two.
  const chain = [whole.subarray(0, 7), whole.subarray(7, 50), whole.subarray(50, 90), whole.subarray(90, 4200), whole.subarray(4200)];
  const { request, writeSrc } = splitRequest(chain);
  assert.equal(request.length, WRITE_HEAD);
  assert.ok(writeSrc && Buffer.concat(writeSrc).equals(data));
  assert.equal(writeSrc[0]!.buffer, whole.buffer, 'the data is not copied');
  const send = (target: ReplyTarget, head: Uint8Array) =>
    new Promise<OutMsg>((resolve) => p.session.handle(head, (chunks) => resolve(parseOut(chunks)), target));
  const ok = await send({ payload: [], writeSrc }, request);
  assert.equal(ok.error, 0);
  assert.equal(ok.body.readUInt32LE(0), data.length);
  const back = await p.call(Opcode.FUSE_READ, ino, { fh, offset: 3, size: data.length });
  assert.ok(back.body.equals(data));
  // The header's length must count the data held elsewhere (else the request is malformed),
  // fuse_write_in.size must match it, and only a WRITE may have any.
  assert.equal((await send({ payload: [], writeSrc: [data.subarray(0, 100)] }, request)).error, -Errno.EIO);
  const lying = Buffer.from(request);
  lying.writeUInt32LE(4000, 56); // fuse_write_in.size
  assert.equal((await send({ payload: [], writeSrc }, lying)).error, -Errno.EINVAL);
  const getattr = encodeRequest({ opcode: Opcode.FUSE_GETATTR, unique: 71n, nodeid: ino }, RequestSpecs[Opcode.FUSE_GETATTR], { getattr_flags: 0, fh: 0 });
  assert.equal((await send({ payload: [], writeSrc: [data] }, getattr)).error, -Errno.EIO);
  // Not split: requests other than WRITE, WRITEs with extensions, too short to be a WRITE.
  assert.equal(splitRequest([getattr]).writeSrc, undefined);
  const ext = Buffer.from(whole);
  ext.writeUInt16LE(1, 36);
  assert.equal(splitRequest([ext]).writeSrc, undefined);
  assert.equal(splitRequest([whole.subarray(0, 60)]).request.length, 60);
  await stillServes(p);
});

test('names with "/" or over 255 bytes are refused before reaching the backend', async () => {
  const p = await ready();
  assert.equal((await p.call(Opcode.FUSE_MKDIR, 1, { mode: 0o755, umask: 0, name: 'a/b' })).error, -Errno.EINVAL);
  assert.equal((await p.call(Opcode.FUSE_MKDIR, 1, { mode: 0o755, umask: 0, name: 'x'.repeat(256) })).error, -Errno.ENAMETOOLONG);
  assert.equal((await p.call(Opcode.FUSE_LOOKUP, 1, { name: Buffer.from([0xff, 0xfe]) })).error, -Errno.EILSEQ);
});

test('GETXATTR answers size probes and ERANGE', async () => {
  const p = await ready();
  const c = await p.call(Opcode.FUSE_CREATE, 1, { flags: 2, mode: S_IFREG | 0o644, umask: 0, name: 'x' });
  const ino = Number(c.body.readBigUInt64LE(0));
  assert.equal((await p.call(Opcode.FUSE_SETXATTR, ino, { size: 5, flags: 0, setxattr_flags: 0, name: 'user.k', value: Buffer.from('hello') })).error, 0);
  const probe = await p.call(Opcode.FUSE_GETXATTR, ino, { size: 0, name: 'user.k' });
  assert.equal(probe.body.readUInt32LE(0), 5);
  assert.equal((await p.call(Opcode.FUSE_GETXATTR, ino, { size: 2, name: 'user.k' })).error, -Errno.ERANGE);
  assert.equal((await p.call(Opcode.FUSE_GETXATTR, ino, { size: 64, name: 'user.k' })).body.toString(), 'hello');
});

test('INTERRUPT aborts a blocked SETLKW with EINTR; unknown targets get EAGAIN', async () => {
  const p = await ready();
  const c = await p.call(Opcode.FUSE_CREATE, 1, { flags: 2, mode: S_IFREG | 0o644, umask: 0, name: 'lk' });
  const ino = Number(c.body.readBigUInt64LE(0));
  const lk = { start: 0, end: 100, type: 1, pid: 1 };
  assert.equal((await p.call(Opcode.FUSE_SETLK, ino, { fh: 1, owner: 1n, lk })).error, 0);
  assert.equal((await p.call(Opcode.FUSE_SETLK, ino, { fh: 1, owner: 2n, lk })).error, -Errno.EAGAIN);
  const waiting = p.call(Opcode.FUSE_SETLKW, ino, { fh: 1, owner: 2n, lk });
  const uniqueOfWait = p.lastUnique;
  const intr = encodeRequest({ opcode: Opcode.FUSE_INTERRUPT, unique: 999n }, RequestSpecs[Opcode.FUSE_INTERRUPT], { unique: uniqueOfWait });
  assert.deepEqual(await p.raw(intr), [], 'interrupt of a live request has no reply of its own');
  assert.equal((await waiting).error, -Errno.EINTR);
  const stray = encodeRequest({ opcode: Opcode.FUSE_INTERRUPT, unique: 1000n }, RequestSpecs[Opcode.FUSE_INTERRUPT], { unique: 123456n });
  const [r] = await p.raw(stray);
  assert.equal(r!.error, -Errno.EAGAIN);
});

test('a backend that throws a plain Error answers EIO; one reply per request', async () => {
  const fs = new MemoryFs();
  (fs as unknown as { getattr: () => never }).getattr = () => {
    throw new Error('boom');
  };
  const p = new SessionPeer(fs);
  await p.init();
  const r = await p.call(Opcode.FUSE_GETATTR, 1, {});
  assert.equal(r.error, -Errno.EIO);
});

test('a backend that answers at once is answered before handle() returns; a promise, later; throws at once or later, as errno', async () => {
  const fs = new MemoryFs();
  const p = new SessionPeer(fs);
  await p.init();
  const request = (op: number, unique: bigint, nodeid: number, args: Record<string, unknown> = {}) =>
    encodeRequest({ opcode: op, unique, nodeid }, RequestSpecs[op as keyof typeof RequestSpecs] as never, args);
  const handled = (buf: Uint8Array) => {
    const replies: OutMsg[] = [];
    p.session.handle(buf, (chunks) => replies.push(parseOut(chunks)));
    return replies;
  };
  // The memory backend answers GETATTR and LOOKUP at once.
  const now = handled(request(Opcode.FUSE_GETATTR, 500n, 1));
  assert.equal(now.length, 1, 'answered within handle()');
  assert.equal(now[0]!.error, 0);
  assert.equal(handled(request(Opcode.FUSE_LOOKUP, 501n, 1, { name: 'nothing-here' })).length, 1, 'a LOOKUP too');
  assert.equal(p.session.stats.inFlight, 0);
  // An INTERRUPT naming a request answered at once finds nothing in flight: EAGAIN.
  const [late] = await p.raw(request(Opcode.FUSE_INTERRUPT, 502n, 0, { unique: 500n }));
  assert.equal(late!.error, -Errno.EAGAIN);
  // A backend's promise: answered after handle() returned, in flight meanwhile.
  const slow = fs as unknown as { getattr: (...a: unknown[]) => unknown };
  const sync = slow.getattr.bind(fs);
  slow.getattr = (...a: unknown[]) => new Promise((r) => setTimeout(() => r(sync(...a)), 10));
  const later = handled(request(Opcode.FUSE_GETATTR, 503n, 1));
  assert.equal(later.length, 0, 'not yet');
  assert.equal(p.session.stats.inFlight, 1);
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(later.length, 1);
  assert.equal(later[0]!.error, 0);
  assert.equal(p.session.stats.inFlight, 0);
  // Errors thrown at once or rejected later: the same errno reply.
  slow.getattr = () => {
    throw Object.assign(new Error('gone'), { errno: -Errno.ESTALE, code: 'ESTALE' });
  };
  assert.equal(handled(request(Opcode.FUSE_GETATTR, 504n, 1))[0]!.error, -Errno.ESTALE);
  slow.getattr = () => Promise.reject(Object.assign(new Error('gone'), { errno: -Errno.ESTALE, code: 'ESTALE' }));
  const rejected = handled(request(Opcode.FUSE_GETATTR, 505n, 1));
  await new Promise((r) => setTimeout(r, 5));
  assert.equal(rejected[0]!.error, -Errno.ESTALE);
  assert.equal(p.session.stats.inFlight, 0);
});

test('random bytes never throw and never get two replies (property)', async () => {
  const p = await ready();
  await fc.assert(
    fc.asyncProperty(fc.uint8Array({ minLength: 0, maxLength: 200 }), fc.integer({ min: 0, max: 60 }), async (junk, op) => {
      // Half of the cases get a consistent length and a real opcode so they reach the decoders.
      const buf = Buffer.from(junk.length >= 40 ? junk : Buffer.concat([Buffer.alloc(40), junk]));
      if (op % 2 === 0) {
        buf.writeUInt32LE(buf.length, 0);
        buf.writeUInt32LE(op, 4);
        buf.writeUInt16LE(0, 36);
      }
      if (buf.readUInt32LE(4) === Opcode.FUSE_INIT || buf.readUInt32LE(4) === Opcode.FUSE_DESTROY) buf.writeUInt32LE(999, 4);
      let replies = 0;
      assert.doesNotThrow(() => p.session.handle(buf, () => void replies++));
      await new Promise((r) => setImmediate(r));
      assert.ok(replies <= 1);
    }),
    { numRuns: 500 },
  );
  assert.equal(p.session.state, 'running');
  await stillServes(p);
});
