/**
 * FUSE over io_uring (--io uring): the real-program battery, locks with an interrupted
 * waiter, and concurrent I/O through the daemon, with the requests counted on the ring.
 * The kernel's fuse module must allow it (parameter enable_uring): the tests switch it on
 * and restore it; kernels without it skip them.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { possibleCpus } from '../src/devices/devfuse/uring-channel.js';
import { type Daemon, isDpfsMount, sh, startDaemon, stopDaemon, waitFor, withMount, withPassthrough } from './helpers/daemon.js';
import { noFuseUring, withFuseUring } from './helpers/fuse-uring.js';
import { lockContention, workloads } from './helpers/workloads.js';

const INFO = { DPFS_LOG: 'info' };

interface Served {
  name: string;
  requests: number;
  overIoUring?: number;
}

/** Per device, at its end: the requests served, and those taken from the ring. */
function endings(d: Daemon): Served[] {
  return d
    .stderr()
    .split('\n')
    .filter((l) => l.includes('"connection ended"'))
    .map((l) => JSON.parse(l) as Served);
}

/** The one device's counts. */
function served(d: Daemon): Served {
  const [n] = endings(d);
  assert.ok(n, `no end-of-connection line in:\n${d.stderr().slice(-2000)}`);
  return n;
}

test('possible CPUs: one ring queue per possible CPU, from the kernel list format', () => {
  assert.equal(possibleCpus('0-1\n'), 2);
  assert.equal(possibleCpus('0\n'), 1);
  assert.equal(possibleCpus('0,2-3,7'), 8);
  assert.throws(() => possibleCpus('garbage'), /cannot parse/);
});

test('memory backend over io_uring: the real-program battery and an interrupted lock waiter', { skip: noFuseUring, timeout: 300000 }, async () => {
  let daemon: Daemon | undefined;
  await withFuseUring('Y', () =>
    withMount(
      async (dir, d) => {
        daemon = d;
        for (const [name, run] of Object.entries(workloads)) {
          await sh(`mkdir "${dir}/w" && cd "${dir}/w"`);
          await run(`${dir}/w`).catch((err: Error) => {
            throw new Error(`${name}: ${err.message}`);
          });
          await sh(`rm -rf "${dir}/w"`);
        }
        await lockContention(dir);
      },
      ['--io', 'uring', '--ring-depth', '8'],
      INFO,
    ),
  );
  assert.match(daemon!.stderr(), /serving requests over io_uring/);
  const n = served(daemon!);
  // INIT, FORGETs and INTERRUPTs still come through /dev/fuse; everything else through the ring.
  assert.ok(n.overIoUring! > 10000, `requests over io_uring: ${n.overIoUring}`);
  assert.ok(n.overIoUring! > 0.8 * n.requests, `${n.overIoUring} of ${n.requests} over io_uring`);
});

test('passthrough over io_uring: concurrent direct I/O verified by fio, parallel metadata from many processes', { skip: noFuseUring, timeout: 300000 }, async () => {
  let daemon: Daemon | undefined;
  await withFuseUring('Y', () =>
    withPassthrough(
      async (dir, src, d) => {
        daemon = d;
        // Data through the daemon (no kernel passthrough): reads land in and writes leave from ring entries.
        const fio = await sh(
          `fio --verify_state_save=0 --name=v --directory="${dir}" --rw=randrw --bs=4k,64k --size=16m --numjobs=4 --iodepth=16 --ioengine=libaio --direct=1 --verify=crc32c --output-format=terse --minimal >/dev/null && echo verified`,
        );
        assert.equal(fio.trim(), 'verified');
        const out = await sh(
          `
          cd "${dir}"
          for p in 1 2 3 4 5 6; do (mkdir d$p && cd d$p && for i in $(seq 1 300); do echo $p.$i > f$i; done; mv f1 g1; rm f2) & done; wait
          find . -path './d*' -type f | wc -l
          cat d3/g1 d6/f300
          `,
        );
        assert.deepEqual(out.trim().split('\n'), ['1794', '3.1', '6.300']);
        assert.equal((await sh(`ls "${src}/d4" | wc -l`)).trim(), '299', 'the host directory holds what the tenant wrote');
      },
      ['--io', 'uring', '--no-kernel-passthrough'],
      undefined,
      INFO,
    ),
  );
  const n = served(daemon!);
  assert.ok(n.overIoUring! > 0.8 * n.requests, `${n.overIoUring} of ${n.requests} over io_uring`);
});

test('--io uring where the kernel has it switched off: a warning, and /dev/fuse serves', { skip: noFuseUring, timeout: 60000 }, async () => {
  let daemon: Daemon | undefined;
  await withFuseUring('N', () =>
    withMount(
      async (dir, d) => {
        daemon = d;
        assert.equal((await sh(`cd "${dir}" && seq 1 1000 > n && sha256sum n | cut -c1-16`)).trim(), (await sh('seq 1 1000 | sha256sum | cut -c1-16')).trim());
      },
      ['--io', 'uring'],
      INFO,
    ),
  );
  assert.match(daemon!.stderr(), /FUSE over io_uring is not enabled/);
  const n = served(daemon!);
  assert.equal(n.overIoUring, undefined);
  assert.ok(n.requests > 5);
});

test('a TOML config puts one device on io_uring and another on /dev/fuse reads, in one daemon', { skip: noFuseUring, timeout: 60000 }, async () => {
  const a = mkdtempSync(join(tmpdir(), 'dpfs-ring-'));
  const b = mkdtempSync(join(tmpdir(), 'dpfs-poll-'));
  const cfg = join(mkdtempSync(join(tmpdir(), 'dpfs-cfg-')), 'dpfs.toml');
  writeFileSync(
    cfg,
    `[log]
level = "info"

[[device]]
name = "ring"
transport = "fuse"
mount_point = "${a}"
io = "uring"
ring_depth = 2
[device.backend]
type = "memory"

[[device]]
name = "reads"
transport = "fuse"
mount_point = "${b}"
[device.backend]
type = "memory"
`,
  );
  await withFuseUring('Y', async () => {
    const d = startDaemon(['run', '-c', cfg], { DPFS_LOG: '' });
    try {
      await waitFor(() => isDpfsMount(a) && isDpfsMount(b), 'both mounts');
      // More writers than the ring has entries per CPU: the kernel queues the rest.
      const out = await sh(`for i in 1 2 3 4 5 6 7 8; do (seq 1 3000 > "${a}/f$i") & done; wait; cat "${a}"/f* | wc -l; cp "${a}/f1" "${b}/g"; wc -l < "${b}/g"`);
      assert.deepEqual(out.trim().split('\n'), ['24000', '3000']);
      d.child.kill('SIGTERM');
      assert.equal(await d.exited, 0);
    } finally {
      await stopDaemon(d, [a, b]);
    }
    const ended = endings(d);
    const ring = ended.find((e) => e.name === 'ring');
    const reads = ended.find((e) => e.name === 'reads');
    assert.ok(ring && ring.overIoUring! > 0.8 * ring.requests, JSON.stringify(ended));
    assert.ok(reads && reads.overIoUring === undefined && reads.requests > 0, JSON.stringify(ended));
    assert.match(d.stderr(), /"queues":\d+,"depth":2,"msg":"serving requests over io_uring"/);
  });
  for (const p of [a, b, join(cfg, '..')]) rmSync(p, { recursive: true, force: true });
});
