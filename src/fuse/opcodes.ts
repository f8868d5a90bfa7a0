/** FUSE opcodes and flag bits, named as in the kernel's include/uapi/linux/fuse.h (protocol 7.45). */

export const FUSE_KERNEL_VERSION = 7;
export const FUSE_KERNEL_MINOR_VERSION = 45;
/** Oldest kernel protocol minor this implementation speaks (Linux 2.6.31+). */
export const FUSE_MIN_MINOR_VERSION = 12;
export const FUSE_ROOT_ID = 1;

export enum Opcode {
  FUSE_LOOKUP = 1,
  FUSE_FORGET = 2,
  FUSE_GETATTR = 3,
  FUSE_SETATTR = 4,
  FUSE_READLINK = 5,
  FUSE_SYMLINK = 6,
  FUSE_MKNOD = 8,
  FUSE_MKDIR = 9,
  FUSE_UNLINK = 10,
  FUSE_RMDIR = 11,
  FUSE_RENAME = 12,
  FUSE_LINK = 13,
  FUSE_OPEN = 14,
  FUSE_READ = 15,
  FUSE_WRITE = 16,
  FUSE_STATFS = 17,
  FUSE_RELEASE = 18,
  FUSE_FSYNC = 20,
  FUSE_SETXATTR = 21,
  FUSE_GETXATTR = 22,
  FUSE_LISTXATTR = 23,
  FUSE_REMOVEXATTR = 24,
  FUSE_FLUSH = 25,
  FUSE_INIT = 26,
  FUSE_OPENDIR = 27,
  FUSE_READDIR = 28,
  FUSE_RELEASEDIR = 29,
  FUSE_FSYNCDIR = 30,
  FUSE_GETLK = 31,
  FUSE_SETLK = 32,
  FUSE_SETLKW = 33,
  FUSE_ACCESS = 34,
  FUSE_CREATE = 35,
  FUSE_INTERRUPT = 36,
  FUSE_BMAP = 37,
  FUSE_DESTROY = 38,
  FUSE_IOCTL = 39,
  FUSE_POLL = 40,
  FUSE_NOTIFY_REPLY = 41,
  FUSE_BATCH_FORGET = 42,
  FUSE_FALLOCATE = 43,
  FUSE_READDIRPLUS = 44,
  FUSE_RENAME2 = 45,
  FUSE_LSEEK = 46,
  FUSE_COPY_FILE_RANGE = 47,
  FUSE_SETUPMAPPING = 48,
  FUSE_REMOVEMAPPING = 49,
  FUSE_SYNCFS = 50,
  FUSE_TMPFILE = 51,
  FUSE_STATX = 52,
  FUSE_COPY_FILE_RANGE_64 = 53,
  CUSE_INIT = 4096,
}

/** FUSE_INIT as a big-endian peer would send it: lets us name the problem. */
export const FUSE_INIT_BSWAP_RESERVED = 436207616;
export const CUSE_INIT_BSWAP_RESERVED = 1048576;

export enum NotifyCode {
  FUSE_NOTIFY_POLL = 1,
  FUSE_NOTIFY_INVAL_INODE = 2,
  FUSE_NOTIFY_INVAL_ENTRY = 3,
  FUSE_NOTIFY_STORE = 4,
  FUSE_NOTIFY_RETRIEVE = 5,
  FUSE_NOTIFY_DELETE = 6,
  FUSE_NOTIFY_RESEND = 7,
  FUSE_NOTIFY_INC_EPOCH = 8,
  FUSE_NOTIFY_PRUNE = 9,
}

export function opcodeName(op: number): string {
  return Opcode[op] ?? `UNKNOWN(${op})`;
}

/** INIT flags (bits 0..31 in `flags`, 32..63 in `flags2`), kept as bigint so all 64 bits are one value. */
export const InitFlag = {
  FUSE_ASYNC_READ: 1n << 0n,
  FUSE_POSIX_LOCKS: 1n << 1n,
  FUSE_FILE_OPS: 1n << 2n,
  FUSE_ATOMIC_O_TRUNC: 1n << 3n,
  FUSE_EXPORT_SUPPORT: 1n << 4n,
  FUSE_BIG_WRITES: 1n << 5n,
  FUSE_DONT_MASK: 1n << 6n,
  FUSE_SPLICE_WRITE: 1n << 7n,
  FUSE_SPLICE_MOVE: 1n << 8n,
  FUSE_SPLICE_READ: 1n << 9n,
  FUSE_FLOCK_LOCKS: 1n << 10n,
  FUSE_HAS_IOCTL_DIR: 1n << 11n,
  FUSE_AUTO_INVAL_DATA: 1n << 12n,
  FUSE_DO_READDIRPLUS: 1n << 13n,
  FUSE_READDIRPLUS_AUTO: 1n << 14n,
  FUSE_ASYNC_DIO: 1n << 15n,
  FUSE_WRITEBACK_CACHE: 1n << 16n,
  FUSE_NO_OPEN_SUPPORT: 1n << 17n,
  FUSE_PARALLEL_DIROPS: 1n << 18n,
  FUSE_HANDLE_KILLPRIV: 1n << 19n,
  FUSE_POSIX_ACL: 1n << 20n,
  FUSE_ABORT_ERROR: 1n << 21n,
  FUSE_MAX_PAGES: 1n << 22n,
  FUSE_CACHE_SYMLINKS: 1n << 23n,
  FUSE_NO_OPENDIR_SUPPORT: 1n << 24n,
  FUSE_EXPLICIT_INVAL_DATA: 1n << 25n,
  FUSE_MAP_ALIGNMENT: 1n << 26n,
  FUSE_SUBMOUNTS: 1n << 27n,
  FUSE_HANDLE_KILLPRIV_V2: 1n << 28n,
  FUSE_SETXATTR_EXT: 1n << 29n,
  FUSE_INIT_EXT: 1n << 30n,
  FUSE_INIT_RESERVED: 1n << 31n,
  FUSE_SECURITY_CTX: 1n << 32n,
  FUSE_HAS_INODE_DAX: 1n << 33n,
  FUSE_CREATE_SUPP_GROUP: 1n << 34n,
  FUSE_HAS_EXPIRE_ONLY: 1n << 35n,
  FUSE_DIRECT_IO_ALLOW_MMAP: 1n << 36n,
  FUSE_PASSTHROUGH: 1n << 37n,
  FUSE_NO_EXPORT_SUPPORT: 1n << 38n,
  FUSE_HAS_RESEND: 1n << 39n,
  FUSE_ALLOW_IDMAP: 1n << 40n,
  FUSE_OVER_IO_URING: 1n << 41n,
  FUSE_REQUEST_TIMEOUT: 1n << 42n,
} as const;

