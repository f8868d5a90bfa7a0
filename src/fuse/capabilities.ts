/** Which INIT flags to ask for, from what the backend implements and the transport can do. */
import type { FileSystem } from '../fs/api.js';
import { InitFlag as F } from './opcodes.js';
import type { TransportInfo } from './session.js';

export function wantedFlags(fs: FileSystem, transport: TransportInfo): bigint {
  const caps = fs.capabilities ?? {};
  let flags =
    F.FUSE_ASYNC_READ |
    F.FUSE_ATOMIC_O_TRUNC |
    F.FUSE_BIG_WRITES |
    F.FUSE_AUTO_INVAL_DATA |
    F.FUSE_ASYNC_DIO |
    F.FUSE_PARALLEL_DIROPS |
    F.FUSE_MAX_PAGES |
    F.FUSE_HAS_IOCTL_DIR |
    F.FUSE_SETXATTR_EXT |
    F.FUSE_INIT_EXT |
    F.FUSE_CREATE_SUPP_GROUP |
    // Shared mmap of files opened with FOPEN_DIRECT_IO (sqlite WAL on a cache=never mount).
    F.FUSE_DIRECT_IO_ALLOW_MMAP;
  if (fs.setlk && fs.getlk) flags |= F.FUSE_POSIX_LOCKS | F.FUSE_FLOCK_LOCKS;
  if (fs.readdir && caps.readdirplus) flags |= F.FUSE_DO_READDIRPLUS | F.FUSE_READDIRPLUS_AUTO;
  if (caps.writebackCache) flags |= F.FUSE_WRITEBACK_CACHE;
  if (caps.cacheSymlinks) flags |= F.FUSE_CACHE_SYMLINKS;
  if (caps.handleKillpriv) flags |= F.FUSE_HANDLE_KILLPRIV_V2;
  if (caps.posixAcl && fs.getxattr && fs.setxattr) flags |= F.FUSE_POSIX_ACL;
  if (caps.appliesUmask) flags |= F.FUSE_DONT_MASK;
  // The kernel refuses passthrough opens on write-back cached mounts.
  if (caps.kernelPassthrough && transport.backing && !caps.writebackCache) flags |= F.FUSE_PASSTHROUGH;
  if (!fs.open) flags |= F.FUSE_NO_OPEN_SUPPORT;
  if (!fs.opendir) flags |= F.FUSE_NO_OPENDIR_SUPPORT;
  if (transport.virtiofs) flags |= F.FUSE_SUBMOUNTS;
  if (transport.ioUring) flags |= F.FUSE_OVER_IO_URING;
  return flags;
}
