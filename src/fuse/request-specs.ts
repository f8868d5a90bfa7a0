/**
 * The argument layout of every FUSE request, as data. One table drives both the
 * decoder (daemon side) and the encoder (tests, the guest-driver harness), so the
 * two can never disagree. Field names follow include/uapi/linux/fuse.h.
 */
import { Opcode } from './opcodes.js';

export type FieldKind =
  | 'u16'
  | 'u32'
  | 'i32'
  | 'u64' // a number (saturates above 2^53; nodeids, fhs, offsets and sizes fit)
  | 'u64b' // a bigint (lock owners, uniques, poll handles: identities that must stay exact)
  | 'i64' // seconds since the epoch
  | 'name' // NUL-terminated bytes
  | 'data' // the rest of the request
  | 'sized' // bytes whose length is the named earlier field
  | 'lk' // struct fuse_file_lock
  | 'forgets'; // struct fuse_forget_one[count]

export type Field =
  | readonly ['u16' | 'u32' | 'i32' | 'u64' | 'u64b' | 'i64' | 'name' | 'data' | 'lk', string]
  | readonly ['sized' | 'forgets', string, string];

export interface FileLockWire {
  start: number;
  end: number;
  type: number;
  pid: number;
}
export interface ForgetOne {
  nodeid: number;
  nlookup: number;
}

type KindType<K> = K extends 'u64b'
  ? bigint
  : K extends 'name' | 'data' | 'sized'
    ? Uint8Array
    : K extends 'lk'
      ? FileLockWire
      : K extends 'forgets'
        ? ForgetOne[]
        : number;

export type ArgsOf<S extends readonly Field[]> = { -readonly [F in S[number] as F[1]]: KindType<F[0]> };

const openIn = [['u32', 'flags'], ['u32', 'open_flags']] as const;
const readIn = [
  ['u64', 'fh'],
  ['u64', 'offset'],
  ['u32', 'size'],
  ['u32', 'read_flags'],
  ['u64b', 'lock_owner'],
  ['u32', 'flags'],
  ['u32', 'padding'],
] as const;
const releaseIn = [['u64', 'fh'], ['u32', 'flags'], ['u32', 'release_flags'], ['u64b', 'lock_owner']] as const;
const fsyncIn = [['u64', 'fh'], ['u32', 'fsync_flags'], ['u32', 'padding']] as const;
const lkIn = [['u64', 'fh'], ['u64b', 'owner'], ['lk', 'lk'], ['u32', 'lk_flags'], ['u32', 'padding']] as const;
const createIn = [['u32', 'flags'], ['u32', 'mode'], ['u32', 'umask'], ['u32', 'open_flags'], ['name', 'name']] as const;
const copyFileRangeIn = [
  ['u64', 'fh_in'],
  ['u64', 'off_in'],
  ['u64', 'nodeid_out'],
  ['u64', 'fh_out'],
  ['u64', 'off_out'],
  ['u64', 'len'],
  ['u64', 'flags'],
] as const;

const writeIn = [
  ['u64', 'fh'],
  ['u64', 'offset'],
  ['u32', 'size'],
  ['u32', 'write_flags'],
  ['u64b', 'lock_owner'],
  ['u32', 'flags'],
  ['u32', 'padding'],
] as const;