export function initFlagNames(flags: bigint): string[] {
  return Object.entries(InitFlag)
    .filter(([, bit]) => (flags & bit) !== 0n)
    .map(([name]) => name);
}

/** fuse_setattr_in.valid */
export const FATTR_MODE = 1 << 0;
export const FATTR_UID = 1 << 1;
export const FATTR_GID = 1 << 2;
export const FATTR_SIZE = 1 << 3;
export const FATTR_ATIME = 1 << 4;
export const FATTR_MTIME = 1 << 5;
export const FATTR_FH = 1 << 6;
export const FATTR_ATIME_NOW = 1 << 7;
export const FATTR_MTIME_NOW = 1 << 8;
export const FATTR_LOCKOWNER = 1 << 9;
export const FATTR_CTIME = 1 << 10;
export const FATTR_KILL_SUIDGID = 1 << 11;

/** fuse_open_out.open_flags */
export const FOPEN_DIRECT_IO = 1 << 0;
export const FOPEN_KEEP_CACHE = 1 << 1;
export const FOPEN_NONSEEKABLE = 1 << 2;
export const FOPEN_CACHE_DIR = 1 << 3;
export const FOPEN_STREAM = 1 << 4;
export const FOPEN_NOFLUSH = 1 << 5;
export const FOPEN_PARALLEL_DIRECT_WRITES = 1 << 6;
export const FOPEN_PASSTHROUGH = 1 << 7;

export const FUSE_RELEASE_FLUSH = 1 << 0;
export const FUSE_RELEASE_FLOCK_UNLOCK = 1 << 1;
export const FUSE_GETATTR_FH = 1 << 0;
export const FUSE_LK_FLOCK = 1 << 0;
export const FUSE_WRITE_CACHE = 1 << 0;
export const FUSE_WRITE_LOCKOWNER = 1 << 1;
export const FUSE_WRITE_KILL_SUIDGID = 1 << 2;
export const FUSE_READ_LOCKOWNER = 1 << 1;
export const FUSE_FSYNC_FDATASYNC = 1 << 0;
export const FUSE_POLL_SCHEDULE_NOTIFY = 1 << 0;
export const FUSE_EXPIRE_ONLY = 1 << 0;
export const FUSE_ATTR_SUBMOUNT = 1 << 0;
export const FUSE_ATTR_DAX = 1 << 1;
export const FUSE_OPEN_KILL_SUIDGID = 1 << 0;
export const FUSE_SETXATTR_ACL_KILL_SGID = 1 << 0;

export const FUSE_IOCTL_COMPAT = 1 << 0;
export const FUSE_IOCTL_UNRESTRICTED = 1 << 1;
export const FUSE_IOCTL_RETRY = 1 << 2;
export const FUSE_IOCTL_32BIT = 1 << 3;
export const FUSE_IOCTL_DIR = 1 << 4;

/** Extension types carried after the op arguments (total_extlen, 7.38+). */
export const FUSE_MAX_NR_SECCTX = 31;
export const FUSE_EXT_GROUPS = 32;

/** Sizes of the fixed wire structs. */
export const SIZE = {
  in_header: 40,
  out_header: 16,
  attr: 88,
  entry_out: 128,
  attr_out: 104,
  open_out: 16,
  write_out: 8,
  statfs_out: 80,
  getxattr_out: 8,
  lk_out: 24,
  init_in_compat: 16,
  init_in: 64,
  init_out: 64,
  bmap_out: 8,
  ioctl_out: 16,
  poll_out: 8,
  lseek_out: 8,
  statx_out: 288,
  copy_file_range_out: 8,
  dirent: 24,
  direntplus: 152,
} as const;

export const COMPAT_INIT_OUT_SIZE = 8;
export const COMPAT_22_INIT_OUT_SIZE = 24;
