/**
 * The TOML configuration: which devices a daemon serves and with which backends.
 * Validation errors name the offending key and what it accepts.
 */
import { parse as parseToml } from 'smol-toml';
import { z } from 'zod';
import { parseListen } from '../metrics/server.js';
import { parseIdMap } from '../backends/passthrough/id-map.js';
import { parseSize } from './size.js';
import { DEFAULT_BUSY_POLL_US, MAX_BUSY_POLL_US } from '../util/busy-poll.js';

const size = z.union([z.number(), z.string()]).transform((v, ctx) => {
  try {
    return parseSize(v);
  } catch (err) {
    ctx.addIssue({ code: z.ZodIssueCode.custom, message: (err as Error).message });
    return z.NEVER;
  }
});

export const MemoryBackendSchema = z
  .object({
    type: z.literal('memory'),
    capacity: size.default('16GiB'),
    max_inodes: z.number().int().positive().default(1_000_000),
    cache_timeout: z.number().nonnegative().default(1),
  })
  .strict();

const idMap = z.string().transform((v, ctx) => {
  try {
    return parseIdMap(v);
  } catch (err) {
    ctx.addIssue({ code: z.ZodIssueCode.custom, message: (err as Error).message });
    return z.NEVER;
  }
});

export const PassthroughBackendSchema = z
  .object({
    type: z.literal('passthrough'),
    root: z.string().startsWith('/', { message: 'must be an absolute path' }),
    cache: z.enum(['never', 'metadata', 'auto', 'always']).default('auto'),
    writeback: z.boolean().default(false),
    direct_io: z.boolean().default(false),
    xattr: z.boolean().default(true),
    read_only: z.boolean().default(false),
    uid_map: idMap.default(''),
    gid_map: idMap.default(''),
    max_fds: z.number().int().min(16).max(16384).default(4096),
    /** /dev/fuse on Linux 6.9+: the kernel reads and writes open files itself. */
    kernel_passthrough: z.boolean().default(true),
  })
  .strict();

/** Answers without storage: measures the framework's own overhead. */
export const NullBackendSchema = z.object({ type: z.literal('null') }).strict();

export const BackendSchema = z.discriminatedUnion('type', [MemoryBackendSchema, PassthroughBackendSchema, NullBackendSchema]);

export const FuseDeviceSchema = z
  .object({
    name: z.string().min(1),
    transport: z.literal('fuse'),
    mount_point: z.string().startsWith('/', { message: 'must be an absolute path' }),
    io: z.enum(['poll', 'threads', 'uring']).default('poll'),
    readers: z.number().int().min(1).max(64).default(4),
    /** io = "uring": requests in flight per CPU queue. */
    ring_depth: z.number().int().min(1).max(1024).default(16),
    max_write: size.default(1024 * 1024).refine((n) => n >= 4096 && n <= 16 * 1024 * 1024, 'must be between 4KiB and 16MiB'),
    allow_other: z.boolean().default(true),
    /** Kernel-side mode checks; unset: the backend's preference (memory: on, passthrough: off). */
    default_permissions: z.boolean().optional(),
    read_only: z.boolean().default(false),
    trace: z.boolean().default(false),
    backend: BackendSchema,
  })
  .strict();

export const VhostUserDeviceSchema = z
  .object({
    name: z.string().min(1),
    transport: z.literal('vhost-user'),
    /** The unix socket QEMU's vhost-user-fs-pci connects to (its chardev path). */
    socket: z.string().startsWith('/', { message: 'must be an absolute path' }),
    /** The mount tag, as given to the VMM (listed for operators; the VMM announces it). */
    tag: z.string().min(1).max(36).optional(),
    /** Request queues offered (QEMU's num-request-queues may not exceed it). */
    queues: z.number().int().min(1).max(64).default(1),
    /** Queue threads for the request queues (ring work, and READ/WRITE on open files); 0 (the default): all on the event loop. */
    threads: z.number().int().min(0).max(64).optional(),
    trace: z.boolean().default(false),
    backend: BackendSchema,
  })
  .strict();

