/**
 * Fuzzing a vhost-user-fs device through the guest driver: random (mostly hostile)
 * descriptor chains, FUSE messages and vhost-user messages. After every case the device
 * must still answer a well-formed GETATTR; a case that breaks it is reported with its seed.
 *
 *   dpfs fuzz [socket] --cases 100000 --seed 1   (src/cli/fuzz-command.ts)
 */
import { Opcode } from '../fuse/opcodes.js';
import { encodeRequest } from '../fuse/request-codec.js';
import { RequestSpecs } from '../fuse/request-specs.js';
import { Req } from '../devices/vhost-user/protocol.js';
import { FuseClient } from './fuse-client.js';
import { GuestDriver } from './guest-driver.js';

/** A small deterministic PRNG (mulberry32): a failing case replays from its seed. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface FuzzResult {
  cases: number;
  reconnects: number;
  failures: { seed: number; kind: string; error: string }[];
}

const KINDS = ['chain', 'fuse', 'vhost'] as const;

async function alive(c: FuseClient, ms = 3000): Promise<boolean> {
  const t = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), ms).unref());
  const r = await Promise.race([c.getattr(1).catch(() => ({ error: -1 })), t]);
  return r !== 'timeout' && r.error === 0;
}

/** An open file of the device's: hostile READs and WRITEs name its handle, to reach the I/O paths. */
interface OpenTarget {
  ino: number;
  fh: number;
}

/**
 * `file`: a regular file in the device's root to open read-write; hostile requests then
 * often carry its handle (a backend may serve READ and WRITE on open files by other paths
 * than the session's: those must meet hostile chains too).
 */
export async function fuzz(socket: string, opts: { cases: number; seed: number; file?: string; log?: (m: string) => void }): Promise<FuzzResult> {
  const result: FuzzResult = { cases: 0, reconnects: 0, failures: [] };
  let drv: GuestDriver | undefined;
  let c: FuseClient | undefined;
  let target: OpenTarget | undefined;
  const connect = async () => {
    drv?.close();
    drv = new GuestDriver({ socket, depth: 8, queueSize: 64, slotBytes: 128 * 1024, indirect: true });
    await drv.connect();
    c = new FuseClient(drv);
    await c.init();
    if (opts.file) {
      const ino = await c.lookup(1, opts.file);
      target = { ino, fh: await c.open(ino, 2) };
    }
  };
  await connect();
  for (let i = 0; i < opts.cases; i++) {
    const seed = opts.seed + i;
    const r = rng(seed);
    const kind = KINDS[Math.floor(r() * KINDS.length)]!;
    try {
      if (kind === 'chain') hostileChain(drv!, r, target);
      else if (kind === 'fuse') await hostileFuse(c!, r, target);
      else hostileVhost(drv!, r);
    } catch {
      /* the sending side may refuse nonsense itself; that is fine */
    }
    await new Promise((res) => setImmediate(res));
    result.cases++;
    if (!drv!.connected || kind === 'vhost') {
      // A hostile vhost-user message may end the connection (by design) or legitimately
      // reconfigure this VMM's rings: either way the device must serve the next VMM.
      result.reconnects++;
      try {
        await connect();
      } catch (err) {
        result.failures.push({ seed, kind, error: `cannot reconnect: ${(err as Error).message}` });
        return result;
      }
    }
    if (!(await alive(c!))) {
      result.failures.push({ seed, kind, error: 'device stopped answering' });
      try {
        await connect();
      } catch {
        return result;
      }
    }
    if (opts.log && i % 1000 === 999) opts.log(`${i + 1} cases, ${result.reconnects} reconnects, ${result.failures.length} failures`);
  }
  drv?.close();
  return result;
}

