/**
 * /dev/fuse serves big requests in its read buffer: one answered at once frees it, one still
 * in flight keeps it. Writes answered later (a slow backend) must land byte for byte while
 * other big requests are read meanwhile.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { MemoryFs } from '../src/backends/memory/memory-fs.js';
import { DevFuseDevice } from '../src/devices/devfuse/device.js';
import { sh } from './helpers/daemon.js';

test('big WRITEs answered later keep their data while the next requests are read', { timeout: 120000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'dpfs-bufs-'));
  const src = mkdtempSync(join(tmpdir(), 'dpfs-bufs-src-'));
  const fs = new MemoryFs();
  // Every other write waits a few ms before it copies the data: meanwhile more requests
  // arrive, and the buffer the waiting one came in must not be read into.
  const write = fs.write.bind(fs);
  let n = 0;
  let later = 0;
  (fs as unknown as { write: (...a: Parameters<typeof write>) => unknown }).write = (...a) => {
    if (n++ % 2 === 0) return write(...a);
    later++;
    return new Promise((resolve) => setTimeout(() => resolve(write(...a)), 3));
  };
  const dev = new DevFuseDevice({ mountPoint: dir, fs });
  await dev.start();
  try {
    for (let i = 0; i < 4; i++) writeFileSync(join(src, `s${i}`), randomBytes(8 << 20));
    // Four writers at once, 1 MiB requests (O_DIRECT: each write reaches the daemon as is).
    await sh(Array.from({ length: 4 }, (_, i) => `dd if="${src}/s${i}" of="${dir}/f${i}" bs=1M oflag=direct status=none &`).join(' ') + ' wait');
    // Compared by another process: this one serves the mount.
    for (let i = 0; i < 4; i++) assert.equal((await sh(`cmp "${src}/s${i}" "${dir}/f${i}" && echo same`)).trim(), 'same', `file ${i} byte for byte`);
    assert.ok(later >= 8, `writes answered later: ${later}`);
  } finally {
    await dev.stop();
    rmSync(dir, { recursive: true, force: true });
    rmSync(src, { recursive: true, force: true });
  }
});
