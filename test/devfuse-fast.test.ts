/**
 * /dev/fuse answers GETATTR of inodes the backend published, and LOOKUP of names absent from
 * directories it published in memory, in its read loop (native/fusedev.c), without the
 * session: the answers must be the host's attributes field by field, fresh after host-side
 * changes, absent names remembered exactly as long as the backend says, and none may come
 * from there where ids are mapped, every request is traced, or (LOOKUP) the kernel does not
 * check permissions itself.
 */
import assert from 'node:assert/strict';
import { appendFileSync, chmodSync, lstatSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { PassthroughFs, type PassthroughOptions } from '../src/backends/passthrough/passthrough-fs.js';
import { parseIdMap } from '../src/backends/passthrough/id-map.js';
import { DevFuseDevice } from '../src/devices/devfuse/device.js';
import { sh } from './helpers/daemon.js';

// ino size blocks mtime(s.ns) ctime(s.ns) mode(hex) nlink uid gid blksize: what GETATTR carries.
const FORMAT = '%i %s %b %.9Y %.9Z %f %h %u %g %o';

async function withMount(parent: string, opts: Partial<PassthroughOptions>, trace: boolean, body: (dir: string, src: string, dev: DevFuseDevice) => Promise<void>, defaultPermissions = true): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'dpfs-fast-'));
  const src = mkdtempSync(join(parent, 'dpfs-fast-src-'));
  // cache=never (unless told): attributes time out at once, so every stat asks the daemon.
  const fs = new PassthroughFs({ root: src, cache: 'never', ...opts });
  const dev = new DevFuseDevice({ mountPoint: dir, fs, trace, defaultPermissions });
  await dev.start();
  try {
    await body(dir, src, dev);
  } finally {
    await dev.stop();
    rmSync(dir, { recursive: true, force: true });
    rmSync(src, { recursive: true, force: true });
  }
}

/** The same fields from the host's own lstat, formatted as stat(1) does. */
function hostStat(path: string): string {
  const s = lstatSync(path, { bigint: true, throwIfNoEntry: true });
  const ns = (t: bigint) => `${t / 1_000_000_000n}.${String(t % 1_000_000_000n).padStart(9, '0')}`;
  return [s.ino, s.size, s.blocks, ns(s.mtimeNs), ns(s.ctimeNs), s.mode.toString(16), s.nlink, s.uid, s.gid, s.blksize].join(' ');
}

const NAMES = ['.', 'f', 'd', 'd/g'];

for (const [label, parent] of [['disk', tmpdir()], ['tmpfs', '/dev/shm']] as const) {
  test(`/dev/fuse (${label} source): GETATTRs of published inodes are answered in the read loop, as the host's lstat says`, { timeout: 60000 }, async () => {
    await withMount(parent, {}, false, async (dir, src, dev) => {
      writeFileSync(join(src, 'f'), 'x'.repeat(5000));
      mkdirSync(join(src, 'd'));
      writeFileSync(join(src, 'd', 'g'), '');
      symlinkSync('f', join(src, 'l'));
      const statAll = () => sh(NAMES.map((n) => `stat -c '${FORMAT}' "${dir}/${n}"`).join('; '));
      const compare = async (when: string) => {
        const got = (await statAll()).trim().split('\n');
        assert.deepEqual(got, NAMES.map((n) => hostStat(join(src, n === '.' ? '' : n))), when);
      };
      await compare('at first');
      // Changed on the host: the next GETATTR reads them afresh.
      appendFileSync(join(src, 'f'), 'more');
      chmodSync(join(src, 'd', 'g'), 0o751);
      writeFileSync(join(src, 'd', 'h'), 'y'); // the directory's times and size change
      await compare('after host-side changes');
      // Held open by a process: fstat asks by handle (FUSE_GETATTR_FH).
      const byFh = await sh(`exec 3<"${dir}/f"; stat -L -c '${FORMAT}' /dev/fd/3; exec 3<&-`);
      assert.equal(byFh.trim(), hostStat(join(src, 'f')), 'by handle');
      assert.ok(dev.served[0]! >= 3 * NAMES.length, `answered in the read loop: ${dev.served[0]}`);
      // The symlink's attributes are its own (never its target's).
      assert.equal((await sh(`stat -c '%F %s' "${dir}/l"`)).trim(), 'symbolic link 1');
    });
  });
}

