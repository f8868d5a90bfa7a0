/** The benchmarks' latency histograms: microseconds, 1 µs to 60 s, three significant digits. */
import * as hdr from 'hdr-histogram-js';

export function latencyHistogram(): hdr.Histogram {
  return hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: 3 });
}