export const DeviceSchema = z.discriminatedUnion('transport', [FuseDeviceSchema, VhostUserDeviceSchema]);

export const ConfigSchema = z
  .object({
    log: z
      .object({ level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info') })
      .strict()
      .default({}),
    daemon: z
      .object({
        /** Longest spin of the event loops before they sleep, in µs (adaptive; 0: never). */
        busy_poll_us: z.number().int().min(0).max(MAX_BUSY_POLL_US).default(DEFAULT_BUSY_POLL_US),
      })
      .strict()
      .default({}),
    /** Prometheus metrics of every device at http://listen/metrics. */
    metrics: z
      .object({
        listen: z.string().refine(
          (l) => {
            try {
              parseListen(l);
              return true;
            } catch {
              return false;
            }
          },
          { message: 'must be host:port (e.g. "127.0.0.1:9464")' },
        ),
      })
      .strict()
      .optional(),
    device: z.array(DeviceSchema).min(1, 'at least one [[device]] is required'),
  })
  .strict()
  .superRefine((cfg, ctx) => {
    const seen = new Map<string, number>();
    cfg.device.forEach((d, i) => {
      if (seen.has(d.name)) ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['device', i, 'name'], message: `duplicate device name "${d.name}"` });
      seen.set(d.name, i);
      const where = (o: (typeof cfg.device)[number]) => (o.transport === 'fuse' ? o.mount_point : o.socket);
      const mp = cfg.device.findIndex((o, j) => j < i && where(o) === where(d));
      if (mp >= 0) ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['device', i, d.transport === 'fuse' ? 'mount_point' : 'socket'], message: `also used by device[${mp}]` });
    });
  });

export type Config = z.infer<typeof ConfigSchema>;
export type DeviceConfig = z.infer<typeof DeviceSchema>;
export type BackendConfig = z.infer<typeof BackendSchema>;

export class ConfigError extends Error {
  override name = 'ConfigError';
}

function formatPath(path: (string | number)[]): string {
  return path.map((p, i) => (typeof p === 'number' ? `[${p}]` : i ? `.${p}` : p)).join('') || '(top level)';
}

function formatIssue(issue: z.ZodIssue): string {
  const where = formatPath(issue.path);
  switch (issue.code) {
    case z.ZodIssueCode.invalid_union_discriminator:
      return `${where}: must be one of ${issue.options.map((o) => JSON.stringify(o)).join(', ')}`;
    case z.ZodIssueCode.invalid_enum_value:
      return `${where}: ${JSON.stringify(issue.received)} is not allowed; use one of ${issue.options.map((o) => JSON.stringify(o)).join(', ')}`;
    case z.ZodIssueCode.invalid_literal:
      return `${where}: must be ${JSON.stringify(issue.expected)}`;
    case z.ZodIssueCode.unrecognized_keys:
      return `${where}: unknown key${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => JSON.stringify(k)).join(', ')}`;
    case z.ZodIssueCode.invalid_type:
      return issue.received === 'undefined' ? `${where}: required (${issue.expected})` : `${where}: expected ${issue.expected}, got ${issue.received}`;
    default:
      return `${where}: ${issue.message}`;
  }
}

/** Parses and validates TOML text; throws ConfigError listing every problem. */
export function parseConfig(text: string, source = 'config'): Config {
  let raw: unknown;
  try {
    raw = parseToml(text);
  } catch (err) {
    throw new ConfigError(`${source}: invalid TOML: ${(err as Error).message}`);
  }
  const r = ConfigSchema.safeParse(raw);
  if (!r.success) {
    throw new ConfigError(`${source}: invalid configuration:\n${r.error.issues.map((i) => '  ' + formatIssue(i)).join('\n')}`);
  }
  return r.data;
}
