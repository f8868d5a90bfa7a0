/**
 * Requests, errors and latency per FUSE opcode of a session, for metrics. Kept in flat
 * typed arrays so that recording is a few increments on the request path; a metrics scrape
 * reads them. Latency runs from the request's arrival to its reply being handed to the
 * transport.
 */

/** Upper bounds (seconds) of the latency buckets, as Prometheus histograms take them. */
export const LATENCY_BOUNDS_S = [5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** Opcodes are small; anything else (a hostile peer's number) is counted as "other". */
export const OTHER_OP = 63;
const SLOTS = OTHER_OP + 1;
const NB = LATENCY_BOUNDS_S.length + 1; // the last bucket is +Inf

export class OpStats {
  readonly count = new Float64Array(SLOTS);
  readonly errors = new Float64Array(SLOTS);
  readonly seconds = new Float64Array(SLOTS);
  /** Per opcode, requests per latency bucket (not cumulative). */
  readonly buckets = new Float64Array(SLOTS * NB);
  /** Requests that could not be decoded at all. */
  malformed = 0;

  /** One request of opcode `op` answered after `seconds`, with an error or not. */
  record(op: number, seconds: number, failed: boolean): void {
    const i = op >= 0 && op < OTHER_OP ? op : OTHER_OP;
    this.count[i]!++;
    if (failed) this.errors[i]!++;
    this.seconds[i]! += seconds;
    let b = 0;
    while (b < NB - 1 && seconds > LATENCY_BOUNDS_S[b]!) b++;
    this.buckets[i * NB + b]!++;
  }

  /** Cumulative bucket counts of opcode slot `i`, one per bound and +Inf last. */
  cumulative(i: number): number[] {
    const out: number[] = [];
    let sum = 0;
    for (let b = 0; b < NB; b++) out.push((sum += this.buckets[i * NB + b]!));
    return out;
  }
}
