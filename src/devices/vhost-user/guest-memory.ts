/**
 * Guest memory as the VMM shares it (SET_MEM_TABLE): regions of guest-physical space, each
 * mapped from a memfd. Every access is checked to lie wholly inside one region; anything
 * else is a VirtioError, never an out-of-bounds access.
 */
import { closeSync } from 'node:fs';
import { native } from '../../native/native.js';

export class VirtioError extends Error {
  override name = 'VirtioError';
}

export interface RegionSpec {
  guestPhysAddr: number;
  size: number;
  /** The VMM's own virtual address of the region (rings are given in these). */
  userAddr: number;
  mmapOffset: number;
}

/** A mapped region as it is posted to another thread (the mapping itself is shared). */
export interface SharedRegion extends RegionSpec {
  /** The whole mapping, from file offset 0; the region starts at mmapOffset. */
  mapping: SharedArrayBuffer;
}

interface Region extends SharedRegion {
  bytes: Uint8Array;
}

export class GuestMemory {
  private readonly regions: Region[] = [];

  /**
   * Maps each region's fd (then closes it: the mapping keeps the memory). The mappings are
   * SharedArrayBuffers: queue threads get the same memory, and it is unmapped only when no
   * thread holds it any more.
   */
  static map(specs: RegionSpec[], fds: number[]): GuestMemory {
    const shared: SharedRegion[] = [];
    try {
      specs.forEach((r, i) => {
        if (!(r.size > 0) || r.guestPhysAddr + r.size > 2 ** 53 || r.userAddr + r.size > 2 ** 53) throw new VirtioError(`region ${i} has bad bounds`);
        shared.push({ ...r, mapping: native().mapShared(fds[i]!, r.size + r.mmapOffset, 0) });
      });
    } finally {
      for (const fd of fds) closeSync(fd);
    }
    return GuestMemory.fromShared(shared);
  }

  /** The same guest memory, from regions another thread mapped. */
  static fromShared(regions: SharedRegion[]): GuestMemory {
    const mem = new GuestMemory();
    for (const r of regions) mem.regions.push({ ...r, bytes: new Uint8Array(r.mapping, r.mmapOffset, r.size) });
    return mem;
  }

  /** The regions, to post to another thread. */
  shared(): SharedRegion[] {
    return this.regions.map(({ bytes: _bytes, ...r }) => r);
  }

  /** [guest-physical address, bytes] of every region, flat (for the native data path). */
  regionList(): (number | Uint8Array)[] {
    return this.regions.flatMap((r) => [r.guestPhysAddr, r.bytes]);
  }

  /** A view of guest-physical [gpa, gpa + len). */
  slice(gpa: number, len: number): Uint8Array {
    return this.view(gpa, len, 'guestPhysAddr', 'guest');
  }

  /** A view of VMM-virtual [va, va + len) (ring addresses come in these). */
  sliceVa(va: number, len: number): Uint8Array {
    return this.view(va, len, 'userAddr', 'VMM');
  }

  private view(addr: number, len: number, base: 'guestPhysAddr' | 'userAddr', what: string): Uint8Array {
    for (const r of this.regions) {
      if (len >= 0 && addr >= r[base] && addr + len <= r[base] + r.size) {
        const off = addr - r[base];
        return r.bytes.subarray(off, off + len);
      }
    }
    throw new VirtioError(`${what} address 0x${addr.toString(16)}+${len} is outside guest memory`);
  }
}