test('/dev/fuse: no GETATTR is answered in the read loop where ids are mapped or requests are traced', { timeout: 60000 }, async () => {
  const map = { uidMap: parseIdMap('0:0:1,1000:2000:1'), gidMap: parseIdMap('0:0:1,1000:2000:1') };
  await withMount('/dev/shm', map, false, async (dir, src, dev) => {
    writeFileSync(join(src, 'f'), 'x');
    await sh(`chown 2000:2000 "${src}/f"`);
    for (let i = 0; i < 3; i++) assert.equal((await sh(`stat -c '%u:%g' "${dir}/f"`)).trim(), '1000:1000', 'mapped ids');
    assert.equal(dev.served[0], 0);
  });
  await withMount('/dev/shm', {}, true, async (dir, src, dev) => {
    writeFileSync(join(src, 'f'), 'x');
    for (let i = 0; i < 3; i++) assert.equal((await sh(`stat -c '%s' "${dir}/f"`)).trim(), '1');
    assert.equal(dev.served[0], 0, 'traced: the session sees every request');
  });
});

const exists = (path: string) => sh(`stat -c %s "${path}" 2>&1 || true`).then((o) => o.trim());

test('/dev/fuse (tmpfs source): LOOKUPs of absent names are answered in the read loop, remembered as long as the backend says', { timeout: 60000 }, async () => {
  // cache=auto: names (and their absence) are remembered for 1 s.
  await withMount('/dev/shm', { cache: 'auto' }, false, async (dir, src, dev) => {
    mkdirSync(join(src, 'd'));
    chmodSync(join(src, 'd'), 0o700);
    // d is not known yet (the backend's to look up), a is absent (answered here).
    assert.match(await exists(`${dir}/d/a`), /No such file/);
    assert.equal(dev.served[1], 1, 'answered in the read loop');
    writeFileSync(join(src, 'd', 'a'), 'abc');
    // Within the second the kernel keeps the negative entry; after it, the name is looked up again.
    assert.match(await exists(`${dir}/d/a`), /No such file/, 'remembered as absent');
    assert.equal(dev.served[1], 1);
    await new Promise((r) => setTimeout(r, 1200));
    // d is known now (answered here), a leads to an inode not known yet (the backend's).
    assert.equal(await exists(`${dir}/d/a`), '3', 'looked up again once the entry expired');
    assert.equal(dev.served[1], 2, 'a name leading to an inode not known yet is the backend\'s');
    await new Promise((r) => setTimeout(r, 1200));
    assert.equal(await exists(`${dir}/d/a`), '3');
    assert.equal(dev.served[1], 4, 'both known now');
    // The kernel refuses a caller that may not search the directory before asking anyone.
    assert.match(await sh(`setpriv --reuid=1000 --regid=1000 --clear-groups -- stat "${dir}/d/b" 2>&1 || true`), /Permission denied/);
    assert.equal(dev.served[1], 4);
    // Names the kernel would never send as one component cannot be asked at all; a long one
    // stops at the kernel too.
    assert.match(await exists(`${dir}/${'n'.repeat(256)}`), /File name too long/);
  }, );
  // After a run of names that lead to inodes not known yet (each asked here in vain, then
  // only one in 16), absent names are answered here again within 16 lookups.
  await withMount('/dev/shm', { cache: 'auto' }, false, async (dir, src, dev) => {
    for (let i = 0; i < 40; i++) writeFileSync(join(src, `e${i}`), '');
    await sh(`for i in $(seq 0 39); do stat "${dir}/e$i" >/dev/null; done`);
    const before = dev.served[1]!;
    await sh(`for i in $(seq 0 39); do stat "${dir}/x$i" 2>/dev/null || true; done`);
    assert.ok(dev.served[1]! - before >= 40 - 16, `absent names answered here again: ${dev.served[1]! - before} of 40`);
  });
  // cache=never: no negative entries; the answer is ENOENT and the next lookup asks again.
  await withMount('/dev/shm', {}, false, async (dir, src, dev) => {
    assert.match(await exists(`${dir}/a`), /No such file/);
    writeFileSync(join(src, 'a'), 'abcd');
    assert.equal(await exists(`${dir}/a`), '4', 'not remembered as absent');
    assert.equal(dev.served[1], 1);
  });
});

