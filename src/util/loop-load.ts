/**
 * How busy this thread's event loop has been lately: its utilization (time not waiting for
 * events) over the last sampling period, sampled by an unref'd timer so it never keeps the
 * process alive. Work that can run either at once on the loop or on other cores (the
 * kernel's io_uring workers) asks it which: at once while the loop has room, elsewhere when
 * the loop is the bottleneck and the machine has cores to spare.
 */
import { availableParallelism } from 'node:os';
import { type EventLoopUtilization, performance } from 'node:perf_hooks';

const PERIOD_MS = 100;
/** Asked once: it is a system call, and this is asked on every small read and write. */
const CORES = availableParallelism();
/** Utilization above which the loop counts as saturated. */
export const SATURATED = 0.85;
/** Fewer cores than this leave none to spare for work moved off the loop. */
export const SPARE_CORES_FROM = 4;

let last: EventLoopUtilization | undefined;
let saturated = false;
let timer: NodeJS.Timeout | undefined;

function sample(): void {
  const now = performance.eventLoopUtilization();
  saturated = last !== undefined && performance.eventLoopUtilization(now, last).utilization > SATURATED;
  last = now;
}

/**
 * True when the loop was saturated over the last period and other cores could take work off
 * it. Starts sampling on first use.
 */
export function offloadPays(cores = CORES): boolean {
  if (cores < SPARE_CORES_FROM) return false;
  if (!timer) {
    last = performance.eventLoopUtilization();
    timer = setInterval(sample, PERIOD_MS);
    timer.unref();
  }
  return saturated;
}
