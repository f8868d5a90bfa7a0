/**
 * Kernels without openat2 (before 5.6; DPU images still ship 5.4): the passthrough's
 * event-loop paths (lookups from the dentry cache, opens and creates by name on tmpfs) rely
 * on it and must give way to the pool, with the same results.
 */
import './helpers/no-openat2.js';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { Opcode } from '../src/fuse/opcodes.js';
import { sysNowStats } from '../src/native/syscalls.js';
import { withPassthrough } from './helpers/daemon.js';
import { withPassthroughPeer } from './helpers/passthrough-peer.js';
import { workloads } from './helpers/workloads.js';

for (const parent of [tmpdir(), '/dev/shm']) {
  test(`without openat2, over ${parent === '/dev/shm' ? 'tmpfs' : 'a disk file system'}: lookups, opens and creates take the pool and answer the same`, async () => {
    const src = mkdtempSync(join(parent, 'dpfs-src-'));
    writeFileSync(join(src, 'f'), 'x');
    try {
      await withPassthroughPeer(src, async (p) => {
        const before = sysNowStats.poolFallbacks;
        const f = await p.call(Opcode.FUSE_LOOKUP, 1, { name: 'f' });
        assert.equal(f.error, 0);
        assert.equal(Number(f.body.readBigUInt64LE(40)), statSync(join(src, 'f')).ino, 'the entry is the host inode');
        const again = await p.call(Opcode.FUSE_LOOKUP, 1, { name: 'f' });
        assert.equal(again.body.readBigUInt64LE(0), f.body.readBigUInt64LE(0), 'a second lookup finds the same node');
        const c = await p.call(Opcode.FUSE_CREATE, 1, { flags: 0o101, mode: 0o100644, umask: 0, name: 'g' });
        assert.equal(c.error, 0);
        assert.ok(statSync(join(src, 'g')).isFile());
        assert.ok(sysNowStats.poolFallbacks > before, 'the event-loop paths gave way to the pool');
      });
    } finally {
      rmSync(src, { recursive: true, force: true });
    }
  });
}

for (const name of Object.keys(workloads).filter((n) => /^(coreutils|tar|git)/.test(n))) {
  test(`without openat2, a passthrough mount over tmpfs: ${name}`, () => withPassthrough((dir) => workloads[name]!(dir), [], '/dev/shm', { DPFS_NO_OPENAT2: '1' }));
}
