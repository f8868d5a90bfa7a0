/**
 * The daemon's metrics in Prometheus form: per device, requests, errors and latency per FUSE
 * opcode (from each device's OpStats), the device's own counters and gauges, and Node's
 * process metrics. Everything is read when scraped; nothing here is on the request path.
 */
import { Registry, collectDefaultMetrics, type Metric } from 'prom-client';
import { LATENCY_BOUNDS_S, OTHER_OP, type OpStats } from '../fuse/op-stats.js';
import { opcodeName } from '../fuse/opcodes.js';
import { busyPollCounts } from '../util/busy-poll.js';

import type { Sample } from './sample.js';

export type { Sample };

/** What a device gives the registry. */
export interface MetricsSource {
  transport: string;
  backend: string;
  /** Requests by opcode over the device's life (every session of it). */
  opStats: OpStats;
  /** Requests answered without the session (virtio-fs queue threads): counted, not timed. */
  servedElsewhere?(): [op: number, count: number][];
  samples(): Sample[];
}

interface Value {
  value: number;
  labels: Record<string, string | number>;
  metricName?: string;
}

/** A metric family whose values are computed at scrape time (prom-client reads `get()`). */
function family(name: string, help: string, type: 'counter' | 'gauge' | 'histogram', values: () => Value[]): Metric {
  return { name, help, type, get: async () => ({ name, help, type, values: values(), aggregator: 'sum' }) } as unknown as Metric;
}

export class MetricsRegistry {
  readonly registry = new Registry();
  private readonly devices = new Map<string, MetricsSource>();
  /** The devices' own samples of the scrape in progress. */
  private snapshot = new Map<string, Sample[]>();

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'dpfs_' });
    /** Per device and opcode seen; `elsewhere`: with the requests queue threads served themselves. */
    const perOp = (pick: (s: OpStats, i: number) => number, elsewhere = false) => () => {
      const out: Value[] = [];
      for (const [device, src] of this.devices) {
        const values = new Map<number, number>();
        for (let i = 0; i <= OTHER_OP; i++) if (src.opStats.count[i]) values.set(i, pick(src.opStats, i));
        if (elsewhere) for (const [op, n] of src.servedElsewhere?.() ?? []) if (n) values.set(op, (values.get(op) ?? 0) + n);
        for (const [i, v] of values) out.push({ value: v, labels: { device, op: opName(i) } });
      }
      return out;
    };
    // The main thread's event loop (queue threads spin on their own loops, not counted here).
    this.add('dpfs_busy_poll_waits_total', 'Waits of the main event loop that spun before sleeping: caught (a descriptor became ready during the spin) or missed', 'counter', () => {
      const c = busyPollCounts();
      return [
        { value: c.hits, labels: { result: 'caught' } },
        { value: c.misses, labels: { result: 'missed' } },
      ];
    });
    this.add('dpfs_busy_poll_seconds_total', 'CPU time the main event loop spent spinning for the next request', 'counter', () => [{ value: busyPollCounts().spinSeconds, labels: {} }]);
    this.add('dpfs_device_info', 'Devices served: transport and backend', 'gauge', () =>
      [...this.devices].map(([device, s]) => ({ value: 1, labels: { device, transport: s.transport, backend: s.backend } })),
    );
    this.add('dpfs_requests_total', 'FUSE requests served, by opcode (with those queue threads served themselves)', 'counter', perOp((s, i) => s.count[i]!, true));
    this.add('dpfs_request_errors_total', 'FUSE requests answered with an error, by opcode', 'counter', perOp((s, i) => s.errors[i]!));
    this.add('dpfs_malformed_requests_total', 'Requests that could not be decoded', 'counter', () =>
      [...this.devices].map(([device, s]) => ({ value: s.opStats.malformed, labels: { device } })),
    );
    this.add('dpfs_request_duration_seconds', 'From a request\'s arrival to its reply, by opcode', 'histogram', () => {
      const out: Value[] = [];
      for (const [device, src] of this.devices) {
        const s = src.opStats;
        for (let i = 0; i <= OTHER_OP; i++) {
          if (!s.count[i]) continue;
          const labels = { device, op: opName(i) };
          const cum = s.cumulative(i);
          LATENCY_BOUNDS_S.forEach((le, b) => out.push({ value: cum[b]!, labels: { ...labels, le }, metricName: 'dpfs_request_duration_seconds_bucket' }));
          out.push({ value: cum[cum.length - 1]!, labels: { ...labels, le: '+Inf' }, metricName: 'dpfs_request_duration_seconds_bucket' });
          out.push({ value: s.seconds[i]!, labels, metricName: 'dpfs_request_duration_seconds_sum' });
          out.push({ value: s.count[i]!, labels, metricName: 'dpfs_request_duration_seconds_count' });
        }
      }
      return out;
    });
  }

  /** A family of the devices' own samples, registered the first time a device reports it. */
  private ensureSampleFamily(sample: Sample): void {
    if (this.registry.getSingleMetric(sample.name)) return;
    this.add(sample.name, sample.help, sample.type, () => {
      const out: Value[] = [];
      for (const [device, samples] of this.snapshot) {
        for (const s of samples) if (s.name === sample.name) out.push({ value: s.value, labels: { device, ...s.labels } });
      }
      return out;
    });
  }

  private add(name: string, help: string, type: 'counter' | 'gauge' | 'histogram', values: () => Value[]): void {
    this.registry.registerMetric(family(name, help, type, values));
  }

  addDevice(name: string, source: MetricsSource): void {
    this.devices.set(name, source);
    for (const s of source.samples()) this.ensureSampleFamily(s);
  }

  /** The Prometheus text exposition. */
  async text(): Promise<string> {
    // Each device's samples, read once per scrape for all their families; families a device
    // reports only later (a queue seen once a VMM connects) join here.
    this.snapshot = new Map([...this.devices].map(([name, src]) => [name, src.samples()]));
    for (const samples of this.snapshot.values()) for (const s of samples) this.ensureSampleFamily(s);
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}

function opName(i: number): string {
  return i === OTHER_OP ? 'other' : opcodeName(i);
}
