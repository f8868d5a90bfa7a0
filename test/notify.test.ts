/** Kernel cache notifications through a real mount: inval entry/inode, store, retrieve, delete. */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { MemoryFs } from '../src/backends/memory/memory-fs.js';
import { DevFuseDevice } from '../src/devices/devfuse/device.js';
import { mountAt } from '../src/devices/devfuse/mounts.js';
import type { RequestContext } from '../src/fs/api.js';
import { sh } from './helpers/daemon.js';
import { noFuseUring, withFuseUring } from './helpers/fuse-uring.js';

const execFileP = promisify(execFile);
const root: RequestContext = { unique: 0n, uid: 0, gid: 0, pid: 0, groups: [], signal: new AbortController().signal, umask: 0 };

test('notifications change what the kernel has cached', () => notifications('poll'));

// Over io_uring the kernel's answer to a retrieve (NOTIFY_REPLY) arrives in a ring entry.
test('notifications with requests over io_uring', { skip: noFuseUring }, () => withFuseUring('Y', () => notifications('uring')));

async function notifications(io: 'poll' | 'uring'): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'dpfs-notify-'));
  // Long cache timeouts: without notifications the kernel would not look again for a minute.
  const fs = new MemoryFs({ cacheTimeout: 60 });
  const dev = new DevFuseDevice({ mountPoint: dir, fs, io });
  await dev.start();
  try {
    await sh(`printf 'hello world' > "${dir}/x" && stat -c %s "${dir}/x"`);
    const ino = fs.lookup(root, 1, 'x').ino;
    fs.forget(ino, 1);

    // Renamed behind the kernel's back: the cached name still resolves until invalidated.
    fs.rename(root, 1, 'x', 1, 'y', 0);
    assert.equal((await sh(`stat -c %s "${dir}/x"`)).trim(), '11', 'kernel still caches the old name');
    await dev.session.notifyInvalEntry(1, 'x');
    assert.equal((await sh(`stat "${dir}/x" 2>/dev/null || echo gone`)).trim(), 'gone');

    // Grown behind the kernel's back: cached attributes until inval_inode.
    assert.equal((await sh(`stat -c %s "${dir}/y"`)).trim(), '11');
    const h = fs.open(root, ino, 2);
    fs.write(root, ino, h.fh, 11, Buffer.from('!!!'), { flags: 2, writeFlags: 0 });
    assert.equal((await sh(`stat -c %s "${dir}/y"`)).trim(), '11');
    await dev.session.notifyInvalInode(ino, 0, 0);
    assert.equal((await sh(`stat -c %s "${dir}/y"`)).trim(), '14');

    // Store pushes data into the page cache; retrieve reads it back from there.
    await sh(`cat "${dir}/y" >/dev/null`);
    await dev.session.notifyStore(ino, 0, Buffer.from('HELLO'));
    const back = await dev.session.notifyRetrieve(ino, 0, 5);
    assert.equal(Buffer.from(back).toString(), 'HELLO');

    // Delete: the kernel drops the name and the dentry.
    fs.unlink(root, 1, 'y');
    await dev.session.notifyDelete(1, ino, 'y');
    assert.equal((await sh(`ls -A "${dir}" | wc -l`)).trim(), '0');
    fs.release(root, ino, h.fh, { flags: 0, flush: false, flockUnlock: false, lockOwner: 0n });
  } finally {
    await dev.stop();
    if (mountAt(dir)) await execFileP('umount', ['-l', dir]).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }
}
