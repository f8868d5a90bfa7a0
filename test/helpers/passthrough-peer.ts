/** An in-process passthrough backend behind a SessionPeer, for tests that speak FUSE to it directly. */
import assert from 'node:assert/strict';
import { PassthroughFs, type PassthroughOptions } from '../../src/backends/passthrough/passthrough-fs.js';
import { SessionPeer } from './session-peer.js';

/**
 * Serves `root` to `fn` through a peer that has done INIT. The backend zeroes the process
 * umask, as a daemon must; the test process gets its own back afterwards (the daemons and
 * programs later tests start inherit it).
 */
export async function withPassthroughPeer(root: string, fn: (p: SessionPeer) => Promise<void>, opts: Omit<PassthroughOptions, 'root'> = {}): Promise<void> {
  const umask = process.umask();
  const fs = new PassthroughFs({ root, ...opts });
  try {
    const p = new SessionPeer(fs);
    assert.equal((await p.init()).error, 0);
    await fn(p);
  } finally {
    process.umask(umask);
    await fs.destroy();
  }
}