export const RequestSpecs = {
  [Opcode.FUSE_LOOKUP]: [['name', 'name']],
  [Opcode.FUSE_FORGET]: [['u64', 'nlookup']],
  [Opcode.FUSE_GETATTR]: [['u32', 'getattr_flags'], ['u32', 'dummy'], ['u64', 'fh']],
  [Opcode.FUSE_SETATTR]: [
    ['u32', 'valid'],
    ['u32', 'padding'],
    ['u64', 'fh'],
    ['u64', 'size'],
    ['u64b', 'lock_owner'],
    ['i64', 'atime'],
    ['i64', 'mtime'],
    ['i64', 'ctime'],
    ['u32', 'atimensec'],
    ['u32', 'mtimensec'],
    ['u32', 'ctimensec'],
    ['u32', 'mode'],
    ['u32', 'unused4'],
    ['u32', 'uid'],
    ['u32', 'gid'],
    ['u32', 'unused5'],
  ],
  [Opcode.FUSE_READLINK]: [],
  [Opcode.FUSE_SYMLINK]: [['name', 'name'], ['name', 'linkname']],
  [Opcode.FUSE_MKNOD]: [['u32', 'mode'], ['u32', 'rdev'], ['u32', 'umask'], ['u32', 'padding'], ['name', 'name']],
  [Opcode.FUSE_MKDIR]: [['u32', 'mode'], ['u32', 'umask'], ['name', 'name']],
  [Opcode.FUSE_UNLINK]: [['name', 'name']],
  [Opcode.FUSE_RMDIR]: [['name', 'name']],
  [Opcode.FUSE_RENAME]: [['u64', 'newdir'], ['name', 'oldname'], ['name', 'newname']],
  [Opcode.FUSE_LINK]: [['u64', 'oldnodeid'], ['name', 'newname']],
  [Opcode.FUSE_OPEN]: openIn,
  [Opcode.FUSE_READ]: readIn,
  [Opcode.FUSE_WRITE]: [...writeIn, ['sized', 'data', 'size']],
  [Opcode.FUSE_STATFS]: [],
  [Opcode.FUSE_RELEASE]: releaseIn,
  [Opcode.FUSE_FSYNC]: fsyncIn,
  // Layout without FUSE_SETXATTR_EXT; with it, see SetxattrExtSpec.
  [Opcode.FUSE_SETXATTR]: [['u32', 'size'], ['u32', 'flags'], ['name', 'name'], ['sized', 'value', 'size']],
  [Opcode.FUSE_GETXATTR]: [['u32', 'size'], ['u32', 'padding'], ['name', 'name']],
  [Opcode.FUSE_LISTXATTR]: [['u32', 'size'], ['u32', 'padding']],
  [Opcode.FUSE_REMOVEXATTR]: [['name', 'name']],
  [Opcode.FUSE_FLUSH]: [['u64', 'fh'], ['u32', 'unused'], ['u32', 'padding'], ['u64b', 'lock_owner']],
  // INIT is decoded by init.ts: its size depends on the minor version it carries.
  [Opcode.FUSE_INIT]: [['data', 'raw']],
  [Opcode.FUSE_OPENDIR]: openIn,
  [Opcode.FUSE_READDIR]: readIn,
  [Opcode.FUSE_RELEASEDIR]: releaseIn,
  [Opcode.FUSE_FSYNCDIR]: fsyncIn,
  [Opcode.FUSE_GETLK]: lkIn,
  [Opcode.FUSE_SETLK]: lkIn,
  [Opcode.FUSE_SETLKW]: lkIn,
  [Opcode.FUSE_ACCESS]: [['u32', 'mask'], ['u32', 'padding']],
  [Opcode.FUSE_CREATE]: createIn,
  [Opcode.FUSE_INTERRUPT]: [['u64b', 'unique']],
  [Opcode.FUSE_BMAP]: [['u64', 'block'], ['u32', 'blocksize'], ['u32', 'padding']],
  [Opcode.FUSE_DESTROY]: [],
  [Opcode.FUSE_IOCTL]: [
    ['u64', 'fh'],
    ['u32', 'flags'],
    ['u32', 'cmd'],
    ['u64b', 'arg'],
    ['u32', 'in_size'],
    ['u32', 'out_size'],
    ['sized', 'in_data', 'in_size'],
  ],
  [Opcode.FUSE_POLL]: [['u64', 'fh'], ['u64b', 'kh'], ['u32', 'flags'], ['u32', 'events']],
  [Opcode.FUSE_NOTIFY_REPLY]: [
    ['u64', 'dummy1'],
    ['u64', 'offset'],
    ['u32', 'size'],
    ['u32', 'dummy2'],
    ['u64', 'dummy3'],
    ['u64', 'dummy4'],
    ['sized', 'data', 'size'],
  ],
  [Opcode.FUSE_BATCH_FORGET]: [['u32', 'count'], ['u32', 'dummy'], ['forgets', 'forgets', 'count']],
  [Opcode.FUSE_FALLOCATE]: [['u64', 'fh'], ['u64', 'offset'], ['u64', 'length'], ['u32', 'mode'], ['u32', 'padding']],
  [Opcode.FUSE_READDIRPLUS]: readIn,
  [Opcode.FUSE_RENAME2]: [['u64', 'newdir'], ['u32', 'flags'], ['u32', 'padding'], ['name', 'oldname'], ['name', 'newname']],
  [Opcode.FUSE_LSEEK]: [['u64', 'fh'], ['u64', 'offset'], ['u32', 'whence'], ['u32', 'padding']],
  [Opcode.FUSE_COPY_FILE_RANGE]: copyFileRangeIn,
  [Opcode.FUSE_SETUPMAPPING]: [['u64', 'fh'], ['u64', 'foffset'], ['u64', 'len'], ['u64', 'flags'], ['u64', 'moffset']],
  [Opcode.FUSE_REMOVEMAPPING]: [['u32', 'count'], ['data', 'entries']],
  [Opcode.FUSE_SYNCFS]: [['u64', 'padding']],
  [Opcode.FUSE_TMPFILE]: createIn,
  [Opcode.FUSE_STATX]: [['u32', 'getattr_flags'], ['u32', 'reserved'], ['u64', 'fh'], ['u32', 'sx_flags'], ['u32', 'sx_mask']],
  [Opcode.FUSE_COPY_FILE_RANGE_64]: copyFileRangeIn,
} as const satisfies Partial<Record<Opcode, readonly Field[]>>;

/** fuse_write_in alone: a WRITE whose data the transport holds in place (ReplyTarget.writeSrc). */
export const WriteInSpec = writeIn;

/** fuse_setxattr_in when FUSE_SETXATTR_EXT was negotiated (7.33+). */
export const SetxattrExtSpec = [
  ['u32', 'size'],
  ['u32', 'flags'],
  ['u32', 'setxattr_flags'],
  ['u32', 'padding'],
  ['name', 'name'],
  ['sized', 'value', 'size'],
] as const;

export type SpecOpcode = keyof typeof RequestSpecs;
export type RequestArgs<O extends SpecOpcode> = ArgsOf<(typeof RequestSpecs)[O]>;
export type SetxattrExtArgs = ArgsOf<typeof SetxattrExtSpec>;

export function hasSpec(op: number): op is SpecOpcode {
  return Object.prototype.hasOwnProperty.call(RequestSpecs, op);
}
