import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { decodeInitIn, encodeInitOut, negotiate } from '../src/fuse/init.js';
import { InitFlag, Opcode, SIZE } from '../src/fuse/opcodes.js';
import { decodeArgs, decodeExtensions, decodeInHeader, encodeRequest } from '../src/fuse/request-codec.js';
import { type Field, RequestSpecs, SetxattrExtSpec } from '../src/fuse/request-specs.js';
import { writeAttrOut, writeDirent, writeEntryOut } from '../src/fuse/reply-codec.js';
import { Reader, WireError, Writer } from '../src/fuse/wire.js';

// FUSE_INIT exactly as Linux 6.18 sent it to a fresh mount (protocol 7.45).
const KERNEL_INIT_HEX =
  '680000001a000000020000000000000000000000000000000000000000000000000000000000000007000000' +
  '2d00000000000200fbffff73fd050000' +
  '0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000';

test('decodes a real kernel INIT request', () => {
  const buf = Buffer.from(KERNEL_INIT_HEX, 'hex');
  assert.equal(buf.length, 104);
  const h = decodeInHeader(buf);
  assert.deepEqual(
    { len: h.len, opcode: h.opcode, unique: h.unique, nodeid: h.nodeid, total_extlen: h.total_extlen },
    { len: 104, opcode: Opcode.FUSE_INIT, unique: 2n, nodeid: 0, total_extlen: 0 },
  );
  const init = decodeInitIn(buf.subarray(SIZE.in_header));
  assert.equal(init.major, 7);
  assert.equal(init.minor, 45);
  assert.equal(init.max_readahead, 131072);
  assert.equal(init.flags & 0xffffffffn, 0x73fffffbn);
  assert.equal(init.flags >> 32n, 0x5fdn);
  assert.ok(init.flags & InitFlag.FUSE_CREATE_SUPP_GROUP);
});

test('INIT reply: golden bytes for a 7.45 kernel', () => {
  const kernel = decodeInitIn(Buffer.from(KERNEL_INIT_HEX, 'hex').subarray(SIZE.in_header));
  const wanted = InitFlag.FUSE_ASYNC_READ | InitFlag.FUSE_MAX_PAGES | InitFlag.FUSE_INIT_EXT | InitFlag.FUSE_CREATE_SUPP_GROUP;
  const r = negotiate({ kernel, wanted, maxWrite: 1 << 20 });
  assert.equal(r.ok, true);
  const w = new Writer();
  encodeInitOut(w, r.ok === true ? r.out : (undefined as never));
  assert.equal(
    w.finish().toString('hex'),
    '07000000' + '2d000000' + '00000200' + '01004040' + '4000' + '3000' + '00001000' + '01000000' + '0001' + '0000' + '04000000' + '00'.repeat(28),
  );
});

test('INIT: old kernels get the reply size their minor expects; unsupported ones are refused', () => {
  const old = decodeInitIn(new Writer().u32(7).u32(19).u32(65536).u32(0x1).finish());
  const r = negotiate({ kernel: old, wanted: InitFlag.FUSE_ASYNC_READ | InitFlag.FUSE_INIT_EXT, maxWrite: 1 << 20 });
  assert.equal(r.ok, true);
  if (r.ok !== true) return;
  assert.equal(r.out.minor, 19);
  assert.equal(r.out.flags, InitFlag.FUSE_ASYNC_READ);
  assert.equal(r.out.max_write, 32 * 4096, 'without MAX_PAGES the kernel caps at 32 pages');
  const w = new Writer();
  encodeInitOut(w, r.out);
  assert.equal(w.length, 24);
  const ancient = negotiate({ kernel: { major: 7, minor: 8, max_readahead: 0, flags: 0n }, wanted: 0n, maxWrite: 4096 });
  assert.equal(ancient.ok, false);
  const future = negotiate({ kernel: { major: 8, minor: 0, max_readahead: 0, flags: 0n }, wanted: 0n, maxWrite: 4096 });
  assert.equal(future.ok, 'retry');
  // flags2 is ignored unless FUSE_INIT_EXT is set in flags.
  const noExt = decodeInitIn(new Writer().u32(7).u32(40).u32(0).u32(0).u32(0xffffffff).zeros(44).finish());
  assert.equal(noExt.flags, 0n);
});

