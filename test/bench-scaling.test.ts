/**
 * The multi-queue scaling benchmark end to end, briefly: real daemons (the null backend) on
 * one and two request queues, each queue driven by its own worker thread, and the JSON it
 * writes. Figures are not judged here (benchmarks measure, tests check); that every row is
 * there, served, and consistent is.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { projectRoot } from '../src/native/native.js';

test('the scaling benchmark measures every queue count and workload, from one driver thread per queue', { timeout: 120_000 }, async () => {
  const out = mkdtempSync(join(tmpdir(), 'dpfs-scaling-'));
  try {
    const script = join(projectRoot, 'dist/bench/virtiofs-scaling.js');
    const { stdout } = await promisify(execFile)(process.execPath, [script, '--targets', 'null', '--queues', '1,2', '--seconds', '0.3', '--source-parent', out, '--out', out], { timeout: 100_000 });
    assert.match(stdout, /speed-up vs 1 queue/);
    const result = JSON.parse(readFileSync(join(out, 'virtiofs-scaling.json'), 'utf8')) as { median: { target: string; queues: number; workload: string; ops: number; p50: number; p99: number; mainBusy: number }[] };
    const keys = result.median.map((r) => `${r.queues}/${r.workload}`).sort();
    assert.deepEqual(keys, ['1/getattr', '1/read4k', '1/write4k', '2/getattr', '2/read4k', '2/write4k']);
    for (const r of result.median) {
      assert.equal(r.target, 'null');
      assert.ok(r.ops > 100, `${r.queues} queues, ${r.workload}: ${r.ops} ops/s`);
      assert.ok(r.p50 > 0 && r.p99 >= r.p50, `latency percentiles in order: ${r.p50}, ${r.p99}`);
      assert.ok(r.mainBusy > 0 && r.mainBusy < 1.5, `main thread busy: ${r.mainBusy}`);
    }
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});
