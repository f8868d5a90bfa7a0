/** Adaptive busy polling of the event loop (native/busy_poll.c): catching, backing off, limits. */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { closeSync } from 'node:fs';
import { test } from 'node:test';
import { native } from '../src/native/native.js';

/** A child that answers each byte it reads at once (echo) or after `delayMs`. */
function responder(delayMs: number) {
  const code = `import os, time
while True:
    b = os.read(0, 1)
    if not b: break
    ${delayMs ? `time.sleep(${delayMs / 1000})` : 'pass'}
    os.write(1, b)`;
  const child = spawn('python3', ['-c', code], { stdio: ['pipe', 'pipe', 'inherit'] });
  const ping = () =>
    new Promise<void>((resolve) => {
      child.stdout.once('data', () => resolve());
      child.stdin.write('x');
    });
  return { child, ping };
}

function stats() {
  const [hits, misses, spinNs, curNs] = native().busyPollStats();
  return { hits, misses, spinNs, curNs };
}

test('busy polling catches answers that follow closely, and an idle loop stops spinning', async (t) => {
  const quick = responder(0);
  const slow = responder(5);
  t.after(() => {
    quick.child.kill();
    slow.child.kill();
    native().busyPoll(0);
  });
  await quick.ping(); // the child is up
  await slow.ping();
  assert.deepEqual(stats(), { hits: 0, misses: 0, spinNs: 0, curNs: 0 }, 'off until asked for');

  native().busyPoll(500);
  const rounds = 2000;
  for (let i = 0; i < rounds; i++) await quick.ping();
  const after = stats();
  // Each answer comes some tens of µs after the request: the spin grows to catch them.
  assert.ok(after.hits > rounds / 4, `caught ${after.hits} of ${rounds} answers (missed ${after.misses})`);
  assert.ok(after.curNs > 0 && after.curNs <= 500_000, `spin limit now ${after.curNs} ns`);

  // Answers 5 ms apart, past the limit: the spin shrinks away instead of burning 500 µs each.
  for (let i = 0; i < 60; i++) await slow.ping();
  const idle = stats();
  assert.equal(idle.curNs, 0, 'no spin left after long waits');
  const spentMs = (idle.spinNs - after.spinNs) / 1e6;
  assert.ok(spentMs < 15, `spun ${spentMs.toFixed(1)} ms over 60 waits of 5 ms`);

  native().busyPoll(0);
  for (let i = 0; i < 200; i++) await quick.ping();
  const off = stats();
  assert.equal(off.hits + off.misses, idle.hits + idle.misses, 'off again: no spins');
});

test('timers fire on time while the loop sleeps through busy polling', async (t) => {
  native().busyPoll(50);
  t.after(() => native().busyPoll(0));
  // Idle but for timers: each sleep is the spin's own (it learns how long waits are), bounded
  // by the loop's next timer, which must be due when that sleep ends.
  for (const ms of [40, 80]) {
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, ms));
    const late = performance.now() - t0 - ms;
    assert.ok(late < ms / 2, `a ${ms} ms timer fired ${late.toFixed(1)} ms late`);
  }
});

test('a descriptor the loop starts watching during a turn, already readable, is served at once', async (t) => {
  native().busyPoll(50);
  const fd = native().eventfd();
  t.after(() => {
    native().busyPoll(0);
    closeSync(fd);
  });
  // The only other thing that would wake the loop, much later.
  const guard = setTimeout(() => {}, 3000);
  const t0 = performance.now();
  const at = await new Promise<number>((resolve) => {
    // From a timer: the loop's next step is its wait (no immediates pending).
    setTimeout(() => {
      native().eventfdSignal(fd);
      // libuv adds the descriptor to its epoll set in its next wait: a spin or sleep of the
      // busy poller on that set alone would not see it.
      const h = native().watch(fd, () => {
        native().unwatch(h);
        resolve(performance.now());
      });
    }, 1);
  });
  clearTimeout(guard);
  assert.ok(at - t0 < 1000, `served after ${(at - t0).toFixed(0)} ms`);
});

test('worker threads that busy-poll and watch descriptors end, or are terminated, without harm', () => {
  // In a process of its own whose main thread never loads the addon: a worker's copy is
  // then unloaded as the worker ends, and nothing of it may run after (handle closes do).
  const mod = new URL('../src/native/native.js', import.meta.url).href;
  const script = `
    import { Worker } from 'node:worker_threads';
    const body = \`const { workerData: d } = require('node:worker_threads');
      import(d.mod).then(({ native }) => {
        native().busyPoll(50);
        const fd = native().eventfd();
        const h = native().watch(fd, () => native().eventfdDrain(fd));
        const t = setInterval(() => native().eventfdSignal(fd), 1);
        setTimeout(() => { clearInterval(t); if (d.unwatch) native().unwatch(h); if (d.quiet) native().busyPoll(0); }, 15);
      });\`;
    for (let i = 0; i < 16; i++) {
      const w = new Worker(body, { eval: true, execArgv: [], workerData: { mod: ${JSON.stringify(mod)}, unwatch: i % 2 === 0, quiet: i % 4 === 0 } });
      await new Promise((r) => setTimeout(r, 25));
      // Those that unwatch end by themselves; the others are terminated while watching.
      if (i % 2 === 0) await new Promise((r) => w.once('exit', r));
      else await w.terminate();
    }
    console.log('done');`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.signal, null, `killed by ${r.signal}: ${r.stderr}`);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /done/);
});

test('busyPoll refuses limits out of range', () => {
  assert.throws(() => native().busyPoll(-1), RangeError);
  assert.throws(() => native().busyPoll(2e6), RangeError);
  assert.throws(() => native().busyPoll(Number.NaN), RangeError);
});
