/**
 * virtio-fs end to end: a Linux guest under QEMU mounts the vhost-user device and runs a
 * workload; results are checked in the guest's output and on the host. The same workload
 * against Debian's virtiofsd proves the test itself.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { MemoryFs } from '../src/backends/memory/memory-fs.js';
import { PassthroughFs } from '../src/backends/passthrough/passthrough-fs.js';
import { VhostUserFsDevice } from '../src/devices/vhost-user/device.js';
import { Req, encodeRequest, u64Payload } from '../src/devices/vhost-user/protocol.js';
import type { FileSystem } from '../src/fs/api.js';
import { native } from '../src/native/native.js';
import { findKernel, guestToolsAvailable, runGuest } from './helpers/guest.js';

const skip = guestToolsAvailable() ? false : 'needs qemu-system-x86, linux-image-amd64, busybox-static and cpio';
const VIRTIOFSD = '/usr/lib/qemu/virtiofsd';

// Runs in the guest (busybox sh) inside the mounted directory; prints "CHECK name value".
const WORKLOAD = `
set -e
mkdir -p tree/a/b/c
i=0; while [ $i -lt 500 ]; do echo "small file $i" > tree/a/b/c/f$i; i=$((i + 1)); done
dd if=/dev/urandom of=big bs=1M count=64 2>/dev/null
cp big big.copy
echo "CHECK big $(sha256sum big | cut -d' ' -f1)"
echo "CHECK copy $(sha256sum big.copy | cut -d' ' -f1)"
mv tree/a/b tree/moved
ln big hard && ln -s big soft
echo "CHECK links $(stat -c %h big) $(readlink soft)"
for w in 1 2 3 4; do ( j=0; while [ $j -lt 100 ]; do echo "writer $w line $j" >> log$w; j=$((j + 1)); done ) & done
wait
echo "CHECK logs $(cat log1 log2 log3 log4 | wc -l)"
echo "CHECK small $(ls tree/moved/c | wc -l) $(cat tree/moved/c/f499)"
echo "CHECK gone $(ls tree/a)"
rm big.copy
( umask 027 && mkdir masked && touch masked/f && mkfifo masked/p )
echo "CHECK umask" $(stat -c %a masked masked/f masked/p)
sync
echo "CHECK done"
`;

function checks(output: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of output.split('\n')) {
    const x = /^CHECK (\S+) ?(.*?)\r?$/.exec(line);
    if (x) m.set(x[1]!, x[2]!);
  }
  return m;
}

function assertWorkload(output: string): Map<string, string> {
  assert.match(output, /GUEST: mounted/, output.slice(-2000));
  assert.match(output, /GUEST: workload exit 0/, output.slice(-2000));
  assert.match(output, /GUEST: unmounted/);
  const c = checks(output);
  assert.equal(c.get('big')?.length, 64);
  assert.equal(c.get('copy'), c.get('big'), '64 MiB copy reads back identical');
  assert.equal(c.get('links'), '2 big');
  assert.equal(c.get('logs'), '400', 'four concurrent appenders, no lost lines');
  assert.equal(c.get('small'), '500 small file 499');
  assert.equal(c.get('gone'), '', 'renamed directory left its old parent empty');
  assert.equal(c.get('umask'), '750 640 640', 'the caller\'s umask applies (by the guest kernel or the backend)');
  assert.equal(c.get('done'), '');
  assert.doesNotMatch(output, /BUG|Oops|Call Trace|virtio.*error/i, 'no guest kernel errors');
  return c;
}

async function withDevice(fs: FileSystem, fn: (socket: string, dev: VhostUserFsDevice) => Promise<void>, requestQueues = 1, threads?: number): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'dpfs-vhost-'));
  const socket = join(dir, 'vfs.sock');
  const dev = new VhostUserFsDevice({ socketPath: socket, fs, requestQueues, threads });
  dev.start();
  try {
    await fn(socket, dev);
  } finally {
    await dev.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

test('a guest mounts the memory backend over virtio-fs (request queue on a queue thread) and runs the workload', { skip, timeout: 300000 }, async () => {
  await withDevice(
    new MemoryFs(),
    async (socket, dev) => {
    assert.equal(dev.queueThreads, 1);
    const r = await runGuest({ socket, tag: 'dpfs', workload: WORKLOAD, timeoutMs: 240000 });
    assert.equal(r.timedOut, false, r.output.slice(-2000));
    assertWorkload(r.output);
    assert.equal(dev.connection?.stats.badChains ?? 0, 0);
    // The VMM went away; a new one (a rebooted guest) connects to the same daemon and sees the data.
    const again = await runGuest({ socket, tag: 'dpfs', workload: 'echo "CHECK persisted $(cat log1 | wc -l)"\n', timeoutMs: 120000 });
    assert.equal(checks(again.output).get('persisted'), '100', again.output.slice(-2000));
    assert.equal(dev.connections, 2);
    },
    1,
    1,
  );
});

test('a guest mounts the passthrough backend; the host sees what it wrote', { skip, timeout: 300000 }, async () => {
  const src = mkdtempSync(join(tmpdir(), 'dpfs-vsrc-'));
  const umask = process.umask(); // the backend zeroes the process umask, as a daemon must
  try {
    await withDevice(new PassthroughFs({ root: src }), async (socket, dev) => {
      const r = await runGuest({ socket, tag: 'dpfs', workload: WORKLOAD, timeoutMs: 240000, cpus: 2, requestQueues: 1 });
      const c = assertWorkload(r.output);
      // Reading the 64 MiB file (checksums, cp) went from the host file into guest pages directly.
      assert.ok(dev.zeroCopyBytes >= 64 * 1024 * 1024, `zero-copy READ bytes: ${dev.zeroCopyBytes}`);
      const hostSum = createHash('sha256').update(readFileSync(join(src, 'big'))).digest('hex');
      assert.equal(hostSum, c.get('big'), 'the host file has the guest checksum');
      assert.equal(statSync(join(src, 'hard')).nlink, 2);
      assert.equal(readdirSync(join(src, 'tree/moved/c')).length, 500);
      assert.equal(existsSync(join(src, 'big.copy')), false);
      assert.equal(statSync(join(src, 'masked/f')).mode & 0o777, 0o640, 'the guest caller\'s umask on the host');
    });
  } finally {
    process.umask(umask);
    rmSync(src, { recursive: true, force: true });
  }
});

test('a guest with 2 vCPUs and 2 request queues on 2 queue threads, which serve its READs and WRITEs (passthrough; spread by kernels that do, 6.11+)', { skip, timeout: 300000 }, async () => {
  const src = mkdtempSync(join(tmpdir(), 'dpfs-vsrc-'));
  const umask = process.umask();
  try {
    await withDevice(
      new PassthroughFs({ root: src }),
      async (socket, dev) => {
        // Two writers, one per vCPU; then, with the guest's page cache dropped, every file read back.
        const work =
          'for c in 0 1; do taskset -c $c sh -c "i=0; while [ \\$i -lt 200 ]; do echo \\$i > f$c-\\$i; i=\\$((i + 1)); done" & done; wait; echo "CHECK files $(ls | wc -l)"\n' +
          'sync; echo 3 > /proc/sys/vm/drop_caches; echo "CHECK sum $(cat f0-* f1-* | md5sum | cut -c1-32)"\n';
        assert.equal(dev.queueThreads, 2); // one queue thread per request queue
        const r = await runGuest({ socket, tag: 'dpfs', workload: work, timeoutMs: 240000, cpus: 2, requestQueues: 2 });
        const c = checks(r.output);
        assert.equal(c.get('files'), '400', r.output.slice(-2000));
        const all = ['f0', 'f1'].flatMap((p) => readdirSync(src).filter((n) => n.startsWith(`${p}-`)).sort().map((n) => readFileSync(join(src, n))));
        assert.equal(all.length, 400);
        assert.equal(c.get('sum'), createHash('md5').update(Buffer.concat(all)).digest('hex'), 'what the guest read back is what the host holds');
        assert.equal(readFileSync(join(src, 'f1-123'), 'utf8'), '123\n');
        const here = dev.servedOn(1) + dev.servedOn(2);
        assert.ok(here >= 400, `READs and WRITEs served on the queue threads: ${here}`);
        const [, q1 = 0, q2 = 0] = dev.perQueue;
        assert.ok(q1 + q2 > 400, `requests per queue: ${dev.perQueue.join(', ')}`);
        // Older guest drivers (Debian 12's 6.1) send every request on the first request queue.
        const [major, minor] = (findKernel()!.vmlinuz.match(/vmlinuz-(\d+)\.(\d+)/) ?? []).slice(1).map(Number);
        if (major! > 6 || (major === 6 && minor! >= 11)) assert.ok(q1 > 50 && q2 > 50, `requests per queue: ${dev.perQueue.join(', ')}`);
      },
      2,
      2,
    );
  } finally {
    process.umask(umask);
    rmSync(src, { recursive: true, force: true });
  }
});

test('the same workload passes against virtiofsd (proves the test)', { skip: skip || (existsSync(VIRTIOFSD) ? false : 'no virtiofsd'), timeout: 300000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'dpfs-virtiofsd-'));
  const src = join(dir, 'src');
  execFileSync('mkdir', [src]);
  const socket = join(dir, 'vfs.sock');
  const d = spawn(VIRTIOFSD, [`--socket-path=${socket}`, '-o', `source=${src}`, '-o', 'cache=auto'], { stdio: 'ignore' });
  try {
    for (let i = 0; i < 100 && !existsSync(socket); i++) await new Promise((r) => setTimeout(r, 50));
    const r = await runGuest({ socket, tag: 'dpfs', workload: WORKLOAD, timeoutMs: 240000 });
    assertWorkload(r.output);
  } finally {
    d.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
});

/** Sends raw vhost-user bytes (no descriptors) and collects what comes back until close or timeout. */
function rawPeer(socket: string, send: Buffer[], waitMs = 300): Promise<{ data: Buffer; closed: boolean }> {
  return new Promise((resolve) => {
    const s = connect(socket);
    const chunks: Buffer[] = [];
    let closed = false;
    s.on('data', (d) => chunks.push(d));
    s.on('close', () => {
      closed = true;
    });
    s.on('error', () => undefined);
    s.on('connect', () => {
      for (const b of send) s.write(b);
      setTimeout(() => {
        s.destroy();
        resolve({ data: Buffer.concat(chunks), closed });
      }, waitMs);
    });
  });
}

