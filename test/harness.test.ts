/**
 * The guest-driver harness against the virtio-fs device, without a VM: data integrity over
 * direct and indirect chains with and without event-idx, batched completions, and hostile
 * descriptor chains after each of which the device must still serve a well-formed request.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { Worker } from 'node:worker_threads';
import { MemoryFs } from '../src/backends/memory/memory-fs.js';
import { NullFs } from '../src/backends/null/null-fs.js';
import { PassthroughFs } from '../src/backends/passthrough/passthrough-fs.js';
import { SH_WRITE_AT_ONCE } from '../src/fs/shared-handles.js';
import { VhostUserFsDevice } from '../src/devices/vhost-user/device.js';
import type { FileSystem } from '../src/fs/api.js';
import { Opcode } from '../src/fuse/opcodes.js';
import { encodeRequest } from '../src/fuse/request-codec.js';
import { RequestSpecs } from '../src/fuse/request-specs.js';
import { FuseClient, ioRequest } from '../src/harness/fuse-client.js';
import { fuzz } from '../src/harness/fuzz.js';
import { type DriverOptions, GuestDriver } from '../src/harness/guest-driver.js';
import type { LoadSetup, Phase, PhaseResult } from '../bench/ring-load-worker.js';
import { startDaemon, stopDaemon, waitFor } from './helpers/daemon.js';

/** A device on a fresh socket, for `fn`'s VMMs; stopped and removed afterwards. */
async function withDevice(fs: FileSystem, opts: { queues?: number; threads?: number }, fn: (socket: string, dev: VhostUserFsDevice) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'dpfs-harness-'));
  const socket = join(dir, 'vfs.sock');
  const dev = new VhostUserFsDevice({ socketPath: socket, fs, requestQueues: opts.queues ?? 1, threads: opts.threads ?? 0 });
  dev.start();
  try {
    await fn(socket, dev);
  } finally {
    await dev.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** One VMM (the guest driver) on `socket`, its FUSE session started on request queue `queue`. */
async function withVmm(socket: string, opts: Partial<DriverOptions>, fn: (c: FuseClient, drv: GuestDriver) => Promise<void>, queue = 1): Promise<void> {
  const drv = new GuestDriver({ socket, depth: 16, queueSize: 64, slotBytes: 256 * 1024, ...opts });
  try {
    await drv.connect();
    const c = new FuseClient(drv, queue);
    await c.init();
    await fn(c, drv);
  } finally {
    drv.close();
  }
}

type HarnessOptions = Partial<DriverOptions> & { threads?: number };

async function withHarness(fs: FileSystem, opts: HarnessOptions, fn: (c: FuseClient, drv: GuestDriver, dev: VhostUserFsDevice) => Promise<void>): Promise<void> {
  const { threads = 0, ...driver } = opts;
  await withDevice(fs, { queues: opts.queues, threads }, (socket, dev) => withVmm(socket, driver, (c, drv) => fn(c, drv, dev)));
}

for (const [eventIdx, indirect, threads] of [
  [true, false, 0],
  [false, false, 0],
  [true, true, 0],
  [false, true, 0],
  [true, true, 1],
  [false, false, 1],
] as const) {
  test(`data round-trips over virtqueues (event-idx ${eventIdx}, indirect ${indirect}, ${threads ? 'queue thread' : 'event loop'})`, async () => {
    await withHarness(new MemoryFs(), { eventIdx, indirect, threads }, async (c) => {
      const { ino, fh } = await c.create(1, 'f', 0o100644, 2);
      const blocks = Array.from({ length: 64 }, (_, i) => Buffer.alloc(4096, i + 1));
      // 64 concurrent writes then reads: more in flight than slots, so completions batch.
      await Promise.all(blocks.map((b, i) => c.write(ino, fh, i * 4096, b)));
      const back = await Promise.all(blocks.map((_, i) => c.read(ino, fh, i * 4096, 4096)));
      back.forEach((r, i) => {
        assert.equal(r.error, 0);
        assert.ok(r.body.equals(blocks[i]!), `block ${i}`);
      });
      const big = Buffer.alloc(200 * 1024, 0x5a);
      assert.equal((await c.write(ino, fh, 1 << 20, big)).error, 0);
      assert.ok((await c.read(ino, fh, 1 << 20, big.length)).body.equals(big));
    });
  });
}

test('completions batched on a fresh queue still interrupt the driver (event-idx)', async () => {
  await withHarness(new NullFs(), {}, async (c) => {
    // Eight FORGETs on the hiprio queue at once: one notification decision covers them all.
    const ino = await c.lookup(1, 'x');
    await Promise.all(Array.from({ length: 8 }, () => c.forget(ino, 1)));
    await Promise.all(Array.from({ length: 8 }, () => c.forget(ino, 1)));
    assert.equal((await c.getattr(1)).error, 0);
  });
});

for (const threads of [0, 1]) test(`hostile descriptor chains are returned unanswered and the device keeps serving (${threads ? 'queue thread' : 'event loop'})`, async () => {
  await withHarness(new NullFs(), { threads }, async (c, drv, dev) => {
    const q = 1;
    const { desc, bytes, num, scratch } = drv.raw(q);
    const getattr = encodeRequest({ opcode: Opcode.FUSE_GETATTR, unique: 99n, nodeid: 1 }, RequestSpecs[Opcode.FUSE_GETATTR], {});
    bytes.set(getattr, scratch);
    // Descriptors at the top of the table, away from the driver's own slots.
    const base = num - 8;
    const put = (i: number, addr: number, len: number, flags: number, next: number) => {
      desc.setBigUint64(i * 16, BigInt(addr), true);
      desc.setUint32(i * 16 + 8, len, true);
      desc.setUint16(i * 16 + 12, flags, true);
      desc.setUint16(i * 16 + 14, next, true);
    };
    const cases: [string, () => void][] = [
      ['a chain that loops', () => (put(base, scratch, getattr.length, 1, base + 1), put(base + 1, scratch + 4096, 4096, 3, base))],
      ['an address outside guest memory', () => put(base, 2 ** 50, 4096, 0, 0)],
      ['a length running past the end of memory', () => put(base, scratch, 0xffffffff, 0, 0)],
      ['a next index out of range', () => put(base, scratch, getattr.length, 1, 60000)],
      ['a readable descriptor after a writable one', () => (put(base, scratch, 4096, 3, base + 1), put(base + 1, scratch, getattr.length, 0, 0))],
      ['an indirect table not negotiated', () => put(base, scratch, 32, 4, 0)],
      ['no writable part for the reply', () => put(base, scratch, getattr.length, 0, 0)],
      ['a FUSE header whose len disagrees with the chain', () => {
        bytes.set(getattr, scratch + 8192);
        new DataView(bytes.buffer, scratch + 8192).setUint32(0, 4000, true);
        put(base, scratch + 8192, getattr.length, 1, base + 1);
        put(base + 1, scratch + 4096, 4096, 2, 0);
      }],
      ['a truncated op struct', () => (put(base, scratch, 42, 1, base + 1), put(base + 1, scratch + 4096, 4096, 2, 0))],
    ];
    for (const [what, setup] of cases) {
      setup();
      drv.queues[q]!.publish(base);
      // The device is alive and serves a well-formed request on the same queue afterwards.
      const r = await c.getattr(1);
      assert.equal(r.error, 0, `after ${what}`);
    }
    assert.ok((dev.connection?.stats.badChains ?? 0) >= 6, `bad chains seen: ${dev.connection?.stats.badChains}`);
  });
});

test('two request queues on two queue threads serve requests independently', async () => {
  await withHarness(new NullFs(), { queues: 2, threads: 2 }, async (_c, drv, dev) => {
    assert.equal(dev.queueThreads, 2);
    const c1 = new FuseClient(drv, 1);
    const c2 = new FuseClient(drv, 2);
    const ino = await c1.lookup(1, 'x');
    const fh = await c2.open(ino, 0);
    await Promise.all([...Array.from({ length: 50 }, () => c1.read(ino, fh, 0, 4096)), ...Array.from({ length: 50 }, () => c2.read(ino, fh, 0, 4096))]);
    // Each queue's requests, whether its thread served them or handed them to the main thread.
    const per = [1, 2].map((q) => (dev.connection!.stats.perQueue[q] ?? 0) + dev.servedOn(q));
    assert.ok(per[0]! >= 50 && per[1]! >= 50, `per queue: ${per.join(', ')}`);
  });
});

test('the null backend\'s READ and WRITE are served by the queue threads themselves: zeros read, writes dropped', async () => {
  await withHarness(new NullFs(), { queues: 2, threads: 2, slotBytes: 256 * 1024 }, async (c, drv, dev) => {
    const q2 = new FuseClient(drv, 2, 1n << 40n);
    const ino = await c.lookup(1, 'x');
    const fh = await c.open(ino, 2);
    const before = [1, 2].map((q) => dev.connection!.stats.perQueue[q] ?? 0);
    for (let i = 0; i < 40; i++) {
      const client = i % 2 ? q2 : c;
      const size = 1 + ((i * 7919) % 200_000);
      const w = await client.write(ino, fh, i * 4096, randomBytes(size));
      assert.equal(w.error, 0);
      assert.equal(w.body.readUInt32LE(0), size, 'the whole write taken');
      const r = await client.read(ino, fh, i * 4096, size);
      assert.equal(r.error, 0);
      assert.ok(r.body.equals(Buffer.alloc(size)), `${size} zeros read`);
    }
    const here = dev.servedOn(1) + dev.servedOn(2);
    const byMain = [1, 2].reduce((n, q, i) => n + (dev.connection!.stats.perQueue[q] ?? 0) - before[i]!, 0);
    assert.equal(here + byMain, 80, 'every request served once');
    // A read of /dev/zero that a signal cuts short (a child process of another test exiting:
    // SIGCHLD may land on any thread) is declined and handed on, as any short count is.
    assert.ok(here >= 78 && byMain <= 2, `served on the queue threads: ${here}, left to the main thread: ${byMain}`);
    // Released: the threads no longer take it; the backend answers the same way.
    assert.equal((await c.call(Opcode.FUSE_RELEASE, ino, { fh, flags: 2, release_flags: 0, lock_owner: 0n })).error, 0);
    const r = await c.read(ino, fh, 0, 100);
    assert.ok(r.error === 0 && r.body.equals(Buffer.alloc(100)));
    assert.equal(dev.servedOn(1) + dev.servedOn(2), here, 'by the main thread');
  });
});

test('request queues handed to worker threads are driven from each at once, every request on its own queue', async () => {
  await withHarness(new NullFs(), { queues: 2, depth: 8, queueSize: 64, slotBytes: 8192 }, async (c, drv, dev) => {
    const ino = await c.lookup(1, 'null');
    const fh = await c.open(ino, 2);
    const pending = c.getattr(ino);
    assert.throws(() => drv.queues[1]!.handOff(), /in flight/, 'a ring with a request in flight stays');
    assert.equal((await pending).error, 0);
    // Served by the session or by the ring's native data path.
    const served = (q: number) => (dev.connection!.stats.perQueue[q] ?? 0) + dev.servedOn(q);
    const before = [0, 1, 2].map(served);
    const workers = [1, 2].map((q) => {
      const setup: LoadSetup = { layout: drv.queues[q]!.handOff(), firstUnique: String(BigInt(q) << 40n), ino, fh, fileBytes: 1 << 20 };
      return new Worker(new URL('../bench/ring-load-worker.js', import.meta.url), { workerData: setup });
    });
    try {
      await Promise.all(workers.map((w) => new Promise((r, j) => (w.once('message', r), w.once('error', j)))));
      const results = await Promise.all(
        workers.map((w) => new Promise<PhaseResult>((r, j) => (w.once('message', r), w.once('error', j), w.postMessage({ workload: 'read4k', seconds: 0.3, depth: 4 } satisfies Phase)))),
      );
      results.forEach((r, i) => {
        assert.equal(r.error, undefined, `queue ${i + 1}: ${r.error}`);
        assert.ok(r.ops > 50, `queue ${i + 1} served ${r.ops} reads`);
        assert.equal(served(i + 1) - before[i + 1]!, r.ops, `queue ${i + 1}: every read of its worker, and no other`);
      });
    } finally {
      await Promise.all(workers.map((w) => new Promise((r) => (w.once('exit', r), w.postMessage('stop')))));
    }
  });
});

/** Where a ring is served: on the event loop (0 threads) or on queue threads. */
const where = (threads: number) => (threads ? 'queue threads' : 'event loop');

for (const [parent, threads] of ['/var/tmp', '/dev/shm'].filter((p) => existsSync(p)).flatMap((p) => [0, 2].map((t) => [p, t] as const))) {
  test(`READ and WRITE on open files are served by the rings' native data path, byte for byte (passthrough over ${parent}, ${where(threads)})`, async () => {
    const src = mkdtempSync(join(parent, 'dpfs-qio-'));
    const content = randomBytes(300_000);
    writeFileSync(join(src, 'f'), content);
    writeFileSync(join(src, 'w'), 'write-only');
    const fs = new PassthroughFs({ root: src });
    try {
      await withHarness(fs, { queues: 2, threads, slotBytes: 256 * 1024 }, async (c, drv, dev) => {
        const ino = await c.lookup(1, 'f');
        const fh = await c.open(ino, 2);
        const before = [...dev.connection!.stats.perQueue];
        const expected = Buffer.from(content);
        const q2 = new FuseClient(drv, 2, 1n << 40n);
        for (let i = 0; i < 60; i++) {
          const client = i % 2 ? q2 : c;
          const at = (i * 7919) % 290_000;
          const chunk = randomBytes(1 + ((i * 131) % 9000));
          assert.equal((await client.write(ino, fh, at, chunk)).error, 0);
          chunk.copy(expected, at);
          const r = await client.read(ino, fh, at, chunk.length);
          assert.equal(r.error, 0);
          assert.ok(r.body.equals(chunk), `read back at ${at}`);
        }
        // Across the end of the file: a short read; past it: nothing.
        const tail = await c.read(ino, fh, content.length - 100, 4096);
        assert.ok(tail.body.equals(expected.subarray(content.length - 100)));
        assert.equal((await c.read(ino, fh, content.length + 10, 4096)).body.length, 0);
        assert.ok(readFileSync(join(src, 'f')).equals(expected), 'the host file holds what was written');
        const byMain = (dev.connection!.stats.perQueue[1] ?? 0) + (dev.connection!.stats.perQueue[2] ?? 0) - (before[1] ?? 0) - (before[2] ?? 0);
        const here = dev.servedOn(1) + dev.servedOn(2);
        assert.ok(here >= 100, `served by the native data path: ${here}`);
        assert.ok(byMain <= 10, `left to the session: ${byMain}`);
        // What a thread may not do goes to the backend, which answers it: a write on a file
        // opened read-only, a read on one opened write-only.
        const ro = await c.open(ino, 0);
        assert.equal((await c.write(ino, ro, 0, Buffer.from('x'))).error, -9, 'EBADF');
        const wIno = await c.lookup(1, 'w');
        const wo = await c.open(wIno, 1);
        assert.equal((await c.read(wIno, wo, 0, 16)).error, -9, 'EBADF');
        // A released handle is gone for the threads too.
        assert.equal((await c.call(Opcode.FUSE_RELEASE, ino, { fh, flags: 2, release_flags: 0, lock_owner: 0n })).error, 0);
        assert.equal((await c.read(ino, fh, 0, 16)).error, -9, 'EBADF after RELEASE');
      });
    } finally {
      rmSync(src, { recursive: true, force: true });
    }
  });
}

for (const threads of [0, 1]) {
  test(`READ and WRITE in shapes a kernel never sends, on a handle the native data path serves: answered by the backend, nothing written amiss (${where(threads)})`, async () => {
    const src = mkdtempSync(join('/dev/shm', 'dpfs-qhostile-'));
    writeFileSync(join(src, 'f'), Buffer.alloc(4096, 0x61));
    const fs = new PassthroughFs({ root: src });
    try {
      await withHarness(fs, { threads, slotBytes: 64 * 1024 }, async (c, drv) => {
        const ino = await c.lookup(1, 'f');
        const fh = await c.open(ino, 2);
        const raw = (op: number, args: Record<string, unknown>, replyBytes: number) =>
          drv.request(1, encodeRequest({ opcode: op, unique: 77n, nodeid: ino, uid: 0, gid: 0, pid: 1 }, RequestSpecs[op as keyof typeof RequestSpecs] as never, args), replyBytes);
        const readArgs = { fh, offset: 0, size: 4096, read_flags: 0, lock_owner: 0n, flags: 0, padding: 0 };
        // A reply area smaller than the READ asks for: the backend's reply does not fit (EIO).
        const small = await raw(Opcode.FUSE_READ, readArgs, 16 + 100);
        assert.equal(small.readInt32LE(4), -5);
        // Smaller than a reply header: the chain comes back with nothing written.
        assert.equal((await raw(Opcode.FUSE_READ, readArgs, 8)).length, 0);
        // A WRITE whose size disagrees with its data: refused (EINVAL), nothing written.
        const w = await raw(Opcode.FUSE_WRITE, { fh, offset: 0, size: 100, write_flags: 0, lock_owner: 0n, flags: 0, padding: 0, data: Buffer.alloc(50, 0x7a) }, 16 + 8);
        assert.equal(w.readInt32LE(4), -22);
        // Just below 2^53: served (nothing there); at it: the end of the file, or EFBIG.
        assert.equal((await c.read(ino, fh, 2 ** 53 - 1, 16)).body.length, 0);
        assert.equal((await c.read(ino, fh, 2 ** 53, 16)).body.length, 0);
        assert.equal((await c.write(ino, fh, 2 ** 53, Buffer.from('x'))).error, -27);
        // A write that must drop setuid bits goes to the backend, and lands.
        const kill = await raw(Opcode.FUSE_WRITE, { fh, offset: 10, size: 3, write_flags: 4, lock_owner: 0n, flags: 0, padding: 0, data: Buffer.from('KIL') }, 16 + 8);
        assert.equal(kill.readInt32LE(4), 0);
        assert.equal(kill.readUInt32LE(16), 3);
        const want = Buffer.alloc(4096, 0x61);
        want.write('KIL', 10);
        assert.ok((await c.read(ino, fh, 0, 4096)).body.equals(want));
        assert.equal((await c.getattr(1)).error, 0, 'and the device goes on');
      });
    } finally {
      rmSync(src, { recursive: true, force: true });
    }
  });
}

for (const threads of [0, 2]) {
  test(`a READ racing the RELEASE of its handle never reads another file that took the descriptor (${where(threads)})`, async () => {
    const src = mkdtempSync(join('/dev/shm', 'dpfs-qrace-'));
    writeFileSync(join(src, 'a'), Buffer.alloc(4096, 0x61));
    writeFileSync(join(src, 'b'), Buffer.alloc(4096, 0x62));
    const fs = new PassthroughFs({ root: src });
    try {
      await withHarness(fs, { queues: 2, threads, slotBytes: 64 * 1024 }, async (c, drv, dev) => {
        const a = await c.lookup(1, 'a');
        const b = await c.lookup(1, 'b');
        const q2 = new FuseClient(drv, 2, 1n << 40n);
        let servedA = 0;
        for (let i = 0; i < 150; i++) {
          const fh = await c.open(a, 0);
          // Reads of A on queue 2 while queue 1 releases A and opens B (which may get A's
          // descriptor number): each read is A's content or an error, never B's.
          const reads = Array.from({ length: 6 }, () => q2.read(a, fh, 0, 64));
          const release = c.call(Opcode.FUSE_RELEASE, a, { fh, flags: 0, release_flags: 0, lock_owner: 0n });
          const fhB = await c.open(b, 0);
          for (const r of await Promise.all(reads)) {
            if (r.error === 0) {
              assert.ok(r.body.equals(Buffer.alloc(64, 0x61)), `read of A returned ${JSON.stringify(r.body.subarray(0, 8).toString())}`);
              servedA++;
            } else assert.equal(r.error, -9);
          }
          assert.equal((await release).error, 0);
          await c.call(Opcode.FUSE_RELEASE, b, { fh: fhB, flags: 0, release_flags: 0, lock_owner: 0n });
        }
        assert.ok(servedA > 0, 'some reads came before the release');
        assert.ok(dev.servedOn(2) > 0, 'and the native data path served them');
      });
    } finally {
      rmSync(src, { recursive: true, force: true });
    }
  });
}

for (const threads of [0, 1]) {
  test(`GETATTR of inodes and open files on a local file system is answered off the ring as the backend answers it (${where(threads)})`, async () => {
    const src = mkdtempSync(join('/var/tmp', 'dpfs-getattr-'));
    const names = Array.from({ length: 24 }, (_, i) => `f${i}`);
    names.forEach((n, i) => writeFileSync(join(src, n), Buffer.alloc(i * 1000 + 1), { mode: 0o600 + i }));
    mkdirSync(join(src, 'd'));
    symlinkSync('f1', join(src, 'link'));
    // Few cached descriptors: most inodes lose theirs, and their GETATTRs go to the backend.
    const fs = new PassthroughFs({ root: src, maxFds: 8 });
    try {
      await withHarness(fs, { threads, slotBytes: 64 * 1024 }, async (c, _drv, dev) => {
        const offRing = () => dev.servedCount(1, 'getattrs');
        const check = (r: { error: number; body: Buffer }, name: string) => {
          assert.equal(r.error, 0, name);
          const st = lstatSync(join(src, name), { bigint: true });
          const a = r.body;
          assert.equal(a.readBigUInt64LE(0), 1n, `${name}: attr_valid (cache auto)`);
          assert.equal(a.readBigUInt64LE(16), st.ino, `${name}: ino`);
          assert.equal(a.readBigUInt64LE(24), st.size, `${name}: size`);
          assert.equal(a.readBigUInt64LE(32), st.blocks, `${name}: blocks`);
          assert.equal(BigInt(a.readBigInt64LE(48)) * 1_000_000_000n + BigInt(a.readUInt32LE(68)), st.mtimeNs, `${name}: mtime`);
          assert.equal(BigInt(a.readBigInt64LE(56)) * 1_000_000_000n + BigInt(a.readUInt32LE(72)), st.ctimeNs, `${name}: ctime`);
          assert.equal(BigInt(a.readUInt32LE(76)), st.mode, `${name}: mode`);
          assert.equal(BigInt(a.readUInt32LE(80)), st.nlink, `${name}: nlink`);
          assert.equal(BigInt(a.readUInt32LE(84)), st.uid, `${name}: uid`);
          assert.equal(BigInt(a.readUInt32LE(88)), st.gid, `${name}: gid`);
          assert.equal(BigInt(a.readUInt32LE(96)), st.blksize, `${name}: blksize`);
        };
        check(await c.getattr(1), '.');
        assert.equal(offRing(), 1, 'the root: off the ring');
        const inos = new Map<string, number>();
        for (const n of [...names, 'd', 'link']) inos.set(n, await c.lookup(1, n));
        // Most recently looked up first: those still hold their descriptors (an LRU of 8).
        for (const n of [...names, 'd', 'link'].reverse()) check(await c.getattr(inos.get(n)!), n);
        const before = offRing();
        assert.ok(before >= 2 && before < names.length, `off the ring while the inode holds a descriptor: ${before}`);
        // An open file, by its handle (the kernel's fstat), after a WRITE off the ring grew it.
        const ino = inos.get('f3')!;
        const fh = await c.open(ino, 2);
        assert.equal((await c.write(ino, fh, 10_000, Buffer.from('x'))).error, 0);
        check(await c.call(Opcode.FUSE_GETATTR, ino, { getattr_flags: 1, dummy: 0, fh }, 120), 'f3');
        assert.equal(offRing(), before + 1, 'by its handle: off the ring');
        // A forgotten inode is withdrawn with it: the backend answers, ESTALE.
        const gone = await c.lookup(1, 'f0'); // looked up twice now, its descriptor fresh
        check(await c.getattr(gone), 'f0');
        assert.equal(offRing(), before + 2, 'off the ring');
        await c.forget(gone, 2);
        assert.equal((await c.getattr(gone)).error, -116);
        assert.equal(offRing(), before + 2);
      });
      // Where ids are mapped, the backend answers every GETATTR itself.
      const mapped = new PassthroughFs({ root: src, uidMap: [{ inside: 0, outside: 0, count: 1 }, { inside: 1, outside: 100000, count: 1000 }] });
      await withHarness(mapped, { threads, slotBytes: 64 * 1024 }, async (c, _drv, dev) => {
        assert.equal((await c.getattr(await c.lookup(1, 'f1'))).error, 0);
        assert.equal(dev.servedCount(1, 'getattrs'), 0, 'none off the ring');
      });
    } finally {
      rmSync(src, { recursive: true, force: true });
    }
  });
}

for (const threads of [0, 1]) {
  test(`LOOKUP in a directory held in memory is answered off the ring and counted for FORGET (${where(threads)})`, async () => {
    const src = mkdtempSync(join('/dev/shm', 'dpfs-lookup-'));
    const names = Array.from({ length: 5 }, (_, i) => `f${i}`);
    names.forEach((n, i) => writeFileSync(join(src, n), Buffer.alloc(i * 100 + 1)));
    try {
      await withHarness(new PassthroughFs({ root: src }), { threads }, async (c, _drv, dev) => {
        const offRing = () => dev.servedCount(1, 'lookups');
        const lookup = async (name: string) => {
          const r = await c.call(Opcode.FUSE_LOOKUP, 1, { name }, 128);
          assert.equal(r.error, 0, name);
          return { node: Number(r.body.readBigUInt64LE(0)), entryValid: r.body.readBigUInt64LE(16), ino: r.body.readBigUInt64LE(40), size: r.body.readBigUInt64LE(48), mode: r.body.readUInt32LE(100) };
        };
        // Not known yet: the backend looks them up (and the native try finds them in vain).
        const first = new Map<string, number>();
        for (const n of names) first.set(n, (await lookup(n)).node);
        assert.equal(offRing(), 0);
        // An absent name: a negative entry for the directory's timeout.
        const absent = await lookup('absent');
        assert.deepEqual([absent.node, absent.entryValid], [0, 1n]);
        const native = threads ? 0 : 1;
        assert.equal(offRing(), native, threads ? 'a queue thread leaves LOOKUPs to the backend' : 'off the ring');
        // Known now: the same node ids, the host's attributes.
        for (const n of names) {
          const e = await lookup(n);
          const st = lstatSync(join(src, n), { bigint: true });
          assert.deepEqual([e.node, e.ino, e.size, BigInt(e.mode)], [first.get(n), st.ino, st.size, st.mode], n);
        }
        assert.equal(offRing(), threads ? 0 : 1 + names.length);
        // The kernel's FORGET counts both lookups: after one, each node is still there.
        for (const n of names) await c.forget(first.get(n)!, 1);
        for (const n of names) assert.equal((await c.getattr(first.get(n)!)).error, 0, `${n} still known`);
        for (const n of names) await c.forget(first.get(n)!, 1);
        for (const n of names) assert.equal((await c.getattr(first.get(n)!)).error, -116, `${n} forgotten`);
      });
    } finally {
      rmSync(src, { recursive: true, force: true });
    }
  });
}

test('with busy polling (a daemon\'s default), a ring that ran dry is watched for more work and the thread\'s other rings are served from the watch: every request answered, byte for byte', { timeout: 60000 }, async () => {
  const dir = mkdtempSync(join('/var/tmp', 'dpfs-spin-'));
  const socket = join(dir, 'vfs.sock');
  mkdirSync(join(dir, 'src'));
  const content = randomBytes(256 * 1024);
  writeFileSync(join(dir, 'src', 'f'), content);
  // Its own process, so that the driver adds requests while the daemon watches its rings.
  const d = startDaemon(['vhost-user', socket, '-b', 'passthrough', '-s', join(dir, 'src'), '--queues', '2']);
  try {
    await waitFor(() => existsSync(socket), 'device socket');
    await withVmm(socket, { queues: 2, depth: 16, slotBytes: 64 * 1024 }, async (c, drv) => {
      const q2 = new FuseClient(drv, 2, 1n << 40n);
      const ino = await c.lookup(1, 'f');
      const fh = await c.open(ino, 2);
      const expected = Buffer.from(content);
      const io = (client: FuseClient, lane: number) =>
        (async () => {
          for (let i = 0; i < 300; i++) {
            // Each lane writes its own 4 KiB blocks, then reads them back.
            const at = ((i * 8 + lane) % 64) * 4096;
            const chunk = randomBytes(4096);
            assert.equal((await client.write(ino, fh, at, chunk)).error, 0);
            chunk.copy(expected, at);
            assert.ok((await client.read(ino, fh, at, 4096)).body.equals(chunk), `lane ${lane}: read back at ${at}`);
          }
        })();
      // LOOKUP and GETATTR on the request queues, FORGET on the hiprio queue, meanwhile.
      const meta = (async () => {
        for (let i = 0; i < 300; i++) {
          const n = await (i % 2 ? q2 : c).lookup(1, 'f');
          assert.equal((await c.getattr(n)).error, 0);
          await c.forget(n, 1);
        }
      })();
      await Promise.all([...[0, 1, 2, 3].map((l) => io(l % 2 ? q2 : c, l)), meta]);
      assert.ok(readFileSync(join(dir, 'src', 'f')).equals(expected), 'the host file holds what was written');
    });
    assert.equal(d.child.exitCode, null, `daemon still running: ${d.stderr().slice(-500)}`);
  } finally {
    await stopDaemon(d, []);
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the driver\'s closed-loop load keeps its depth in flight, rewrites each request, and counts failed replies', async () => {
  const fs = new MemoryFs();
  await withHarness(fs, { slotBytes: 128 * 1024 }, async (c, drv) => {
    const { ino, fh } = await c.create(1, 'f', 0o100644, 2);
    assert.equal((await c.write(ino, fh, 0, Buffer.alloc(64 * 1024, 7))).error, 0);
    const read = (handle: number) => () => ioRequest(99n, ino, handle, 0, 4096);
    const offsets = new Set<number>();
    const ok = await drv.queues[1]!.load({
      depth: 8,
      seconds: 0.2,
      request: read(fh),
      replyBytes: 16 + 4096,
      next: (v, n) => {
        v.setUint32(48, (n % 16) * 4096, true);
        offsets.add(v.getUint32(48, true));
      },
    });
    assert.ok(ok.ops > 8, `${ok.ops} requests`);
    assert.equal(ok.errors, 0);
    assert.equal(offsets.size, 16, 'each request rewritten before it went');
    const bad = await drv.queues[1]!.load({ depth: 4, seconds: 0.1, request: read(fh + 1000), replyBytes: 16 + 4096 });
    assert.ok(bad.ops > 0 && bad.errors === bad.ops, `every reply an error: ${bad.errors} of ${bad.ops}`);
    assert.throws(() => drv.queues[1]!.load({ depth: 10_000, seconds: 0.1, request: read(fh), replyBytes: 16 }), /depth/);
    // The ring serves ordinary requests afterwards.
    assert.equal((await c.read(ino, fh, 0, 16)).error, 0);
  });
});

test('a write at once off a ring that waits counts against its device: over the budget, the ring writes that device no more at once', async () => {
  const src = mkdtempSync(join('/var/tmp', 'dpfs-stall-'));
  writeFileSync(join(src, 'f'), Buffer.alloc(8192, 0x61));
  const fs = new PassthroughFs({ root: src });
  const atOnce = (fh: number) => {
    const slot = fs.sharedHandles.enter(fh >>> 0, Math.floor(fh / 2 ** 32));
    assert.ok(slot >= 0, 'published');
    const f = fs.sharedHandles.flags(slot);
    fs.sharedHandles.leave(slot);
    return (f & SH_WRITE_AT_ONCE) !== 0;
  };
  try {
    await withHarness(fs, { slotBytes: 64 * 1024 }, async (c, _drv, dev) => {
      const ino = await c.lookup(1, 'f');
      const fh = await c.open(ino, 2);
      assert.ok(atOnce(fh), 'a local disk file: written at once');
      assert.equal((await c.write(ino, fh, 0, Buffer.from('one'))).error, 0);
      assert.equal(dev.servedCount(1, 'writes'), 1, 'by the native data path');
      // What ring_fast.c reports of a write that took 30 ms (over the 20 ms budget at once).
      fs.sharedHandles.onStall!(fh, 30);
      assert.ok(!atOnce(fh), 'backed off: not at once any more');
      const fh2 = await c.open(ino, 2);
      assert.ok(!atOnce(fh2), 'nor a file of the same device opened meanwhile');
      // Written all the same, by the backend the asynchronous way.
      assert.equal((await c.write(ino, fh2, 3, Buffer.from('two'))).error, 0);
      assert.equal(dev.servedCount(1, 'writes'), 1, 'not by the native data path');
      assert.equal(readFileSync(join(src, 'f')).subarray(0, 6).toString(), 'onetwo');
      const r = await c.read(ino, fh, 0, 6);
      assert.equal(r.body.toString(), 'onetwo');
      assert.equal(dev.servedCount(1, 'reads'), 1, 'reads still served off the ring');
      assert.equal(dev.zeroCopyBytes, 6, 'straight into guest memory');
    });
  } finally {
    rmSync(src, { recursive: true, force: true });
  }
});

test('a second VMM gets the queue threads after the first went away', async () => {
  await withDevice(new MemoryFs(), { queues: 2, threads: 2 }, async (socket, dev) => {
    for (const round of [1, 2]) {
      await withVmm(
        socket,
        { queues: 2, depth: 8, queueSize: 16, slotBytes: 64 * 1024 },
        async (c) => {
          if (round === 1) {
            const { ino, fh } = await c.create(1, 'kept', 0o100644, 2);
            // More requests than the ring has entries: the indices wrap.
            await Promise.all(Array.from({ length: 40 }, (_, i) => c.write(ino, fh, i * 8, Buffer.from(`line ${String(i).padStart(2)}`))));
          }
          const ino = await c.lookup(1, 'kept');
          const fh = await c.open(ino, 0);
          const r = await c.read(ino, fh, 0, 320);
          assert.equal(r.error, 0);
          assert.equal(r.body.subarray(312, 320).toString(), 'line 39');
        },
        2,
      );
      await waitFor(() => dev.connection === undefined || dev.connection.isClosed, 'the first VMM to go', 5000);
    }
    assert.equal(dev.connections, 2);
  });
});

test('a queue thread that dies ends its connection; the device replaces it and serves the next VMM', async () => {
  await withDevice(new NullFs(), { threads: 1 }, async (socket, dev) => {
    const small = { depth: 4, queueSize: 16, slotBytes: 64 * 1024 };
    await withVmm(socket, small, async (c) => {
      assert.equal((await c.getattr(1)).error, 0);
      await dev.threads!.worker(0).terminate();
      await waitFor(() => dev.connection === undefined || dev.connection.isClosed, 'the connection to end');
    });
    await withVmm(socket, small, async (c) => {
      assert.equal((await c.getattr(1)).error, 0);
      assert.equal(dev.queueThreads, 1);
    });
  });
});

for (const threads of [0, 1]) {
  test(`a new memory table mid-flight loses no request (${threads ? 'queue thread' : 'event loop'})`, async () => {
    // A backend slow enough that requests are still in flight when the table changes.
    const fs: FileSystem = new NullFs();
    const getattr = fs.getattr!.bind(fs);
    fs.getattr = async (...args: Parameters<typeof getattr>) => {
      await new Promise((r) => setTimeout(r, 30));
      return getattr(...args);
    };
    await withHarness(fs, { threads }, async (c, drv) => {
      const inflight = Array.from({ length: 12 }, () => c.getattr(1));
      await drv.resendMemoryTable();
      const results = await Promise.race([Promise.all(inflight), new Promise<never>((_, rej) => setTimeout(() => rej(new Error('requests lost')), 5000))]);
      assert.ok(results.every((r) => r.error === 0));
      assert.equal((await c.getattr(1)).error, 0, 'and the ring goes on');
    });
  });
}

test('an indirect table outside guest memory is a bad chain, not a broken ring (found by the fuzzer)', async () => {
  await withHarness(new NullFs(), { indirect: true }, async (c, drv, dev) => {
    const { desc, num } = drv.raw(1);
    const head = num - 1;
    desc.setBigUint64(head * 16, BigInt(2 ** 52), true);
    desc.setUint32(head * 16 + 8, 16, true);
    desc.setUint16(head * 16 + 12, 4, true); // INDIRECT
    drv.queues[1]!.publish(head);
    assert.equal((await c.getattr(1)).error, 0);
    assert.equal(dev.connection?.stats.badChains, 1);
  });
});

test('the device socket appears once it takes connections, over a stale file, with no name left behind', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'dpfs-sock-'));
  try {
    // A plain path (bound under a temporary name, then renamed into place) and one too long
    // for the temporary name (bound directly).
    for (const name of ['vfs.sock', 'v'.repeat(104 - dir.length - 1)]) {
      const socket = join(dir, name);
      writeFileSync(socket, 'left over by a daemon killed with -9');
      const dev = new VhostUserFsDevice({ socketPath: socket, fs: new NullFs(), requestQueues: 1, threads: 0 });
      dev.start();
      try {
        assert.ok(statSync(socket).isSocket(), 'the stale file was replaced by the socket');
        assert.deepEqual(readdirSync(dir), [name], 'no temporary name left behind');
        await withVmm(socket, {}, async (c) => assert.equal((await c.getattr(1)).error, 0));
      } finally {
        await dev.stop();
      }
      rmSync(socket, { force: true });
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

for (const threads of [0, 1]) {
  test(`fuzzing: random hostile chains, FUSE and vhost-user messages never stop the daemon (bounded run, ${threads ? 'queue thread' : 'event loop'})`, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'dpfs-fuzz-'));
    const socket = join(dir, 'vfs.sock');
    // The passthrough, with a file whose READs and WRITEs the ring's native data path serves.
    mkdirSync(join(dir, 'src'));
    writeFileSync(join(dir, 'src', 'f'), Buffer.alloc(256 * 1024, 0x61));
    const d = startDaemon(['vhost-user', socket, '-b', 'passthrough', '-s', join(dir, 'src'), '-t', String(threads)]);
    try {
      await waitFor(() => existsSync(socket), 'device socket');
      const res = await fuzz(socket, { cases: 300, seed: 20261127 + threads, file: 'f' });
      assert.deepEqual(res.failures, []);
      assert.equal(res.cases, 300);
      assert.equal(d.child.exitCode, null, `daemon still running: ${d.stderr().slice(-500)}`);
    } finally {
      await stopDaemon(d, []);
      rmSync(dir, { recursive: true, force: true });
    }
  });
}
