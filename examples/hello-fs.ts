/**
 * A minimal dpfs file system: one read-only file, /hello. Run it with
 *   node dist/examples/hello-fs.js /mnt/hello
 */
import { DevFuseDevice } from '../src/devices/devfuse/device.js';
import { type Attr, type DirSink, type FileSystem, type RequestContext, DirType } from '../src/fs/api.js';
import { Errno, fail } from '../src/fuse/errno.js';

const TEXT = Buffer.from('Hello from a TypeScript file system!\n');
const now = { sec: Math.floor(Date.now() / 1000), nsec: 0 };
const attr = (ino: number, mode: number, size: number): Attr => ({
  ino, mode, size, nlink: 1, uid: 0, gid: 0, rdev: 0, blksize: 4096, blocks: 0, atime: now, mtime: now, ctime: now,
});
const ROOT = attr(1, 0o040755, 0);
const HELLO = attr(2, 0o100444, TEXT.length);

export class HelloFs implements FileSystem {
  lookup(_ctx: RequestContext, parent: number, name: string) {
    if (parent !== 1 || name !== 'hello') fail(Errno.ENOENT);
    return { ino: 2, attr: HELLO, entryTimeout: 60, attrTimeout: 60 };
  }
  getattr(_ctx: RequestContext, ino: number) {
    if (ino === 1) return { attr: ROOT };
    if (ino === 2) return { attr: HELLO };
    fail(Errno.ENOENT);
  }
  readdir(_ctx: RequestContext, ino: number, _fh: number, offset: number, sink: DirSink) {
    const entries = [
      { name: '.', ino: 1, type: DirType.DT_DIR, offset: 1 },
      { name: '..', ino: 1, type: DirType.DT_DIR, offset: 2 },
      { name: 'hello', ino: 2, type: DirType.DT_REG, offset: 3 },
    ];
    if (ino !== 1) fail(Errno.ENOTDIR);
    for (const e of entries.slice(offset)) if (!sink.add(e)) break;
  }
  open(_ctx: RequestContext, ino: number, flags: number) {
    if ((flags & 3) !== 0) fail(Errno.EROFS);
    return { fh: ino };
  }
  read(_ctx: RequestContext, _ino: number, _fh: number, offset: number, size: number) {
    return TEXT.subarray(offset, offset + size);
  }
}

// Mount it when run directly; stop cleanly on Ctrl-C.
if (import.meta.url === `file://${process.argv[1]}`) {
  const dev = new DevFuseDevice({ mountPoint: process.argv[2] ?? '/mnt/hello', fs: new HelloFs() });
  await dev.start();
  process.once('SIGINT', () => void dev.stop());
  process.once('SIGTERM', () => void dev.stop());
}