/** A READ or WRITE on `t` of random consistency: lengths, sizes and offsets that lie or do not. */
function ioHeader(view: DataView, r: () => number, t: OpenTarget): number {
  const pick = <T>(xs: T[]) => xs[Math.floor(r() * xs.length)]!;
  const write = r() < 0.5;
  const size = pick([0, 1, 4096, 65536, 0xffffffff, Math.floor(r() * 200_000)]);
  const len = r() < 0.6 ? 80 + (write ? size : 0) : pick([79, 81, 0, Math.floor(r() * 300_000)]);
  view.setUint32(0, len >>> 0, true);
  view.setUint32(4, write ? Opcode.FUSE_WRITE : Opcode.FUSE_READ, true);
  view.setBigUint64(8, BigInt(Math.floor(r() * 1e9)), true);
  view.setBigUint64(16, BigInt(t.ino), true);
  view.setUint16(36, r() < 0.9 ? 0 : Math.floor(r() * 65536), true);
  view.setBigUint64(40, r() < 0.8 ? BigInt(t.fh) : BigInt(Math.floor(r() * 2 ** 40)), true);
  view.setBigUint64(48, pick([0n, 4096n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 63n - 1n, 2n ** 64n - 1n, BigInt(Math.floor(r() * 2 ** 32))]), true);
  view.setUint32(56, size >>> 0, true);
  view.setUint32(60, pick([0, 0, 4, 0xffffffff]), true);
  return len;
}

function hostileChain(drv: GuestDriver, r: () => number, target?: OpenTarget): void {
  const q = 1;
  const { desc, bytes, num, scratch } = drv.raw(q);
  const base = num - 8;
  const memSize = bytes.length;
  const pick = <T>(xs: T[]) => xs[Math.floor(r() * xs.length)]!;
  const addr = () => pick([scratch, scratch + 4096, memSize - 8, memSize + 4096, 2 ** 52, 0, Math.floor(r() * memSize)]);
  const len = () => pick([0, 1, 16, 40, 4096, 0xffffffff, Math.floor(r() * 70000)]);
  const n = 1 + Math.floor(r() * 8);
  for (let k = 0; k < n; k++) {
    const i = base + k;
    desc.setBigUint64(i * 16, BigInt(addr()), true);
    desc.setUint32(i * 16 + 8, len(), true);
    desc.setUint16(i * 16 + 12, Math.floor(r() * 8), true); // NEXT | WRITE | INDIRECT at random
    desc.setUint16(i * 16 + 14, pick([base + k + 1, base, 60000, Math.floor(r() * num)]), true);
  }
  // Sometimes an indirect table (possibly nested, possibly looping) in the scratch area.
  if (r() < 0.3) {
    const t = new DataView(bytes.buffer, scratch + 8192, 64);
    for (let k = 0; k < 4; k++) {
      t.setBigUint64(k * 16, BigInt(addr()), true);
      t.setUint32(k * 16 + 8, len(), true);
      t.setUint16(k * 16 + 12, Math.floor(r() * 8), true);
      t.setUint16(k * 16 + 14, Math.floor(r() * 6), true);
    }
    desc.setBigUint64(base * 16, BigInt(scratch + 8192), true);
    desc.setUint32(base * 16 + 8, pick([64, 48, 0, 17, 1 << 20]), true);
    desc.setUint16(base * 16 + 12, 4, true);
  }
  // A FUSE header of random consistency where the chain starts.
  const hdr = new DataView(bytes.buffer, scratch, 80);
  if (target && r() < 0.5) {
    // A READ or WRITE on the open file, often in a plausible first descriptor.
    const len = ioHeader(hdr, r, target);
    if (r() < 0.5) {
      desc.setBigUint64(base * 16, BigInt(scratch), true);
      desc.setUint32(base * 16 + 8, r() < 0.7 ? Math.min(len, 8192) : len, true);
      desc.setUint16(base * 16 + 12, r() < 0.8 ? 1 : Math.floor(r() * 8), true);
    }
  } else {
    hdr.setUint32(0, pick([40, 41, 0, 0xffffffff, Math.floor(r() * 5000)]), true);
    hdr.setUint32(4, pick([Opcode.FUSE_GETATTR, Opcode.FUSE_READ, Opcode.FUSE_WRITE, Opcode.FUSE_LOOKUP, 0, 9999, Math.floor(r() * 60)]), true);
  }
  drv.queues[q]!.publish(base);
}

