/** The memory backend through its API: semantics the kernel would otherwise hide. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { FileData } from '../src/backends/memory/file-data.js';
import { MemoryFs } from '../src/backends/memory/memory-fs.js';
import type { DirEntry, RequestContext } from '../src/fs/api.js';
import { Errno, FsError } from '../src/fuse/errno.js';

const S_IFREG = 0o100000;
const ctx = (uid = 0, gid = 0, groups: number[] = []): RequestContext => ({
  unique: 1n, uid, gid, pid: 1, groups, signal: new AbortController().signal, umask: 0,
});
const root = ctx();

function errno(fn: () => unknown): number | undefined {
  try {
    fn();
  } catch (e) {
    if (e instanceof FsError) return e.errno;
    throw e;
  }
  return undefined;
}

function names(fs: MemoryFs, dir: number): string[] {
  const fh = fs.opendir(root, dir, 0).fh;
  const out: string[] = [];
  fs.readdir(root, dir, fh, 0, { plus: false, add: (e: DirEntry) => (out.push(e.name), true) });
  fs.releasedir(root, dir, fh);
  return out;
}

test('rename: NOREPLACE, EXCHANGE, WHITEOUT, directory rules', () => {
  const fs = new MemoryFs();
  const a = fs.create(root, 1, 'a', S_IFREG | 0o644, 2).entry.ino;
  const b = fs.create(root, 1, 'b', S_IFREG | 0o644, 2).entry.ino;
  const d = fs.mkdir(root, 1, 'd', 0o755).ino;
  const sub = fs.mkdir(root, d, 'sub', 0o755).ino;
  assert.equal(errno(() => fs.rename(root, 1, 'a', 1, 'b', 1)), Errno.EEXIST);
  fs.rename(root, 1, 'a', 1, 'b', 2);
  assert.equal(fs.lookup(root, 1, 'a').ino, b);
  assert.equal(fs.lookup(root, 1, 'b').ino, a);
  assert.equal(errno(() => fs.rename(root, 1, 'a', 1, 'zz', 2)), Errno.ENOENT);
  assert.equal(errno(() => fs.rename(root, 1, 'd', sub, 'x', 0)), Errno.EINVAL, 'into its own subtree');
  assert.equal(errno(() => fs.rename(root, 1, 'a', 1, 'd', 0)), Errno.EISDIR);
  assert.equal(errno(() => fs.rename(root, 1, 'd', 1, 'a', 0)), Errno.ENOTDIR);
  fs.mkdir(root, 1, 'e', 0o755);
  fs.rename(root, 1, 'e', d, 'sub', 0); // replaces an empty directory
  assert.equal(fs.getattr(root, d).attr.nlink, 3);
  fs.rename(root, 1, 'a', 1, 'c', 4);
  assert.equal(fs.lookup(root, 1, 'a').attr.mode & 0o170000, 0o020000, 'whiteout left behind');
  assert.equal(fs.getattr(root, 1).attr.nlink, 3);
});

test('hard links, unlink of open files, and inode lifetime', () => {
  const fs = new MemoryFs();
  const c = fs.create(root, 1, 'f', S_IFREG | 0o644, 2);
  fs.write(root, c.entry.ino, c.open.fh, 0, Buffer.from('data'), { flags: 2, writeFlags: 0 });
  fs.link(root, c.entry.ino, 1, 'g');
  assert.equal(fs.getattr(root, c.entry.ino).attr.nlink, 2);
  fs.unlink(root, 1, 'f');
  fs.unlink(root, 1, 'g');
  // Still open and still looked up: readable.
  assert.equal(Buffer.concat([fs.read(root, c.entry.ino, c.open.fh, 0, 10, { flags: 0 })].flat()).toString(), 'data');
  const before = fs.inodeCount;
  fs.release(root, c.entry.ino, c.open.fh, { flags: 0, flush: false, flockUnlock: false, lockOwner: 0n });
  fs.forget(c.entry.ino, 2); // create and link each returned an entry
  assert.equal(fs.inodeCount, before - 1, 'freed once nothing references it');
});

test('permissions: sticky directories, setgid inheritance, chown rules', () => {
  const fs = new MemoryFs();
  const tmp = fs.mkdir(root, 1, 'tmp', 0o777).ino;
  fs.setattr(root, tmp, { mode: 0o1777 });
  const u1 = ctx(1000, 1000);
  const u2 = ctx(1001, 1001);
  const f = fs.create(u1, tmp, 'f', S_IFREG | 0o666, 2).entry;
  assert.equal(f.attr.uid, 1000);
  assert.equal(errno(() => fs.unlink(u2, tmp, 'f')), Errno.EPERM);
  assert.equal(errno(() => fs.setattr(u2, f.ino, { mode: 0o777 })), Errno.EPERM);
  assert.equal(errno(() => fs.setattr(u1, f.ino, { uid: 1001 })), Errno.EPERM);
  assert.equal(errno(() => fs.setattr(u1, f.ino, { gid: 5 })), Errno.EPERM);
  fs.setattr(ctx(1000, 1000, [5]), f.ino, { gid: 5 });
  const sg = fs.mkdir(root, 1, 'sg', 0o2777).ino;
  fs.setattr(root, sg, { gid: 77 });
  const inner = fs.mkdir(u1, sg, 'inner', 0o755);
  assert.equal(inner.attr.gid, 77);
  assert.ok(inner.attr.mode & 0o2000);
  // setgid on a file whose group the caller is not in is dropped.
  fs.setattr(root, f.ino, { gid: 99 });
  fs.setattr(root, f.ino, { uid: 1000 });
  const r = fs.setattr(u1, f.ino, { mode: 0o2755 });
  assert.equal(r.attr.mode & 0o2000, 0);
  // A write by non-root clears setuid.
  fs.setattr(root, f.ino, { mode: 0o4755 });
  const h = fs.open(u1, f.ino, 2);
  fs.write(u1, f.ino, h.fh, 0, Buffer.from('x'), { flags: 2, writeFlags: 0 });
  assert.equal(fs.getattr(root, f.ino).attr.mode & 0o4000, 0);
});

test('readdir offsets stay valid across concurrent insertions and removals (property)', () => {
  fc.assert(
    fc.property(fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 0, max: 40 })), { maxLength: 60 }), fc.integer({ min: 1, max: 10 }), (ops, pageSize) => {
      const fs = new MemoryFs();
      for (let i = 0; i < 30; i++) fs.mknod(root, 1, `n${i}`, S_IFREG | 0o644, 0);
      const fh = fs.opendir(root, 1, 0).fh;
      const seen: string[] = [];
      let offset = 0;
      let step = 0;
      const alive = new Set(Array.from({ length: 30 }, (_, i) => `n${i}`));
      const removed = new Set<string>();
      for (;;) {
        let got = 0;
        fs.readdir(root, 1, fh, offset, {
          plus: false,
          add: (e) => {
            if (got === pageSize) return false;
            got++;
            seen.push(e.name);
            offset = e.offset;
            return true;
          },
        });
        if (got === 0) break;
        const op = ops[step++];
        if (op) {
          const name = `n${op[1]}`;
          if (op[0] && !alive.has(name) && !removed.has(name)) {
            fs.mknod(root, 1, name, S_IFREG | 0o644, 0);
            alive.add(name);
          } else if (!op[0] && alive.has(name)) {
            fs.unlink(root, 1, name);
            alive.delete(name);
            removed.add(name);
          }
        }
      }
      const entries = seen.filter((n) => n !== '.' && n !== '..');
      assert.equal(new Set(entries).size, entries.length, 'no duplicates');
      for (let i = 0; i < 30; i++) if (!removed.has(`n${i}`)) assert.ok(entries.includes(`n${i}`), `n${i} survived and was seen`);
    }),
    { numRuns: 200 },
  );
});

test('xattr namespaces and limits', () => {
  const fs = new MemoryFs();
  const f = fs.create(root, 1, 'f', S_IFREG | 0o644, 2).entry.ino;
  const u = ctx(1000, 1000);
  assert.equal(errno(() => fs.setxattr(root, f, 'bogus.k', Buffer.from('v'), 0)), Errno.EOPNOTSUPP);
  assert.equal(errno(() => fs.setxattr(u, f, 'trusted.k', Buffer.from('v'), 0)), Errno.EPERM);
  assert.equal(errno(() => fs.setxattr(u, f, 'user.k', Buffer.from('v'), 0)), Errno.EACCES);
  assert.equal(errno(() => fs.setxattr(root, f, 'user.k', Buffer.alloc(65537), 0)), Errno.E2BIG);
  fs.setxattr(root, f, 'trusted.k', Buffer.from('t'), 0);
  fs.setxattr(root, f, 'user.k', Buffer.from('u'), 0);
  assert.deepEqual(fs.listxattr(u, f), ['user.k']);
  assert.deepEqual(fs.listxattr(root, f).sort(), ['trusted.k', 'user.k']);
  const link = fs.symlink(root, 1, 'l', 'f').ino;
  assert.equal(errno(() => fs.setxattr(root, link, 'user.k', Buffer.from('v'), 0)), Errno.EPERM);
});

test('capacity is enforced and reported', () => {
  const fs = new MemoryFs({ capacity: 1024 * 1024 });
  const c = fs.create(root, 1, 'f', S_IFREG | 0o644, 2);
  fs.write(root, c.entry.ino, c.open.fh, 0, Buffer.alloc(512 * 1024), { flags: 2, writeFlags: 0 });
  assert.equal(errno(() => fs.write(root, c.entry.ino, c.open.fh, 512 * 1024, Buffer.alloc(768 * 1024), { flags: 2, writeFlags: 0 })), Errno.ENOSPC);
  const st = fs.statfs();
  assert.equal(st.blocks, 256);
  assert.equal(st.bfree, 128);
  fs.setattr(root, c.entry.ino, { size: 0 });
  assert.equal(fs.statfs().bfree, 256);
});

test('file data: reads into any split of buffers, and views of the chunks, match a flat model; holes read as zeros', () => {
  fc.assert(
    fc.property(
      fc.array(fc.record({ at: fc.nat(300_000), len: fc.integer({ min: 1, max: 70_000 }), byte: fc.integer({ min: 1, max: 255 }) }), { maxLength: 6 }),
      fc.nat(400_000),
      fc.array(fc.integer({ min: 1, max: 150_000 }), { minLength: 1, maxLength: 4 }),
      (writes, offset, sizes) => {
        const data = new FileData();
        let model = Buffer.alloc(0);
        for (const w of writes) {
          data.write(w.at, Buffer.alloc(w.len, w.byte));
          if (model.length < w.at + w.len) model = Buffer.concat([model, Buffer.alloc(w.at + w.len - model.length)]);
          model.fill(w.byte, w.at, w.at + w.len);
        }
        // Stale bytes in the destinations must be overwritten (holes included).
        const dest = sizes.map((n) => Buffer.alloc(n, 0xee));
        const got = data.readInto(offset, dest);
        const want = model.subarray(Math.min(offset, model.length), Math.min(model.length, offset + sizes.reduce((a, b) => a + b, 0)));
        assert.equal(got, want.length);
        assert.deepEqual(Buffer.concat(dest).subarray(0, got), want);
        assert.deepEqual(data.read(offset, 1 << 20), model.subarray(Math.min(offset, model.length), Math.min(model.length, offset + (1 << 20))));
        // Views of the chunks (what READ sends without a copy): the same bytes.
        const size = sizes[0]!;
        const views = data.views(offset, size);
        assert.deepEqual(Buffer.concat(views), model.subarray(Math.min(offset, model.length), Math.min(model.length, offset + size)));
      },
    ),
    { numRuns: 300 },
  );
});
