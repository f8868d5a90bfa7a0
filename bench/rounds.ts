/**
 * Benchmarks repeated in rounds. Each round measures every target once, one after the
 * other, so a slow spell of a noisy machine falls on all of them alike; a table then shows
 * each target's median and each ratio's median over the rounds, paired round by round,
 * with its range.
 */

export interface Measured {
  workload: string;
  value: number;
  cpuUsPerOp: number;
}

export interface RatioSummary {
  median: number;
  min: number;
  max: number;
}

export function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/**
 * One row per workload: the row of the round with the median value (so its latencies
 * belong to that measurement), its CPU time replaced by the median over the rounds.
 */
export function medianRows<R extends Measured>(rounds: R[][]): R[] {
  const first = rounds[0] ?? [];
  return first.map((_, i) => {
    const rows = rounds.map((r) => r[i]!).filter(Boolean);
    const byValue = [...rows].sort((a, b) => a.value - b.value);
    const mid = byValue[(byValue.length - 1) >> 1]!;
    return { ...mid, cpuUsPerOp: median(rows.map((r) => r.cpuUsPerOp)) };
  });
}

/** a/b for row `i`, round by round (rounds missing on either side are skipped). */
export function ratioOf(a: Measured[][], b: Measured[][], i: number): RatioSummary {
  const rs: number[] = [];
  for (let k = 0; k < Math.min(a.length, b.length); k++) {
    const x = a[k]?.[i]?.value;
    const y = b[k]?.[i]?.value;
    if (x !== undefined && y !== undefined && y > 0) rs.push(x / y);
  }
  return { median: median(rs), min: Math.min(...rs), max: Math.max(...rs) };
}

/** "0.72x", or with several rounds "0.72x (0.66-0.80)". */
export function formatRatio(r: RatioSummary, rounds: number): string {
  const m = `${r.median.toFixed(2)}x`;
  return rounds > 1 ? `${m} (${r.min.toFixed(2)}-${r.max.toFixed(2)})` : m;
}

/** Left-aligned first column, the rest right-aligned, two spaces apart. */
export function formatTable(lines: string[][]): string {
  const widths = lines[0]!.map((_, c) => Math.max(...lines.map((l) => (l[c] ?? '').length)));
  return lines.map((l) => l.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join('  ')).join('\n');
}

/** The value of `--rounds` (at least 1). */
export function roundsOption(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 50) throw new Error(`--rounds ${value}: a whole number from 1 to 50`);
  return n;
}
