/**
 * Inodes a backend knows, by their host identity, so that a LOOKUP of a name leading to one
 * can be answered without the session (/dev/fuse: native/fusedev.c): a SharedHandles table
 * keyed by the host inode number whose descriptor word holds the node id and whose flags
 * word holds the host device (deviceWord). The backend publishes the inodes of file systems
 * held in memory (where a name resolves at once) and withdraws each when the kernel forgets
 * it. Lookups answered there are counted per slot: the kernel's FORGET counts them too, so
 * the backend takes them into the inode's lookup count before it applies one.
 *
 * They are answered on the thread that reads /dev/fuse, the event loop's, between requests:
 * a count is never added while the backend takes it.
 */
import { SHARED_HANDLE_SLOTS, SharedHandles } from './shared-handles.js';

export class SharedNames {
  readonly table = new SharedHandles();
  /** LOOKUPs answered off the session, per slot, since the backend last took them. */
  readonly lookups = new Float64Array(new SharedArrayBuffer(SHARED_HANDLE_SLOTS * 8));

  /** A host device as the flags word holds it (native/published.h computes the same). */
  static deviceWord(major: number, minor: number): number {
    return (((major & 0xfff) << 20) | (minor & 0xfffff)) | 0;
  }

  /** Publishes node `nodeid` as host inode `ino` of device `devWord`; false where its slot is taken. */
  publish(ino: number, devWord: number, nodeid: number): boolean {
    if (nodeid > 0x7fffffff || ino >= 2 ** 53) return false;
    this.lookups[slotOf(ino)] = 0;
    return this.table.publish(ino, nodeid, devWord);
  }

  /** The lookups answered for `nodeid` (published as `ino`) since the last take; 0 where it is not published. */
  take(ino: number, nodeid: number): number {
    if (!this.owns(ino, nodeid)) return 0;
    const s = slotOf(ino);
    const n = this.lookups[s]!;
    this.lookups[s] = 0;
    return n;
  }

  /** Withdraws `nodeid` (published as `ino`); take its lookups first. */
  withdraw(ino: number, nodeid: number): void {
    if (this.owns(ino, nodeid)) this.table.withdraw(ino);
  }

  private owns(ino: number, nodeid: number): boolean {
    const slot = this.table.enter(ino >>> 0, Math.floor(ino / 2 ** 32));
    if (slot < 0) return false;
    const mine = this.table.fd(slot) === nodeid;
    this.table.leave(slot);
    return mine;
  }
}

function slotOf(ino: number): number {
  return (ino >>> 0) % SHARED_HANDLE_SLOTS;
}