test('/dev/fuse: no LOOKUP is answered in the read loop on a disk file system or without the kernel\'s permission checks', { timeout: 60000 }, async () => {
  await withMount(tmpdir(), { cache: 'auto' }, false, async (dir, _src, dev) => {
    assert.match(await exists(`${dir}/a`), /No such file/);
    assert.equal(dev.served[1], 0, 'a disk file system: the backend asks the dentry cache');
  });
  await withMount('/dev/shm', { cache: 'auto' }, false, async (dir, _src, dev) => {
    assert.match(await exists(`${dir}/a`), /No such file/);
    assert.equal(dev.served[1], 0, 'no default_permissions: the backend asks as the caller');
  }, false);
});

test('/dev/fuse (tmpfs source): LOOKUPs leading to known inodes are answered in the read loop, with the host\'s attributes, and counted for FORGET', { timeout: 60000 }, async () => {
  const fs = { current: undefined as PassthroughFs | undefined };
  await withMount('/dev/shm', { cache: 'auto' }, false, async (dir, src, dev) => {
    for (const n of ['f', 'g']) writeFileSync(join(src, n), n.repeat(100));
    mkdirSync(join(src, 'd'));
    symlinkSync('f', join(src, 'l'));
    const names = ['f', 'g', 'd', 'l'];
    const statAll = () => sh(names.map((n) => `stat -c '${FORMAT}' "${dir}/${n}"`).join('; '));
    await statAll(); // first lookups: the backend's (the inodes become known)
    const before = dev.served[1]!;
    for (let round = 0; round < 3; round++) {
      await new Promise((r) => setTimeout(r, 1100)); // entries and attributes expire
      appendFileSync(join(src, 'f'), 'more'); // changed on the host meanwhile
      const got = (await statAll()).trim().split('\n');
      assert.deepEqual(got, names.map((n) => hostStat(join(src, n))), `round ${round}: the attributes the lookup brought`);
    }
    assert.ok(dev.served[1]! - before >= 3 * names.length, `answered in the read loop: ${dev.served[1]! - before}`);
    // The kernel forgets what it looked up, natively answered lookups included: held open by
    // a process, f stays usable across a cache drop; once nothing holds them, every inode
    // but the root is forgotten (none kept by a lookup counted twice, none dropped early).
    const holder = sh(`exec 3<"${dir}/f"; sleep 1.5; cat <&3 >/dev/null; stat -L -c %s /dev/fd/3`);
    await new Promise((r) => setTimeout(r, 300));
    await sh('echo 2 > /proc/sys/vm/drop_caches');
    assert.equal((await holder).trim(), String(100 + 3 * 4), 'an open file survives the drop');
    await sh('echo 2 > /proc/sys/vm/drop_caches');
    // FORGETs wait a turn of the read loop (or a millisecond): give them a moment.
    const passthrough = dev.options.fs as PassthroughFs;
    const until = Date.now() + 1000;
    while (passthrough.inodeCount > 1 && Date.now() < until) await new Promise((r) => setTimeout(r, 2));
    assert.equal(passthrough.inodeCount, 1, 'only the root is left');
    fs.current = dev.options.fs as PassthroughFs;
  });
});

