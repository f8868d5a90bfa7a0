/** Creates a backend from its configuration. */
import type { BackendConfig } from '../config/schema.js';
import type { FileSystem } from '../fs/api.js';
import { MemoryFs } from './memory/memory-fs.js';

export const BACKEND_TYPES = ['memory'] as const;

export function createBackend(cfg: BackendConfig): FileSystem {
  switch (cfg.type) {
    case 'memory':
      return new MemoryFs({ capacity: cfg.capacity, maxInodes: cfg.max_inodes, cacheTimeout: cfg.cache_timeout });
  }
}
