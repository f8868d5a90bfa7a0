/** The table of open files shared with queue threads: publishing, entering, withdrawing. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SH_READ, SH_WRITE, SHARED_HANDLE_SLOTS, SharedHandles } from '../src/fs/shared-handles.js';

test('a published handle is found by its two halves, and only while it is published', () => {
  const t = new SharedHandles();
  const fh = 2 ** 40 + 7;
  assert.equal(t.enter(fh >>> 0, 2 ** 8), -1, 'nothing published yet');
  assert.ok(t.publish(fh, 42, SH_READ | SH_WRITE));
  const slot = t.enter(fh >>> 0, 2 ** 8);
  assert.ok(slot >= 0);
  assert.equal(t.fd(slot), 42);
  assert.equal(t.flags(slot), SH_READ | SH_WRITE);
  t.leave(slot);
  assert.equal(t.enter(fh >>> 0, 0), -1, 'the high half must match too');
  assert.ok(!t.publish(fh + SHARED_HANDLE_SLOTS, 43, SH_READ), 'a colliding handle stays with the main thread');
  assert.equal(t.withdraw(fh), true);
  assert.equal(t.enter(fh >>> 0, 2 ** 8), -1, 'withdrawn');
  assert.ok(t.publish(fh + SHARED_HANDLE_SLOTS, 43, SH_READ), 'the slot is free again');
  assert.equal(t.withdraw(12345), true, 'withdrawing what was never published is a no-op');
});

test('withdraw waits for a user to leave; one that never does retires the slot and keeps the descriptor open', async () => {
  const t = new SharedHandles();
  assert.ok(t.publish(5, 50, SH_READ));
  const slot = t.enter(5, 0);
  // withdraw blocks this thread: the user leaves from another one, a little later.
  const { Worker } = await import('node:worker_threads');
  const mod = new URL('../src/fs/shared-handles.js', import.meta.url).href;
  const code = 'const { workerData: d } = require("node:worker_threads"); import(d.mod).then(({ SharedHandles }) => setTimeout(() => new SharedHandles(d.b).leave(d.slot), 50));';
  const w = new Worker(code, { eval: true, workerData: { mod, b: t.buffer, slot } });
  const t0 = Date.now();
  assert.equal(t.withdraw(5), true);
  assert.ok(Date.now() - t0 >= 30, 'it waited for the user');
  await new Promise((r) => w.once('exit', r));
  assert.ok(t.publish(7, 70, SH_READ));
  t.enter(7, 0); // never leaves
  assert.equal(t.withdraw(7, 100), false, 'the descriptor must stay open');
  assert.ok(!t.publish(7, 71, SH_READ), 'and the slot is retired');
});
