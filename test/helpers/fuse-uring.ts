/** FUSE over io_uring in tests: the fuse module's switch, set for a test and restored. */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';

const PARAM = '/sys/module/fuse/parameters/enable_uring';

/** Test option `skip` for kernels without FUSE over io_uring. */
export const noFuseUring: false | string = existsSync(PARAM) ? false : 'this kernel has no FUSE over io_uring';

export async function withFuseUring(value: 'Y' | 'N', fn: () => Promise<void>): Promise<void> {
  const old = readFileSync(PARAM, 'utf8').trim();
  writeFileSync(PARAM, value);
  try {
    await fn();
  } finally {
    writeFileSync(PARAM, old);
  }
}
