/** Runs a set of devices until SIGINT/SIGTERM (or until every mount is gone), then stops them cleanly. */
import type { Server } from 'node:http';
import { createBackend } from '../backends/registry.js';
import type { DeviceConfig } from '../config/schema.js';
import { DevFuseDevice } from '../devices/devfuse/device.js';
import { VhostUserFsDevice } from '../devices/vhost-user/device.js';
import type { Logger } from '../util/log.js';
import { MetricsRegistry } from '../metrics/registry.js';
import type { Sample } from '../metrics/sample.js';
import { serveMetrics } from '../metrics/server.js';
import { setBusyPoll } from '../util/busy-poll.js';
import type { OpStats } from '../fuse/op-stats.js';

export interface RunningDevice {
  name: string;
  stop(): Promise<void>;
  ended: Promise<void>;
  opStats: OpStats;
  servedElsewhere?(): [op: number, count: number][];
  samples(): Sample[];
}

/** Starts one device; `metrics`: record per-opcode counts and latencies. */
export async function startDevice(cfg: DeviceConfig, log: Logger, metrics = false): Promise<RunningDevice> {
  const fs = createBackend(cfg.backend);
  switch (cfg.transport) {
    case 'fuse': {
      const dev = new DevFuseDevice({
        mountPoint: cfg.mount_point,
        fs,
        io: cfg.io,
        readers: cfg.readers,
        ringDepth: cfg.ring_depth,
        maxWrite: cfg.max_write,
        allowOther: cfg.allow_other,
        defaultPermissions: cfg.default_permissions,
        readOnly: cfg.read_only,
        fsName: `dpfs-${cfg.backend.type}`,
        log: log.child({ name: cfg.name }),
        trace: cfg.trace,
        metrics,
      });
      await dev.start();
      return { name: cfg.name, stop: () => dev.stop(), ended: dev.ended, opStats: dev.opStats, servedElsewhere: () => dev.servedNatively(), samples: () => [...dev.samples(), ...(fs.samples?.() ?? [])] };
    }
    case 'vhost-user': {
      const dev = new VhostUserFsDevice({
        socketPath: cfg.socket,
        fs,
        requestQueues: cfg.queues,
        threads: cfg.threads,
        log: log.child({ name: cfg.name }),
        trace: cfg.trace,
        metrics,
      });
      dev.start();
      // A vhost-user device serves VMM after VMM: it ends only when stopped.
      let ended!: () => void;
      const done = new Promise<void>((r) => (ended = r));
      return { name: cfg.name, stop: () => dev.stop().then(ended), ended: done, opStats: dev.opStats, servedElsewhere: () => dev.servedNatively(), samples: () => [...dev.samples(), ...(fs.samples?.() ?? [])] };
    }
  }
}

export interface DaemonOptions {
  /** Where to export metrics (host:port). */
  metricsListen?: string;
  /** Longest spin of the event loops before they sleep, in µs (0: none); see util/busy-poll.ts. */
  busyPollUs: number;
}

/** Serves the devices until a signal (or until every one ended). */
export async function runDevices(configs: DeviceConfig[], log: Logger, opts: DaemonOptions): Promise<void> {
  const { metricsListen } = opts;
  setBusyPoll(opts.busyPollUs);
  const running: RunningDevice[] = [];
  let stopping = false;
  const metrics = metricsListen ? new MetricsRegistry() : undefined;
  let server: Server | undefined;
  const stopAll = async () => {
    if (stopping) return;
    stopping = true;
    server?.close();
    await Promise.allSettled(running.map((d) => d.stop()));
  };
  try {
    if (metrics) {
      server = await serveMetrics(metrics, metricsListen!);
      log.info({ metrics: `http://${metricsListen}/metrics` }, 'exporting metrics');
    }
    for (const cfg of configs) {
      const dev = await startDevice(cfg, log, !!metrics);
      running.push(dev);
      metrics?.addDevice(cfg.name, { transport: cfg.transport, backend: cfg.backend.type, opStats: dev.opStats, servedElsewhere: dev.servedElsewhere, samples: () => dev.samples() });
    }
  } catch (err) {
    await stopAll();
    throw err;
  }
  log.info({ devices: running.map((d) => d.name) }, 'serving');
  await new Promise<void>((resolve) => {
    const onSignal = (sig: string) => {
      log.info({ signal: sig }, 'stopping');
      void stopAll().then(resolve);
    };
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    process.once('SIGHUP', onSignal);
    // Every device ended by itself (e.g. unmounted with umount): nothing left to serve.
    void Promise.all(running.map((d) => d.ended)).then(() => {
      if (!stopping) log.info({}, 'all devices ended');
      resolve();
    });
  });
  server?.close();
  server?.closeAllConnections();
}