test('hostile vhost-user peers lose their connection; the device keeps serving', async () => {
  await withDevice(new MemoryFs(), async (socket, dev) => {
    // A well-behaved query first.
    const ok = await rawPeer(socket, [encodeRequest(Req.GET_FEATURES, Buffer.alloc(0))]);
    assert.equal(ok.data.length, 20);
    assert.equal(ok.data.readUInt32LE(8), 8);
    const hostile: [string, Buffer][] = [
      ['absurd payload size', Buffer.from([1, 0, 0, 0, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f])],
      ['ring index out of range', encodeRequest(Req.SET_VRING_NUM, Buffer.from([99, 0, 0, 0, 0, 1, 0, 0]))],
      ['ring size not a power of two', encodeRequest(Req.SET_VRING_NUM, Buffer.from([0, 0, 0, 0, 3, 0, 0, 0]))],
      ['short payload', encodeRequest(Req.SET_FEATURES, Buffer.alloc(2))],
      ['memory table without descriptors', encodeRequest(Req.SET_MEM_TABLE, Buffer.concat([Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]), Buffer.alloc(32)]))],
      ['kick without descriptor nor NOFD flag', encodeRequest(Req.SET_VRING_KICK, u64Payload(0n))],
      ['memory table of 9 regions', encodeRequest(Req.SET_MEM_TABLE, Buffer.concat([Buffer.from([9, 0, 0, 0, 0, 0, 0, 0]), Buffer.alloc(32 * 9)]))],
    ];
    for (const [what, bytes] of hostile) {
      const r = await rawPeer(socket, [bytes]);
      assert.equal(r.closed, true, `${what}: connection closed`);
      assert.equal(dev.connection, undefined, `${what}: no connection left behind`);
    }
    // Out-of-order but valid requests are fine: GET_VRING_BASE of a ring never set up.
    const base = await rawPeer(socket, [encodeRequest(Req.GET_VRING_BASE, Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]))]);
    assert.equal(base.data.length, 20);
    const after = await rawPeer(socket, [encodeRequest(Req.GET_QUEUE_NUM, Buffer.alloc(0))]);
    assert.equal(after.data.readBigUInt64LE(12), 2n, 'hiprio + 1 request queue');
  });
});

