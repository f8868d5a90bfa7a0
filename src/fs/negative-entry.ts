import type { Attr, Entry } from './api.js';

const NO_TIME = { sec: 0, nsec: 0 };
const NO_ATTR: Attr = { ino: 0, size: 0, blocks: 0, atime: NO_TIME, mtime: NO_TIME, ctime: NO_TIME, mode: 0, nlink: 0, uid: 0, gid: 0, rdev: 0, blksize: 0 };

/**
 * The answer to a LOOKUP of a name that does not exist, which the kernel keeps as a negative
 * dentry for `seconds` (0: not at all, as ENOENT): node id 0, no attributes, no reference.
 */
export function negativeEntry(seconds: number): Entry {
  return { ino: 0, attr: NO_ATTR, entryTimeout: seconds, attrTimeout: 0 };
}
