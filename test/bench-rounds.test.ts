import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { formatRatio, formatTable, median, medianRows, ratioOf, roundsOption } from '../bench/rounds.js';

const row = (workload: string, value: number, cpuUsPerOp: number, p99 = 0) => ({ workload, value, cpuUsPerOp, p99 });

test('median: middle value, or the mean of the two middle ones; the input is left as it was', () => {
  const xs = [5, 1, 4];
  assert.equal(median(xs), 4);
  assert.deepEqual(xs, [5, 1, 4]);
  assert.equal(median([3, 1, 4, 2]), 2.5);
  assert.ok(Number.isNaN(median([])));
  fc.assert(
    fc.property(fc.array(fc.double({ noNaN: true, min: -1e9, max: 1e9 }), { minLength: 1 }), (a) => {
      const m = median(a);
      assert.ok(a.filter((x) => x <= m).length >= a.length / 2);
      assert.ok(a.filter((x) => x >= m).length >= a.length / 2);
    }),
  );
});

test('medianRows: per workload, the median round (with its latencies) and the median CPU time', () => {
  const rounds = [
    [row('a', 10, 5, 100), row('b', 1, 9, 7)],
    [row('a', 30, 1, 300), row('b', 3, 8, 9)],
    [row('a', 20, 3, 200), row('b', 2, 7, 8)],
  ];
  assert.deepEqual(medianRows(rounds), [row('a', 20, 3, 200), row('b', 2, 8, 8)]);
  assert.deepEqual(medianRows([[row('a', 4, 2)]]), [row('a', 4, 2)]);
});

test('ratioOf: paired round by round, not a ratio of medians', () => {
  const dpfs = [[row('x', 10, 0)], [row('x', 40, 0)], [row('x', 30, 0)]];
  const ref = [[row('x', 20, 0)], [row('x', 40, 0)], [row('x', 10, 0)]];
  // Per round: 0.5, 1, 3 -> median 1 (the medians' ratio would be 30/20 = 1.5).
  assert.deepEqual(ratioOf(dpfs, ref, 0), { median: 1, min: 0.5, max: 3 });
  assert.equal(formatRatio(ratioOf(dpfs, ref, 0), 3), '1.00x (0.50-3.00)');
  assert.equal(formatRatio(ratioOf(dpfs.slice(0, 1), ref.slice(0, 1), 0), 1), '0.50x');
});

test('formatTable aligns columns; roundsOption refuses what is not a small whole number', () => {
  assert.equal(formatTable([['w', 'v'], ['long name', '1']]), 'w          v\nlong name  1');
  assert.equal(roundsOption('3'), 3);
  for (const bad of ['0', '-1', '2.5', 'x', '51']) assert.throws(() => roundsOption(bad), /--rounds/);
});
