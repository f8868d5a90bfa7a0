#!/usr/bin/env node
/** The `dpfs` command line. */
import './env.js';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { BACKEND_TYPES } from '../backends/registry.js';
import { ConfigError, ConfigSchema, parseConfig, type DeviceConfig } from '../config/schema.js';
import { parseSize } from '../config/size.js';
import { createLogger } from '../util/log.js';
import { DEFAULT_BUSY_POLL_US, MAX_BUSY_POLL_US } from '../util/busy-poll.js';
import { parseListen } from '../metrics/server.js';
import { runDevices, startDevice } from './daemon.js';
import { reportDevices } from './devices-report.js';
import { type FuzzOptions, runFuzz } from './fuzz-command.js';

/** A parser of integers from `min` (1: positive; 0: a count that may be none). */
function intFrom(min: 0 | 1): (v: string) => number {
  return (v) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(min ? 'must be a positive integer' : 'must be 0 or a positive integer');
    return n;
  };
}

const intArg = intFrom(1);
const countArg = intFrom(0);

function listenArg(v: string): string {
  try {
    parseListen(v);
    return v;
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

function busyPollArg(v: string): number {
  const n = countArg(v);
  if (n > MAX_BUSY_POLL_US) throw new InvalidArgumentError(`at most ${MAX_BUSY_POLL_US}`);
  return n;
}

function sizeArg(v: string): number {
  try {
    return parseSize(v);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

interface MountOpts {
  backend: (typeof BACKEND_TYPES)[number];
  source?: string;
  cache: 'never' | 'metadata' | 'auto' | 'always';
  writeback: boolean;
  directIo: boolean;
  xattr: boolean;
  uidMap: string;
  gidMap: string;
  maxFds: number;
  kernelPassthrough: boolean;
  io: 'poll' | 'threads' | 'uring';
  readers: number;
  ringDepth: number;
  maxWrite: number;
  capacity: number;
  defaultPermissions?: boolean;
  allowOther: boolean;
  readOnly: boolean;
  debug: boolean;
  metrics?: string;
  busyPoll: number;
}

function backendConfig(o: MountOpts): object {
  if (o.backend === 'null') return { type: 'null' };
  return o.backend === 'memory'
    ? { type: 'memory', capacity: o.capacity }
    : {
        type: 'passthrough',
        root: o.source ? resolve(o.source) : undefined,
        cache: o.cache,
        writeback: o.writeback,
        direct_io: o.directIo,
        xattr: o.xattr,
        read_only: o.readOnly,
        uid_map: o.uidMap,
        gid_map: o.gidMap,
        max_fds: o.maxFds,
        kernel_passthrough: o.kernelPassthrough,
      };
}

function validDevice(device: object): DeviceConfig {
  const r = ConfigSchema.safeParse({ device: [device] });
  if (!r.success) throw new ConfigError(r.error.issues.map((i) => `${i.path.slice(2).join('.')}: ${i.message}`).join('\n'));
  return r.data.device[0]!;
}

function mountDevice(mountPoint: string, o: MountOpts): DeviceConfig {
  const raw = {
    device: [
      {
        name: 'cli',
        transport: 'fuse',
        mount_point: resolve(mountPoint),
        io: o.io,
        readers: o.readers,
        ring_depth: o.ringDepth,
        max_write: o.maxWrite,
        allow_other: o.allowOther,
        default_permissions: o.defaultPermissions,
        read_only: o.readOnly,
        trace: o.debug,
        backend: backendConfig(o),
      },
    ],
  };
  return validDevice(raw.device[0]!);
}

const program = new Command();
program.name('dpfs').description('File-system virtualization: serve FUSE and virtio-fs devices from TypeScript backends').version('0.1.0');

/** Backend options shared by the commands that serve one device. */
function backendOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option('-b, --backend <type>', 'backend').choices([...BACKEND_TYPES]).default('memory'))
    .addOption(new Option('--capacity <size>', 'memory backend capacity').argParser(sizeArg).default(16 * 1024 ** 3, '16GiB'))
    .option('-s, --source <dir>', 'passthrough: the directory to serve')
    .addOption(new Option('--cache <mode>', 'passthrough: kernel caching').choices(['never', 'metadata', 'auto', 'always']).default('auto'))
    .option('--writeback', 'passthrough: kernel write-back caching', false)
    .option('--direct-io', 'passthrough: bypass the kernel page cache', false)
    .option('--no-xattr', 'passthrough: no extended attributes')
    .option('--uid-map <map>', 'passthrough: tenant:host:count[,...] uid ranges', '')
    .option('--gid-map <map>', 'passthrough: tenant:host:count[,...] gid ranges', '')
    .option('--max-fds <n>', 'passthrough: bound on cached O_PATH descriptors', intArg, 4096)
    .option('--no-kernel-passthrough', 'passthrough: serve reads and writes in the daemon, not the kernel')
    .option('--read-only', 'export read-only', false)
    .option('-d, --debug', 'log every request and reply', false)
    .option('--metrics <host:port>', 'export Prometheus metrics at http://host:port/metrics', listenArg)
    .option('--busy-poll <us>', 'spin up to this many µs for the next request before sleeping, adaptively (0: never)', busyPollArg, DEFAULT_BUSY_POLL_US);
}

backendOptions(
  program
    .command('mount')
    .description('mount one backend at a directory through /dev/fuse and serve it until interrupted')
    .argument('<mountpoint>', 'directory to mount on')
    .addOption(new Option('--io <mode>', 'take requests on the event loop from /dev/fuse (poll) or io_uring (uring), or on blocking reader threads').choices(['poll', 'threads', 'uring']).default('poll'))
    .option('-r, --readers <n>', 'reader threads in --io threads mode', intArg, 4)
    .option('--ring-depth <n>', 'requests in flight per CPU in --io uring mode', intArg, 16)
    .option('--max-write <size>', 'largest write request', sizeArg, 1024 * 1024)
    .option('--default-permissions', 'let the kernel check mode bits as well')
    .option('--no-default-permissions', 'let the backend alone check permissions')
    .option('--no-allow-other', 'only the mounting user may access the mount'),
).action(async (mountPoint: string, o: MountOpts) => {
  const log = createLogger(o.debug ? 'debug' : undefined);
  await runDevices([mountDevice(mountPoint, o)], log, { metricsListen: o.metrics, busyPollUs: o.busyPoll });
});

backendOptions(
  program
    .command('vhost-user')
    .description('serve one backend as a virtio-fs device on a vhost-user socket (QEMU: -device vhost-user-fs-pci)')
    .argument('<socket>', 'unix socket path for the VMM')
    .option('-q, --queues <n>', 'request queues (QEMU num-request-queues)', intArg, 1)
    .option('-t, --threads <n>', 'queue threads for the request queues: ring work, and READ/WRITE on open files (default 0: the event loop serves them)', countArg),
).action(async (socket: string, o: MountOpts & { queues: number; threads?: number }) => {
  const log = createLogger(o.debug ? 'debug' : undefined);
  const device = validDevice({
    name: 'cli',
    transport: 'vhost-user',
    socket: resolve(socket),
    queues: o.queues,
    threads: o.threads,
    trace: o.debug,
    backend: backendConfig(o),
  });
  await runDevices([device], log, { metricsListen: o.metrics, busyPollUs: o.busyPoll });
});

program
  .command('run')
  .description('serve every device a TOML configuration describes')
  .requiredOption('-c, --config <file>', 'TOML configuration file')
  .option('--check', 'validate the configuration and exit')
  .action(async (o: { config: string; check?: boolean }) => {
    let text: string;
    try {
      text = readFileSync(o.config, 'utf8');
    } catch (err) {
      throw new ConfigError(`cannot read ${o.config}: ${(err as Error).message}`);
    }
    const cfg = parseConfig(text, o.config);
    if (o.check) {
      console.log(`${o.config}: ok (${cfg.device.length} device${cfg.device.length > 1 ? 's' : ''})`);
      return;
    }
    const log = createLogger(cfg.log.level === 'trace' ? 'debug' : cfg.log.level);
    const devices = cfg.log.level === 'trace' ? cfg.device.map((d) => ({ ...d, trace: true })) : cfg.device;
    await runDevices(devices, log, { metricsListen: cfg.metrics?.listen, busyPollUs: cfg.daemon.busy_poll_us });
  });

program
  .command('fuzz')
  .description('send random hostile descriptor chains, FUSE and vhost-user messages to a virtio-fs device and check that it keeps serving')
  .argument('[socket]', "a running device's socket (default: a daemon started for the run)")
  .option('-n, --cases <n>', 'cases to send', intArg, 100000)
  .option('--seed <n>', 'seed of the first case (case i uses seed + i)', countArg, Date.now() % 1_000_000_000)
  .addOption(new Option('-b, --backend <type>', 'backend of the daemon started for the run').choices(['memory', 'null', 'passthrough']).default('memory'))
  .option('-t, --threads <n>', 'queue threads of the daemon started for the run', countArg, 0)
  .option('--file <name>', "a file in the device's root whose handle hostile READs and WRITEs carry (default, for a daemon started for the run: one made for it)")
  .action(async (socket: string | undefined, o: FuzzOptions) => {
    process.exitCode = await runFuzz(socket ? resolve(socket) : undefined, o);
  });

program
  .command('devices')
  .description('list the devices this machine can serve')
  .option('--json', 'machine-readable output')
  .action((o: { json?: boolean }) => {
    const rows = reportDevices();
    if (o.json) {
      console.log(JSON.stringify(rows, null, 2));
      return;
    }
    const w = Math.max(...rows.map((r) => r.transport.length));
    for (const r of rows) console.log(`${r.transport.padEnd(w)}  ${r.usable ? 'yes' : 'no '}  ${r.detail}`);
  });

program
  .command('demo')
  .description('mount the memory backend on a temporary directory, run real programs on it, and unmount')
  .action(async () => {
    const log = createLogger('warn');
    const dir = mkdtempSync(join(tmpdir(), 'dpfs-demo-'));
    const dev = await startDevice(mountDevice(dir, { backend: 'memory', cache: 'auto', writeback: false, directIo: false, xattr: true, uidMap: '', gidMap: '', maxFds: 4096, kernelPassthrough: true, io: 'poll', readers: 4, ringDepth: 16, maxWrite: 1 << 20, capacity: 1 << 30, defaultPermissions: true, allowOther: true, readOnly: false, debug: false, busyPoll: 0 }), log);
    console.log(`memory backend mounted on ${dir}\n`);
    const script = `
      set -e
      cd "$1"
      echo "hello from dpfs" > hello.txt
      mkdir -p src/lib && seq 1 20000 > src/lib/numbers.txt
      ln hello.txt hello-link.txt && ln -s hello.txt hello-sym.txt
      dd if=/dev/urandom of=blob.bin bs=1M count=8 status=none
      tar -C "$1" -cf /tmp/dpfs-demo-$$.tar src hello.txt && mkdir restored && tar -C restored -xf /tmp/dpfs-demo-$$.tar && rm /tmp/dpfs-demo-$$.tar
      echo "$ ls -la"; ls -la
      echo; echo "$ cat hello-sym.txt"; cat hello-sym.txt
      echo; echo "$ stat -c '%n links=%h size=%s' hello.txt"; stat -c '%n links=%h size=%s' hello.txt
      echo; echo "$ sha256sum blob.bin src/lib/numbers.txt restored/src/lib/numbers.txt"; sha256sum blob.bin src/lib/numbers.txt restored/src/lib/numbers.txt
      echo; echo "$ df -h ."; df -h .
      echo; echo "$ mount | grep dpfs"; grep " $1 " /proc/mounts
    `;
    const code = await new Promise<number>((res) => {
      const child = spawn('sh', ['-c', script, 'demo', dir], { stdio: 'inherit' });
      child.on('close', (c) => res(c ?? 1));
    });
    await dev.stop();
    rmdirSync(dir);
    console.log(`\nunmounted; the demo ${code === 0 ? 'succeeded' : `failed (exit ${code})`}`);
    process.exitCode = code;
  });

program.parseAsync(process.argv).catch((err: unknown) => {
  if (err instanceof ConfigError) {
    console.error(err.message);
    process.exit(2);
  }
  console.error(`dpfs: ${(err as Error)?.message ?? err}`);
  process.exit(1);
});
