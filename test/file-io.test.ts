/**
 * The passthrough's file I/O paths against real files on a disk file system and on tmpfs:
 * page-cache reads and writes (RWF_NOWAIT), io_uring, and short reads at the end of file,
 * with several destination buffers, checked byte for byte against what Node reads.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, fstatSync, ftruncateSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { AT_ONCE_MAX, atOnce, BACKOFF_MS, MAX_BACKOFF_MS, type NowaitState, type StallBudget, readAt, runsAtOnce, STALL_BUDGET_MS, STALL_MS, STALL_WINDOW_MS, syncFile, tookAtOnce, writeAt } from '../src/backends/passthrough/file-io.js';
import { Uring } from '../src/native/uring.js';
import { offloadPays } from '../src/util/loop-load.js';

const places = ['/var/tmp', '/dev/shm'].filter((p) => existsSync(p));

for (const place of places) {
  for (const [nowait, uring, now] of [
    [true, true, false],
    [false, true, false],
    [false, false, false],
    [true, true, true],
  ] as const) {
    const how = now ? 'at once where it cannot wait' : nowait ? 'page cache first' : uring ? 'io_uring' : "libuv's pool";
    test(`reads and writes at any offset, across the end of file (${place}, ${how})`, async (t) => {
      Uring.enabled = uring;
      t.after(() => (Uring.enabled = true));
      const dir = mkdtempSync(join(place, 'dpfs-fileio-'));
      try {
        const path = join(dir, 'f');
        const content = randomBytes(300_000);
        writeFileSync(path, content);
        const fd = openSync(path, 'r+');
        const state: NowaitState = now ? (place === '/dev/shm' ? { inMemory: true } : { localDisk: {} }) : nowait ? {} : { noNowaitRead: true, noNowaitWrite: true };
        try {
          for (const [offset, sizes] of [
            [0, [4096]],
            [12345, [100, 5000, 1]],
            [299_000, [512, 4096]], // runs past the end: a short read
            [300_000, [4096]], // at the end: nothing
            [400_000, [10]], // past the end
          ] as const) {
            const bufs = sizes.map((n) => Buffer.alloc(n));
            const n = await readAt(fd, bufs, offset, state);
            const want = content.subarray(Math.min(offset, content.length), Math.min(offset + sizes.reduce((a, b) => a + b, 0), content.length));
            assert.equal(n, want.length, `bytes at ${offset}`);
            assert.ok(Buffer.concat(bufs).subarray(0, n).equals(want), `data at ${offset}`);
          }
          const expected = Buffer.from(content);
          for (let i = 0; i < 50; i++) {
            const at = (i * 7919) % 290_000;
            const chunk = randomBytes(1 + ((i * 131) % 9000));
            // Scattered as a guest's pages are: up to three pieces.
            const cut = [0, (i * 37) % chunk.length, (i * 101) % chunk.length, chunk.length].sort((x, y) => x - y);
            const pieces = [0, 1, 2].map((k) => chunk.subarray(cut[k], cut[k + 1]));
            assert.equal(await writeAt(fd, pieces, at, state), chunk.length);
            chunk.copy(expected, at);
          }
          const tail = randomBytes(1000);
          assert.equal(await writeAt(fd, [tail], 300_500, state), tail.length); // extends the file, leaving a hole
          await syncFile(fd, false);
          await syncFile(fd, true);
          const back = readFileSync(path);
          assert.equal(back.length, 301_500);
          assert.ok(back.subarray(0, 300_000).equals(expected), 'rewritten content');
          assert.ok(back.subarray(300_000, 300_500).equals(Buffer.alloc(500)), 'hole');
          assert.ok(back.subarray(300_500).equals(tail), 'appended content');
        } finally {
          closeSync(fd);
        }
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }
}

test('which calls run at once: small ones that cannot wait; stalls over the budget turn a disk file asynchronous for a while', () => {
  const atOnce = (st: NowaitState, write: boolean, bytes: number, now = 0) => runsAtOnce(st, write, bytes, now, false);
  const mem: NowaitState = { inMemory: true };
  assert.ok(atOnce(mem, false, 4096) && atOnce(mem, true, AT_ONCE_MAX), 'memory file system: reads and writes');
  assert.ok(!atOnce(mem, true, AT_ONCE_MAX + 1), 'but not large ones');
  tookAtOnce(mem, 50, 1000);
  assert.ok(atOnce(mem, true, 4096, 1001), 'memory never waits for a device: no back-off');
  assert.ok(!runsAtOnce(mem, true, 4096, 1001, true), 'a saturated loop with cores to spare: elsewhere');
  const disk: NowaitState = { localDisk: {} };
  assert.ok(atOnce(disk, true, 4096, 0), 'disk: a write goes to the page cache');
  assert.ok(!atOnce(disk, false, 4096, 0), 'disk: a read that RWF_NOWAIT could not serve waits for the device');
  for (let i = 0; i < 1000; i++) tookAtOnce(disk, STALL_MS / 2, 1000 + i);
  assert.ok(atOnce(disk, true, 4096, 2000), 'fast writes change nothing');
  tookAtOnce(disk, STALL_BUDGET_MS / 2, 2000);
  tookAtOnce(disk, STALL_BUDGET_MS / 2, 2000 + STALL_WINDOW_MS + 1);
  assert.ok(atOnce(disk, true, 4096, 2000 + STALL_WINDOW_MS + 2), 'stalls now and then, within the budget of each second: still at once');
  tookAtOnce(disk, STALL_BUDGET_MS / 2 + 1, 2000 + STALL_WINDOW_MS + 3);
  assert.ok(!atOnce(disk, true, 4096, 3010), 'over the budget within a second: asynchronous');
  assert.ok(atOnce(disk, true, 4096, 3010 + BACKOFF_MS), 'until the back-off ends');
  const device: StallBudget = {};
  const [f1, f2]: NowaitState[] = [{ localDisk: device }, { localDisk: device }];
  tookAtOnce(f1, 200, 0);
  assert.ok(!atOnce(f1, true, 4096, 1), 'one write held back by dirty throttling is enough');
  assert.ok(!atOnce(f2, true, 4096, 1), 'and it counts for every file of the device (the kernel throttles the device)');
  tookAtOnce(f2, 200, BACKOFF_MS + 10);
  assert.ok(!atOnce(f1, true, 4096, 3 * BACKOFF_MS), 'throttled again right after the back-off: twice as long');
  assert.ok(atOnce(f1, true, 4096, 3 * BACKOFF_MS + 20));
  let t = 3 * BACKOFF_MS + 20;
  for (let i = 0; i < 10; i++) {
    tookAtOnce(f1, 200, t);
    t = device.slowUntil! + 1;
  }
  assert.equal(device.backoffMs, MAX_BACKOFF_MS, 'growing up to a bound');
  tookAtOnce(f1, 200, t + 10 * MAX_BACKOFF_MS);
  assert.equal(device.backoffMs, BACKOFF_MS, 'and back to the start once the device was fine for a while');
  assert.ok(!atOnce({}, true, 4096), 'other file systems (network, FUSE): never');
});

test('a call at once counts as a stall only if the thread slept in it, not if it was merely slow (preempted)', () => {
  const disk: NowaitState = { localDisk: {} };
  const busy = (ms: number) => {
    const until = performance.now() + ms;
    while (performance.now() < until);
    return 0;
  };
  // The thread's sleeps as the kernel counts them, here under the test's control.
  let sleeps = 0;
  atOnce(disk, () => busy(5 * STALL_MS), () => sleeps);
  assert.equal(disk.localDisk!.stalledMs ?? 0, 0, 'slow but never asleep: no stall');
  atOnce(disk, () => (busy(5 * STALL_MS), sleeps++, 0), () => sleeps);
  assert.ok((disk.localDisk!.stalledMs ?? 0) >= 5 * STALL_MS, 'slept in it: a stall');
  // And the kernel's own count: a call that sleeps (a 5 ms wait) raises it.
  disk.localDisk!.stalledMs = 0;
  atOnce(disk, () => (Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5 * STALL_MS), 0));
  assert.ok((disk.localDisk!.stalledMs ?? 0) >= 5 * STALL_MS, `slept: a stall (${disk.localDisk!.stalledMs} ms)`);
  // A short call is never one, asleep or not.
  const fresh: NowaitState = { localDisk: {} };
  atOnce(fresh, () => (sleeps++, 0), () => sleeps);
  assert.equal(fresh.localDisk!.stalledMs ?? 0, 0);
});

test('the event loop counts as saturated only while it is, and only where cores are spare', async () => {
  assert.equal(offloadPays(2), false, 'two cores: nothing to spare');
  offloadPays(16); // starts sampling
  await new Promise((r) => setTimeout(r, 250));
  assert.equal(offloadPays(16), false, 'an idle loop');
  const until = Date.now() + 350;
  while (Date.now() < until) {
    // Busy without yielding, then a turn of the loop so the sampler runs, and busy again.
    const stop = Date.now() + 40;
    while (Date.now() < stop);
    await new Promise((r) => setImmediate(r));
  }
  assert.equal(offloadPays(16), true, 'a loop busy for the last period');
  assert.equal(offloadPays(2), false);
});

test('offsets from 2^53 on (saturated by the decoder) are past every file, and calls just below it land where asked', { skip: existsSync('/dev/shm') ? false : 'no tmpfs' }, async () => {
  const dir = mkdtempSync(join('/dev/shm', 'dpfs-fileio-'));
  try {
    const path = join(dir, 'f');
    writeFileSync(path, 'hello');
    const fd = openSync(path, 'r+');
    try {
      for (const state of [{ inMemory: true, noNowaitRead: true, noNowaitWrite: true }, {}] as NowaitState[]) {
        assert.equal(await readAt(fd, [Buffer.alloc(16)], 2 ** 53, state), 0, 'the end of the file');
        await assert.rejects(async () => writeAt(fd, [Buffer.from('x')], 2 ** 53, state), (e: { errno?: number }) => e.errno === 27, 'EFBIG');
        // Just below: a sparse write at the very offset (Node's positional calls would take an
        // unsafe position for "the current position", i.e. the start of the file).
        assert.equal(await writeAt(fd, [Buffer.from('abcd')], 2 ** 53 - 10, state), 4);
        assert.equal(fstatSync(fd).size, 2 ** 53 - 6);
        const back = Buffer.alloc(4);
        assert.equal(await readAt(fd, [back], 2 ** 53 - 10, state), 4);
        assert.equal(back.toString(), 'abcd');
        const head = Buffer.alloc(5);
        assert.equal(readSync(fd, head, 0, 5, 0), 5);
        assert.equal(head.toString(), 'hello', 'the start of the file untouched');
        ftruncateSync(fd, 5);
      }
    } finally {
      closeSync(fd);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('errors of calls at once are thrown at once, as errno (EBADF on a closed descriptor)', () => {
  const err = (e: NodeJS.ErrnoException) => e.code === 'EBADF';
  assert.throws(() => readAt(1 << 20, [Buffer.alloc(16)], 0, { inMemory: true, noNowaitRead: true }), err);
  assert.throws(() => writeAt(1 << 20, [Buffer.alloc(16)], 0, { localDisk: {}, noNowaitWrite: true }), err);
});

test('io_uring errors come back as errno (EBADF on a closed descriptor)', { skip: Uring.get() ? false : 'io_uring refused here' }, async () => {
  const ring = Uring.get()!;
  await assert.rejects(ring.readv(1 << 20, [Buffer.alloc(16)], 0), (err: NodeJS.ErrnoException & { errno?: number }) => err.errno === 9);
  await assert.rejects(ring.fsync(1 << 20, false), (err: NodeJS.ErrnoException & { errno?: number }) => err.errno === 9);
});