test('/dev/fuse: RELEASEs and FORGETs held back for the request after them are served within milliseconds when none comes: every file closed, every inode forgotten', { timeout: 60000 }, async () => {
  await withMount('/dev/shm', { cache: 'auto' }, false, async (dir, _src, dev) => {
    const fs = dev.options.fs as PassthroughFs;
    const closed = async (what: string) => {
      const until = Date.now() + 1000;
      while (fs.openFiles > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 2));
      assert.equal(fs.openFiles, 0, what);
    };
    // One close and nothing after it: only the timer can serve the RELEASE.
    await sh(`exec 3>"${dir}/one"; exec 3>&-`);
    await closed('released without a request after it');
    // A create loop: each RELEASE waits for the next request, the last for the timer.
    await sh(`for i in $(seq 1 200); do : > "${dir}/f$i"; done`);
    await closed('all 200 released');
    // An unlink loop: each FORGET waits for the next request, the last for the timer.
    await sh(`rm -f "${dir}"/f*`);
    const until = Date.now() + 1000;
    while (fs.inodeCount > 2 && Date.now() < until) await new Promise((r) => setTimeout(r, 2));
    assert.equal(fs.inodeCount, 2, 'the root and "one" are left');
    // flock: the holder's close (a RELEASE with FLOCK_UNLOCK) lets the waiter in.
    const out = await sh(`flock "${dir}/one" sleep 0.3 & sleep 0.1; flock "${dir}/one" echo got; wait`);
    assert.equal(out.trim(), 'got');
    await closed('the lock holders released');
  });
});

test('/dev/fuse (tmpfs source): a root caller\'s UNLINK and RMDIR are answered in the read loop, errors too; other callers\', a read-only export\'s and a disk\'s are the backend\'s', { timeout: 60000 }, async () => {
  const as1000 = 'setpriv --reuid=1000 --regid=1000 --clear-groups --';
  await withMount('/dev/shm', { cache: 'auto' }, false, async (dir, src, dev) => {
    chmodSync(src, 0o755);
    mkdirSync(join(src, 'd'));
    chmodSync(join(src, 'd'), 0o1777);
    for (const n of ['a', 'b']) writeFileSync(join(src, 'd', n), n);
    mkdirSync(join(src, 'd', 'sub'));
    writeFileSync(join(src, 'd', 'sub', 'x'), 'x');
    await sh(`ls -la "${dir}/d" > /dev/null; ${as1000} touch "${dir}/d/mine"`);
    await sh(`rm "${dir}/d/a"`);
    assert.equal(dev.served[2], 1, 'answered in the read loop');
    assert.throws(() => lstatSync(join(src, 'd', 'a')), /ENOENT/);
    // The host's answer, whatever it is: a name the host removed meanwhile, a full directory.
    rmSync(join(src, 'd', 'b'));
    assert.match(await sh(`rm "${dir}/d/b" 2>&1 || true`), /No such file/);
    assert.equal(dev.served[2], 2);
    assert.match(await sh(`rmdir "${dir}/d/sub" 2>&1 || true`), /not empty/);
    assert.equal(dev.served[3], 1);
    await sh(`rm "${dir}/d/sub/x" && rmdir "${dir}/d/sub"`);
    assert.deepEqual([dev.served[2], dev.served[3]], [3, 2]);
    assert.throws(() => lstatSync(join(src, 'd', 'sub')), /ENOENT/);
    // Another caller: the backend removes the name as that caller.
    await sh(`${as1000} rm "${dir}/d/mine"`);
    assert.equal(dev.served[2], 3, 'the backend\'s');
    assert.throws(() => lstatSync(join(src, 'd', 'mine')), /ENOENT/);
  });
  for (const [parent, opts] of [['/dev/shm', { cache: 'auto', readOnly: true }], [tmpdir(), { cache: 'auto' }]] as const) {
    await withMount(parent, opts, false, async (dir, src, dev) => {
      writeFileSync(join(src, 'f'), 'f');
      const out = await sh(`rm "${dir}/f" 2>&1 || true`);
      if (opts.readOnly) assert.match(out, /Read-only/);
      assert.equal(dev.served[2], 0, opts.readOnly ? 'read-only: the backend refuses' : 'a disk: the backend\'s');
    });
  }
});
