/** POSIX permission checks against the caller's credentials, as the kernel's generic_permission does. */
import type { RequestContext } from '../../fs/api.js';
import { Errno, FsError } from '../../fuse/errno.js';
import { S_ISVTX, X_OK, isDir } from '../../util/mode.js';

export interface Owned {
  mode: number;
  uid: number;
  gid: number;
}

export function inGroup(ctx: RequestContext, gid: number): boolean {
  return ctx.gid === gid || ctx.groups.includes(gid);
}

/** True when the caller may access `node` for `mask` (R_OK|W_OK|X_OK). */
export function permits(ctx: RequestContext, node: Owned, mask: number): boolean {
  if (ctx.uid === 0) {
    // root passes everything except executing a file with no x bit at all.
    return !(mask & X_OK) || isDir(node.mode) || (node.mode & 0o111) !== 0;
  }
  let bits: number;
  if (ctx.uid === node.uid) bits = (node.mode >> 6) & 7;
  else if (inGroup(ctx, node.gid)) bits = (node.mode >> 3) & 7;
  else bits = node.mode & 7;
  return (bits & mask) === mask;
}

export function check(ctx: RequestContext, node: Owned, mask: number): void {
  if (!permits(ctx, node, mask)) throw new FsError(Errno.EACCES);
}

export function isOwnerOrRoot(ctx: RequestContext, node: Owned): boolean {
  return ctx.uid === 0 || ctx.uid === node.uid;
}

/** Removing or renaming `child` out of a sticky `dir` needs ownership of one of them. */
export function checkSticky(ctx: RequestContext, dir: Owned, child: Owned): void {
  if (dir.mode & S_ISVTX && ctx.uid !== 0 && ctx.uid !== dir.uid && ctx.uid !== child.uid) {
    throw new FsError(Errno.EPERM);
  }
}
