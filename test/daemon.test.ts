/** The daemon as an operator sees it: signals, stale mounts, configs, device listing, self-access. */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { type AddressInfo, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { mountAt } from '../src/devices/devfuse/mounts.js';
import { FuseClient } from '../src/harness/fuse-client.js';
import { GuestDriver } from '../src/harness/guest-driver.js';
import { CLI, isDpfsMount, sh, startDaemon, startDaemonScript, stopDaemon, waitFor, withPassthrough } from './helpers/daemon.js';

const execFileP = promisify(execFile);

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'dpfs-daemon-'));
}

async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await execFileP(process.execPath, [CLI, ...args], { timeout: 30000 });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

test('SIGTERM unmounts cleanly and the daemon exits 0', async () => {
  const dir = tempDir();
  const d = startDaemon(['mount', dir]);
  try {
    await waitFor(() => isDpfsMount(dir), 'mount');
    await sh(`echo hi > "${dir}/f" && cat "${dir}/f"`);
    d.child.kill('SIGTERM');
    assert.equal(await d.exited, 0, d.stderr());
    assert.equal(mountAt(dir), undefined, 'nothing left mounted');
  } finally {
    await stopDaemon(d, [dir]);
    rmSync(dir, { recursive: true, force: true });
  }
});

test('SIGTERM while a process still uses the mount: lazy unmount, daemon still exits', async () => {
  const dir = tempDir();
  const d = startDaemon(['mount', dir]);
  let holder: ReturnType<typeof startDaemon>['child'] | undefined;
  try {
    await waitFor(() => isDpfsMount(dir), 'mount');
    holder = execFile('bash', ['-c', `cd "${dir}" && exec sleep 30`]);
    await new Promise((r) => setTimeout(r, 300));
    d.child.kill('SIGTERM');
    assert.equal(await d.exited, 0, d.stderr());
    assert.equal(mountAt(dir), undefined);
  } finally {
    holder?.kill('SIGKILL');
    await stopDaemon(d, [dir]);
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a stale mount left by a killed daemon is recovered on the next start', async () => {
  const dir = tempDir();
  const first = startDaemon(['mount', dir]);
  let second: ReturnType<typeof startDaemon> | undefined;
  try {
    await waitFor(() => isDpfsMount(dir), 'first mount');
    first.child.kill('SIGKILL');
    await first.exited;
    assert.throws(() => statSync(dir), /ENOTCONN/, 'the dead daemon left a stale mount');
    second = startDaemon(['mount', dir]);
    await waitFor(() => {
      try {
        statSync(dir);
        return isDpfsMount(dir);
      } catch {
        return false;
      }
    }, 'second mount');
    assert.equal((await sh(`echo again > "${dir}/f" && cat "${dir}/f"`)).trim(), 'again');
  } finally {
    await stopDaemon(first, [dir]);
    if (second) await stopDaemon(second, [dir]);
    rmSync(dir, { recursive: true, force: true });
  }
});

test('refuses to mount over a live dpfs mount', async () => {
  const dir = tempDir();
  const a = startDaemon(['mount', dir]);
  try {
    await waitFor(() => isDpfsMount(dir), 'mount');
    const b = await cli(['mount', dir]);
    assert.equal(b.code, 1);
    assert.match(b.stderr, /already a live FUSE mount/);
  } finally {
    await stopDaemon(a, [dir]);
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the daemon process may use its own mount without deadlocking', async () => {
  const dir = tempDir();
  const script = `
    import { DevFuseDevice } from ${JSON.stringify(join(CLI, '..', '..', 'devices', 'devfuse', 'device.js'))};
    import { MemoryFs } from ${JSON.stringify(join(CLI, '..', '..', 'backends', 'memory', 'memory-fs.js'))};
    import { promises as fsp } from 'node:fs';
    const dev = new DevFuseDevice({ mountPoint: ${JSON.stringify(dir)}, fs: new MemoryFs() });
    await dev.start();
    const ops = [];
    for (let i = 0; i < 50; i++) ops.push(fsp.writeFile(${JSON.stringify(dir)} + '/f' + i, 'x'.repeat(i * 1000)));
    await Promise.all(ops);
    const names = await fsp.readdir(${JSON.stringify(dir)});
    const big = await fsp.readFile(${JSON.stringify(dir)} + '/f49');
    await dev.stop();
    console.log(names.length, big.length);
  `;
  try {
    const r = await execFileP(process.execPath, ['--input-type=module', '-e', script], { timeout: 30000 });
    assert.equal(r.stdout.trim(), '50 49000');
  } finally {
    if (mountAt(dir)) await execFileP('umount', ['-l', dir]).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }
});

test('dpfs run -c serves every device in a TOML file', async () => {
  const a = tempDir();
  const b = tempDir();
  const cfg = join(tempDir(), 'dpfs.toml');
  writeFileSync(
    cfg,
    `
[log]
level = "warn"

[[device]]
name = "alpha"
transport = "fuse"
mount_point = "${a}"
[device.backend]
type = "memory"
capacity = "64MiB"

[[device]]
name = "beta"
transport = "fuse"
mount_point = "${b}"
readers = 2
[device.backend]
type = "memory"
`,
  );
  const d = startDaemon(['run', '-c', cfg]);
  try {
    await waitFor(() => isDpfsMount(a) && isDpfsMount(b), 'both mounts');
    const out = await sh(`echo A > "${a}/x"; echo B > "${b}/x"; cat "${a}/x" "${b}/x"; df -B1M --output=size "${a}" | tail -1`);
    assert.deepEqual(out.trim().split(/\s+/), ['A', 'B', '64']);
    d.child.kill('SIGINT');
    assert.equal(await d.exited, 0);
    assert.ok(!mountAt(a) && !mountAt(b));
  } finally {
    await stopDaemon(d, [a, b]);
    for (const p of [a, b, join(cfg, '..')]) rmSync(p, { recursive: true, force: true });
  }
});

test('config errors name the bad key and the allowed values', async () => {
  const dir = tempDir();
  const cases: [string, RegExp][] = [
    ['[[device]]\nname="x"\ntransport="carrier-pigeon"\n', /device\[0\]\.transport: must be one of "fuse"/],
    ['[[device]]\nname="x"\ntransport="fuse"\nmount_point="/mnt"\n[device.backend]\ntype="floppy"\n', /device\[0\]\.backend\.type: must be one of "memory"/],
    ['[[device]]\nname="x"\ntransport="fuse"\nmount_point="/mnt"\nbogus=1\n[device.backend]\ntype="memory"\n', /device\[0\]: unknown key "bogus"/],
    ['[[device]]\nname="x"\ntransport="fuse"\nmount_point="rel"\n[device.backend]\ntype="memory"\ncapacity="lots"\n', /mount_point: must be an absolute path[\s\S]*capacity: not a size/],
    ['[log]\nlevel="chatty"\n[[device]]\nname="x"\ntransport="fuse"\nmount_point="/m"\n[device.backend]\ntype="memory"\n', /log\.level: "chatty" is not allowed; use one of "trace"/],
    ['[metrics]\nlisten="everywhere"\n[[device]]\nname="x"\ntransport="fuse"\nmount_point="/m"\n[device.backend]\ntype="memory"\n', /metrics\.listen: must be host:port/],
    ['[daemon]\nbusy_poll_us=5000\n[[device]]\nname="x"\ntransport="fuse"\nmount_point="/m"\n[device.backend]\ntype="memory"\n', /daemon\.busy_poll_us: .*1000/],
    ['this is = not toml [', /invalid TOML/],
    ['', /device: required/],
  ];
  try {
    for (const [text, re] of cases) {
      const f = join(dir, 'c.toml');
      writeFileSync(f, text);
      const r = await cli(['run', '-c', f]);
      assert.equal(r.code, 2, text);
      assert.match(r.stderr, re);
    }
    const ok = join(dir, 'ok.toml');
    writeFileSync(ok, '[[device]]\nname="x"\ntransport="fuse"\nmount_point="/mnt/x"\n[device.backend]\ntype="memory"\n');
    const r = await cli(['run', '-c', ok, '--check']);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /ok \(1 device\)/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('dpfs devices reports /dev/fuse and vhost-user-fs as usable here', async () => {
  const r = await cli(['devices', '--json']);
  assert.equal(r.code, 0);
  const rows = JSON.parse(r.stdout) as { transport: string; usable: boolean }[];
  assert.equal(rows.find((x) => x.transport.startsWith('fuse'))?.usable, true);
  assert.equal(rows.find((x) => x.transport.startsWith('vhost-user'))?.usable, true);
  assert.ok(rows.some((x) => x.transport === 'io_uring'));
  assert.ok(rows.some((x) => x.transport.startsWith('DPU')));
});

test('dpfs fuzz runs its cases against a daemon it starts and stops, and refuses a socket that is not there', async () => {
  const r = await cli(['fuzz', '--cases', '120', '--seed', '9', '-b', 'null']);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /^120 cases from seed 9 in [\d.]+ s: \d+ reconnects, 0 failures$/m);
  const dir = tempDir();
  try {
    const bad = await cli(['fuzz', join(dir, 'none.sock'), '--cases', '1']);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /no device socket at .*none\.sock/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** A TCP port free on loopback just now. */
async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address() as AddressInfo;
  await new Promise((r) => srv.close(r));
  return port;
}

/** Metric lines as a map from "name{labels}" to value. */
async function scrape(port: number): Promise<Map<string, number>> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  assert.equal(res.status, 200);
  const out = new Map<string, number>();
  for (const line of (await res.text()).split('\n')) {
    const m = /^(\S+) (\S+)$/.exec(line);
    if (m && !line.startsWith('#')) out.set(m[1]!, Number(m[2]));
  }
  return out;
}

test('--metrics exports requests, errors and latency per opcode of the device, in Prometheus form', async () => {
  const dir = tempDir();
  const port = await freePort();
  const d = startDaemon(['mount', dir, '--metrics', `127.0.0.1:${port}`]);
  try {
    await waitFor(() => isDpfsMount(dir), 'mount');
    await sh(`mkdir "${dir}/a" "${dir}/b" && touch "${dir}/a/f" && (rmdir "${dir}/a" 2>/dev/null || true)`);
    // Requests that follow their predecessors' replies closely (one open: LOOKUP, CREATE,
    // ...): the loop's spin before sleeping (on by default) catches some.
    await sh(`for i in $(seq 100); do echo x > "${dir}/b/f$i"; done`);
    const m = await scrape(port);
    assert.ok(m.get('dpfs_busy_poll_waits_total{result="caught"}')! > 0, 'busy polling caught requests');
    assert.ok(m.get('dpfs_busy_poll_seconds_total')! > 0);
    const op = (name: string, o: string) => m.get(`${name}{device="cli",op="${o}"}`);
    assert.equal(m.get('dpfs_device_info{device="cli",transport="fuse",backend="memory"}'), 1);
    assert.equal(op('dpfs_requests_total', 'FUSE_MKDIR'), 2);
    assert.equal(op('dpfs_requests_total', 'FUSE_RMDIR'), 1);
    assert.equal(op('dpfs_request_errors_total', 'FUSE_RMDIR'), 1, 'ENOTEMPTY');
    assert.equal(op('dpfs_request_errors_total', 'FUSE_MKDIR'), 0);
    // The histogram: cumulative buckets ending in +Inf at the count, and a plausible sum.
    const buckets = [...m].filter(([k]) => k.startsWith('dpfs_request_duration_seconds_bucket{device="cli",op="FUSE_MKDIR"')).map(([, v]) => v);
    assert.ok(buckets.length > 10);
    assert.ok(buckets.every((v, i) => i === 0 || v >= buckets[i - 1]!), 'cumulative');
    assert.equal(buckets.at(-1), 2);
    assert.equal(op('dpfs_request_duration_seconds_count', 'FUSE_MKDIR'), 2);
    const sum = op('dpfs_request_duration_seconds_sum', 'FUSE_MKDIR')!;
    assert.ok(sum > 0 && sum < 5, `sum ${sum}`);
    assert.equal(m.get('dpfs_requests_in_flight{device="cli"}'), 0);
    assert.ok(m.get('dpfs_memory_inodes{device="cli"}')! >= 3, 'the backend\'s own values: root, a, b, a/f');
    assert.equal(m.get('dpfs_memory_capacity_bytes{device="cli"}'), 16 * 1024 ** 3);
    assert.ok((m.get('dpfs_process_cpu_seconds_total') ?? 0) > 0, 'process metrics too');
    assert.equal((await fetch(`http://127.0.0.1:${port}/other`)).status, 404);
  } finally {
    await stopDaemon(d, [dir]);
    rmSync(dir, { recursive: true, force: true });
  }
});

test('--metrics on a vhost-user device: its counters before and after a VMM connects', async () => {
  const dir = tempDir();
  const port = await freePort();
  const socket = join(dir, 'vfs.sock');
  const d = startDaemon(['vhost-user', socket, '-b', 'null', '--metrics', `127.0.0.1:${port}`, '--busy-poll', '0']);
  try {
    await waitFor(() => existsSync(socket), 'device socket');
    let m = await scrape(port);
    assert.equal(m.get('dpfs_virtio_connections_total{device="cli"}'), 0);
    assert.equal(m.get('dpfs_virtio_connected{device="cli"}'), 0);
    const r = await cli(['fuzz', socket, '--cases', '30', '--seed', '3']);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    m = await scrape(port);
    assert.ok(m.get('dpfs_virtio_connections_total{device="cli"}')! >= 1);
    assert.ok(m.get('dpfs_requests_total{device="cli",op="FUSE_GETATTR"}')! >= 30, 'the fuzzer checks the device after every case');
    assert.ok(m.get('dpfs_virtio_queue_requests_total{device="cli",queue="1"}')! >= 30);
    assert.equal(m.get('dpfs_busy_poll_waits_total{result="caught"}')! + m.get('dpfs_busy_poll_waits_total{result="missed"}')!, 0, '--busy-poll 0: never spins');
  } finally {
    await stopDaemon(d, []);
    rmSync(dir, { recursive: true, force: true });
  }
});

test('--metrics counts the READs and WRITEs queue threads serve themselves', async () => {
  const dir = tempDir();
  const src = join(dir, 'src');
  mkdirSync(src);
  const port = await freePort();
  const socket = join(dir, 'vfs.sock');
  const d = startDaemon(['vhost-user', socket, '-b', 'passthrough', '-s', src, '-t', '1', '--metrics', `127.0.0.1:${port}`]);
  try {
    await waitFor(() => existsSync(socket), 'device socket');
    const drv = new GuestDriver({ socket, depth: 4, queueSize: 64, slotBytes: 64 * 1024 });
    try {
      await drv.connect();
      const c = new FuseClient(drv);
      await c.init();
      const { ino, fh } = await c.create(1, 'f', 0o100644, 2);
      for (let i = 0; i < 10; i++) assert.equal((await c.write(ino, fh, i * 4096, Buffer.alloc(4096, i))).error, 0);
      for (let i = 0; i < 10; i++) assert.ok((await c.read(ino, fh, i * 4096, 4096)).body.equals(Buffer.alloc(4096, i)));
      const m = await scrape(port);
      assert.ok(m.get('dpfs_requests_total{device="cli",op="FUSE_WRITE"}')! >= 10);
      assert.ok(m.get('dpfs_requests_total{device="cli",op="FUSE_READ"}')! >= 10);
      assert.ok(m.get('dpfs_virtio_queue_requests_total{device="cli",queue="1"}')! >= 22, 'INIT, CREATE, and the reads and writes');
      // The queue thread's own busy polling (refreshed every second): requests one after the
      // other make it spin before some of its waits, caught or not (how many are caught
      // depends on the machine's timing; that the thread's counts reach the scrape does not).
      let spins = 0;
      for (let i = 0; i < 40 && !(spins > 0); i++) {
        for (let j = 0; j < 20; j++) await c.read(ino, fh, (j % 10) * 4096, 4096);
        await new Promise((r) => setTimeout(r, 100));
        const now = await scrape(port);
        spins = (now.get('dpfs_queue_threads_busy_poll_waits_total{device="cli",result="caught"}') ?? 0) + (now.get('dpfs_queue_threads_busy_poll_waits_total{device="cli",result="missed"}') ?? 0);
      }
      assert.ok(spins > 0, 'the queue thread\'s spins are exported');
    } finally {
      drv.close();
    }
  } finally {
    await stopDaemon(d, []);
    rmSync(dir, { recursive: true, force: true });
  }
});

test('--debug logs every request and reply', async () => {
  const dir = tempDir();
  const d = startDaemon(['mount', dir, '--debug']);
  try {
    await waitFor(() => isDpfsMount(dir), 'mount');
    await sh(`mkdir "${dir}/dbg"`);
    await waitFor(() => /"op":"FUSE_MKDIR".*"msg":"reply"/.test(d.stderr()), 'trace of MKDIR');
    assert.match(d.stderr(), /"op":"FUSE_MKDIR".*"args":\{"mode":\d+,"umask":\d+,"name":"dbg"\}/);
  } finally {
    await stopDaemon(d, [dir]);
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the kernel sends FLUSH once at most: backends with nothing to flush answer ENOSYS', async () => {
  const dir = tempDir();
  const d = startDaemon(['mount', dir, '--debug']);
  try {
    await waitFor(() => isDpfsMount(dir), 'mount');
    await sh(`for i in 1 2 3 4 5 6; do echo $i > "${dir}/f$i"; cat "${dir}/f$i" > /dev/null; done`);
    await waitFor(() => (d.stderr().match(/"op":"FUSE_RELEASE"[^\n]*"msg":"request"/g) ?? []).length >= 12, 'releases of 12 closes');
    const flushes = (d.stderr().match(/"op":"FUSE_FLUSH"[^\n]*"msg":"request"/g) ?? []).length;
    assert.equal(flushes, 1, 'one FLUSH, answered ENOSYS, then none');
  } finally {
    await stopDaemon(d, [dir]);
    rmSync(dir, { recursive: true, force: true });
  }
});

const lookupsOf = (log: string, name: string) => (log.match(new RegExp(`"op":"FUSE_LOOKUP"[^\\n]*"name":"${name}"[^\\n]*"msg":"request"`, 'g')) ?? []).length;

test('a missing name is remembered by the kernel for the entry timeout, and found once it exists', async () => {
  const dir = tempDir();
  const d = startDaemon(['mount', dir, '--debug']);
  try {
    await waitFor(() => isDpfsMount(dir), 'mount');
    await sh(`for i in 1 2 3; do stat "${dir}/missing" 2>/dev/null && exit 1; done; true`);
    assert.equal(lookupsOf(d.stderr(), 'missing'), 1, 'one LOOKUP, then the negative entry');
    assert.equal((await sh(`touch "${dir}/missing" && stat -c %s "${dir}/missing"`)).trim(), '0');
  } finally {
    await stopDaemon(d, [dir]);
    rmSync(dir, { recursive: true, force: true });
  }
  // The passthrough's host may create the name itself: it shows once the timeout (1 s) passed;
  // with cache=never nothing is remembered.
  for (const cache of ['auto', 'never']) {
    await withPassthrough(
      async (mnt, src, pd) => {
        await sh(`stat "${mnt}/late" 2>/dev/null && exit 1; stat "${mnt}/late" 2>/dev/null && exit 1; true`);
        assert.equal(lookupsOf(pd.stderr(), 'late'), cache === 'never' ? 2 : 1, `cache=${cache}`);
        writeFileSync(join(src, 'late'), 'from the host');
        if (cache !== 'never') await new Promise((r) => setTimeout(r, 1200));
        assert.equal((await sh(`cat "${mnt}/late"`)).trim(), 'from the host');
      },
      ['--debug', '--cache', cache],
    );
  }
});

test('the README example file system mounts and serves its file', async () => {
  const dir = tempDir();
  const d = startDaemonScript(join(CLI, '..', '..', '..', 'examples', 'hello-fs.js'), [dir]);
  try {
    await waitFor(() => mountAt(dir)?.fstype === 'fuse.dpfs', 'hello mount');
    const out = await sh(`ls "${dir}" && cat "${dir}/hello" && (echo x > "${dir}/hello" 2>/dev/null && echo LEAK || echo read-only)`);
    assert.deepEqual(out.trim().split('\n'), ['hello', 'Hello from a TypeScript file system!', 'read-only']);
  } finally {
    await stopDaemon(d, [dir]);
    rmSync(dir, { recursive: true, force: true });
  }
});