async function hostileFuse(c: FuseClient, r: () => number, target?: OpenTarget): Promise<void> {
  if (target && r() < 0.4) {
    // A READ or WRITE on the open file in well-formed descriptors, its data as long as it is.
    const req = Buffer.alloc(80 + Math.floor(r() * 9000));
    ioHeader(new DataView(req.buffer, req.byteOffset, 80), r, target);
    const t = new Promise((res) => setTimeout(res, 1000).unref());
    await Promise.race([c.driver.request(1, req, r() < 0.5 ? 16 + 4096 : Math.floor(r() * 70000)), t]);
    return;
  }
  const ops = Object.keys(RequestSpecs).map(Number).filter((o) => o !== Opcode.FUSE_INIT && o !== Opcode.FUSE_DESTROY);
  const op = r() < 0.1 ? Math.floor(r() * 70000) : ops[Math.floor(r() * ops.length)]!;
  const body = Buffer.alloc(Math.floor(r() * 300));
  for (let k = 0; k < body.length; k++) body[k] = r() < 0.5 ? 0 : Math.floor(r() * 256);
  const req = encodeRequest({ opcode: op, unique: BigInt(Math.floor(r() * 1e9)) + 1n, nodeid: Math.floor(r() * 5) }, [['data', 'raw']], { raw: body });
  // Sometimes lie about the length or the extension area.
  if (r() < 0.3) req.writeUInt32LE(Math.floor(r() * 1000), 0);
  if (r() < 0.2) req.writeUInt16LE(Math.floor(r() * 64), 36);
  const t = new Promise((res) => setTimeout(res, 1000).unref());
  await Promise.race([c.driver.request(op === Opcode.FUSE_FORGET || op === Opcode.FUSE_BATCH_FORGET ? 0 : 1, req, 4096), t]);
}

function hostileVhost(drv: GuestDriver, r: () => number): void {
  if (r() < 0.15) {
    // A memory table while the rings run, with the real memory file but a region made up:
    // shifted, shrunk, grown past the file, or moved in the VMM's address space.
    const size = drv.memorySize;
    const pick = <T>(...xs: T[]) => xs[Math.floor(r() * xs.length)]!;
    drv.sendMemTable({
      gpa: pick(0, 4096, Math.floor(r() * size)),
      size: pick(size, size / 2, size * 2, 4096, Math.floor(r() * size) + 1),
      va: pick(0x7f00_0000_0000, 0x7f00_0000_0000 + 4096, Math.floor(r() * 2 ** 47)),
      offset: pick(0, 4096, Math.floor(r() * size)),
    });
    return;
  }
  const reqs = [Req.SET_VRING_NUM, Req.SET_VRING_ADDR, Req.SET_VRING_BASE, Req.GET_VRING_BASE, Req.SET_MEM_TABLE, Req.SET_VRING_KICK, Req.SET_FEATURES, Req.SET_VRING_ENABLE, 0, 999];
  const req = reqs[Math.floor(r() * reqs.length)]!;
  const payload = Buffer.alloc(Math.floor(r() * 80));
  for (let k = 0; k < payload.length; k++) payload[k] = Math.floor(r() * 256);
  // Ring indices past the queues, sizes that are not powers of two, addresses anywhere.
  if (payload.length >= 4 && r() < 0.5) payload.writeUInt32LE(Math.floor(r() * 4), 0);
  drv.send(req, payload, undefined, r() < 0.2 ? 0x1 | 0x8 : 0x1);
}

// Command line: a long run against a running device.
if (import.meta.url === `file://${process.argv[1]}`) {
  const arg = (n: string, d: string) => {
    const i = process.argv.indexOf(`--${n}`);
    return i >= 0 ? process.argv[i + 1]! : d;
  };
  const res = await fuzz(arg('socket', '/tmp/dpfs.sock'), { cases: Number(arg('cases', '10000')), seed: Number(arg('seed', String(Date.now() % 1e9))), log: (m) => console.error(m) });
  console.log(JSON.stringify(res, null, 2));
  process.exit(res.failures.length ? 1 : 0);
}