test('a memory region larger than its file is refused (touching it would fault the daemon)', async () => {
  await withDevice(new MemoryFs(), async (socket, dev) => {
    const memfd = native().memfdCreate('small-guest', 4096);
    const sock = native().connectUnix(socket);
    try {
      const table = Buffer.alloc(8 + 32);
      table.writeUInt32LE(1, 0);
      table.writeBigUInt64LE(0n, 8); // guest-physical address
      table.writeBigUInt64LE(1n << 20n, 16); // 1 MiB claimed...
      table.writeBigUInt64LE(0x7f0000000000n, 24); // VMM address
      table.writeBigUInt64LE(0n, 32); // ...of a 4 KiB file
      native().sendMsg(sock, encodeRequest(Req.SET_MEM_TABLE, table), [memfd]);
      let closed = false;
      for (let i = 0; i < 50 && !closed; i++) {
        await new Promise((r) => setTimeout(r, 20));
        closed = native().recvMsg(sock, Buffer.alloc(64))?.n === 0;
      }
      assert.ok(closed, 'connection closed');
      assert.equal(dev.connection, undefined);
    } finally {
      closeSync(sock);
      closeSync(memfd);
    }
    const after = await rawPeer(socket, [encodeRequest(Req.GET_QUEUE_NUM, Buffer.alloc(0))]);
    assert.equal(after.data.readBigUInt64LE(12), 2n, 'still serving');
  });
});