test('LOOKUP request: golden bytes', () => {
  const buf = encodeRequest({ opcode: Opcode.FUSE_LOOKUP, unique: 10n, nodeid: 1, uid: 1000, gid: 100, pid: 42 }, RequestSpecs[Opcode.FUSE_LOOKUP], { name: 'a.txt' });
  assert.equal(
    buf.toString('hex'),
    '2e000000' + '01000000' + '0a00000000000000' + '0100000000000000' + 'e8030000' + '64000000' + '2a000000' + '0000' + '0000' + '612e74787400',
  );
});

test('entry_out, attr_out and dirent encode to the kernel layout', () => {
  const attr = {
    ino: 5, size: 4097, blocks: 16, atime: { sec: 1, nsec: 2 }, mtime: { sec: 3, nsec: 4 }, ctime: { sec: 5, nsec: 6 },
    mode: 0o100644, nlink: 1, uid: 1000, gid: 1000, rdev: 0, blksize: 4096,
  };
  const w = new Writer();
  writeEntryOut(w, { ino: 5, generation: 7, attr, entryTimeout: 1.5, attrTimeout: 0 });
  const b = w.finish();
  assert.equal(b.length, SIZE.entry_out);
  const r = new Reader(b);
  assert.deepEqual([r.u64(), r.u64(), r.u64(), r.u64(), r.u32(), r.u32()], [5, 7, 1, 0, 500_000_000, 0]);
  assert.deepEqual([r.u64(), r.u64(), r.u64()], [5, 4097, 16]);
  const a = new Writer();
  writeAttrOut(a, attr, 2);
  assert.equal(a.length, SIZE.attr_out);
  const d = new Writer();
  writeDirent(d, 9, 3, 8, Buffer.from('abc'));
  assert.equal(d.finish().toString('hex'), '0900000000000000' + '0300000000000000' + '03000000' + '08000000' + '61626300' + '00000000');
});

test('supplementary groups extension round-trips', () => {
  const buf = encodeRequest({ opcode: Opcode.FUSE_MKDIR, unique: 3n, nodeid: 1, groups: [10, 20, 30] }, RequestSpecs[Opcode.FUSE_MKDIR], { mode: 0o755, umask: 0o22, name: 'd' });
  const h = decodeInHeader(buf);
  assert.equal(h.total_extlen, 3);
  assert.deepEqual(decodeExtensions(buf, h).groups, [10, 20, 30]);
  const args = decodeArgs(RequestSpecs[Opcode.FUSE_MKDIR], new Reader(buf, SIZE.in_header, h.len - h.total_extlen * 8));
  assert.equal(Buffer.from(args.name as Uint8Array).toString(), 'd');
});

