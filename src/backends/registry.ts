/** Creates a backend from its configuration. */
import type { BackendConfig } from '../config/schema.js';
import type { FileSystem } from '../fs/api.js';
import { MemoryFs } from './memory/memory-fs.js';
import { NullFs } from './null/null-fs.js';
import { PassthroughFs } from './passthrough/passthrough-fs.js';

export const BACKEND_TYPES = ['memory', 'passthrough', 'null'] as const;

export function createBackend(cfg: BackendConfig): FileSystem {
  switch (cfg.type) {
    case 'memory':
      return new MemoryFs({ capacity: cfg.capacity, maxInodes: cfg.max_inodes, cacheTimeout: cfg.cache_timeout });
    case 'null':
      return new NullFs();
    case 'passthrough':
      return new PassthroughFs({
        root: cfg.root,
        cache: cfg.cache,
        writeback: cfg.writeback,
        directIo: cfg.direct_io,
        xattr: cfg.xattr,
        readOnly: cfg.read_only,
        uidMap: cfg.uid_map,
        gidMap: cfg.gid_map,
        maxFds: cfg.max_fds,
        kernelPassthrough: cfg.kernel_passthrough,
      });
  }
}
