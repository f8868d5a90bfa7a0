/** Reading /proc/self/mountinfo: is a path a (FUSE) mount point, and which connection is it. */
import { readFileSync } from 'node:fs';

export interface MountInfo {
  mountPoint: string;
  /** major:minor of the superblock; for FUSE the minor is the connection id. */
  major: number;
  minor: number;
  fstype: string;
  source: string;
}

function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

export function readMounts(): MountInfo[] {
  const text = readFileSync('/proc/self/mountinfo', 'utf8');
  const out: MountInfo[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const [left, right] = line.split(' - ');
    if (!left || !right) continue;
    const f = left.split(' ');
    const [majmin, , mountPoint] = [f[2], f[3], f[4]];
    const [fstype, source] = right.split(' ');
    const [major, minor] = (majmin ?? '0:0').split(':').map(Number);
    out.push({ mountPoint: unescape(mountPoint ?? ''), major: major!, minor: minor!, fstype: fstype ?? '', source: unescape(source ?? '') });
  }
  return out;
}

/** The topmost mount at exactly `path`, if any. */
export function mountAt(path: string): MountInfo | undefined {
  const all = readMounts().filter((m) => m.mountPoint === path);
  return all[all.length - 1];
}

export function isFuseType(fstype: string): boolean {
  return fstype === 'fuse' || fstype.startsWith('fuse.') || fstype === 'fuseblk';
}