// Random values for each field kind, constrained to what the kind can carry exactly.
function arbFor(spec: readonly Field[]): fc.Arbitrary<Record<string, unknown>> {
  const parts: Record<string, fc.Arbitrary<unknown>> = {};
  const sized = new Set(spec.filter((f) => f[0] === 'sized' || f[0] === 'forgets').map((f) => f[2] as string));
  for (const f of spec) {
    const [kind, name] = f;
    if (sized.has(name)) continue; // derived from the data below
    switch (kind) {
      case 'u16': parts[name] = fc.integer({ min: 0, max: 0xffff }); break;
      case 'u32': parts[name] = fc.integer({ min: 0, max: 0xffffffff }); break;
      case 'i32': parts[name] = fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }); break;
      case 'u64': parts[name] = fc.maxSafeNat(); break;
      case 'i64': parts[name] = fc.integer({ min: -(2 ** 40), max: 2 ** 40 }); break;
      case 'u64b': parts[name] = fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }); break;
      case 'name': parts[name] = fc.uint8Array({ minLength: 0, maxLength: 40 }).map((a) => a.map((x) => x || 1)); break;
      case 'data': parts[name] = fc.uint8Array({ maxLength: 64 }); break;
      case 'sized': parts[name] = fc.uint8Array({ maxLength: 300 }); break;
      case 'lk': parts[name] = fc.record({ start: fc.maxSafeNat(), end: fc.maxSafeNat(), type: fc.integer({ min: 0, max: 2 }), pid: fc.nat() }).map((o) => ({ ...o })); break;
      case 'forgets': parts[name] = fc.array(fc.record({ nodeid: fc.maxSafeNat(), nlookup: fc.maxSafeNat() }).map((o) => ({ ...o })), { maxLength: 20 }); break;
    }
  }
  return fc.record(parts).map((args) => {
    for (const f of spec) {
      if (f[0] === 'sized') args[f[2]] = (args[f[1]] as Uint8Array).length;
      if (f[0] === 'forgets') args[f[2]] = (args[f[1]] as unknown[]).length;
    }
    return args;
  });
}

test('every request layout round-trips through encode and decode (property)', () => {
  const specs: [string, readonly Field[]][] = [...Object.entries(RequestSpecs), ['setxattr_ext', SetxattrExtSpec]];
  assert.ok(specs.length >= 52);
  for (const [op, spec] of specs) {
    fc.assert(
      fc.property(arbFor(spec), fc.bigInt({ min: 1n, max: 2n ** 64n - 1n }), (args, unique) => {
        const buf = encodeRequest({ opcode: Number(op) || Opcode.FUSE_SETXATTR, unique, nodeid: 1 }, spec, args);
        const h = decodeInHeader(buf);
        assert.equal(h.unique, unique);
        const r = new Reader(buf, SIZE.in_header, h.len);
        const back = decodeArgs(spec, r);
        assert.equal(r.remaining, 0, `op ${op}: trailing bytes`);
        for (const [k, v] of Object.entries(args)) {
          const got = back[k];
          if (v instanceof Uint8Array) assert.deepEqual(Buffer.from(got as Uint8Array), Buffer.from(v), `op ${op} field ${k}`);
          else assert.deepEqual(got, v, `op ${op} field ${k}`);
        }
      }),
      { numRuns: 60 },
    );
  }
});

test('the reader refuses to run past its bound', () => {
  const r = new Reader(Buffer.from([1, 2, 3, 4, 5]), 0, 4);
  assert.equal(r.u32(), 0x04030201);
  assert.throws(() => r.u32(), WireError);
  assert.throws(() => new Reader(Buffer.from('abc'), 0, 3).cstring(), /not NUL-terminated/);
  // A NUL beyond the bound does not count.
  assert.throws(() => new Reader(Buffer.from('ab\0'), 0, 2).cstring(), /not NUL-terminated/);
  // u64 above 2^53 saturates instead of wrapping.
  assert.equal(new Reader(Buffer.from('ffffffffffffffff', 'hex')).u64(), Number.MAX_SAFE_INTEGER + 1);
});

test('header validation: length mismatch and oversized extensions are rejected', () => {
  const good = encodeRequest({ opcode: Opcode.FUSE_GETATTR, unique: 1n, nodeid: 1 }, RequestSpecs[Opcode.FUSE_GETATTR], {});
  assert.throws(() => decodeInHeader(good.subarray(0, 39)), WireError);
  const bad = Buffer.from(good);
  bad.writeUInt32LE(good.length + 8, 0);
  assert.throws(() => decodeInHeader(bad), /disagrees/);
  const ext = Buffer.from(good);
  ext.writeUInt16LE(100, 36);
  assert.throws(() => decodeInHeader(ext), /total_extlen/);
});
