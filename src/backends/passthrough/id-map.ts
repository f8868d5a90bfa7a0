/**
 * uid/gid mapping between a tenant and the host, as ranges like /proc/PID/uid_map:
 * tenant ids [inside, inside+count) are host ids [outside, outside+count). Ids without a
 * mapping act as the overflow id (65534, "nobody") in both directions.
 */
export interface IdRange {
  inside: number;
  outside: number;
  count: number;
}

export const OVERFLOW_ID = 65534;

export class IdMap {
  constructor(private readonly ranges: readonly IdRange[]) {}

  get identity(): boolean {
    return this.ranges.length === 0;
  }
  toHost(id: number): number {
    if (this.ranges.length === 0) return id;
    for (const r of this.ranges) if (id >= r.inside && id < r.inside + r.count) return r.outside + (id - r.inside);
    return OVERFLOW_ID;
  }
  toTenant(id: number): number {
    if (this.ranges.length === 0) return id;
    for (const r of this.ranges) if (id >= r.outside && id < r.outside + r.count) return r.inside + (id - r.outside);
    return OVERFLOW_ID;
  }
}

/** Parses "inside:outside:count[,inside:outside:count...]". */
export function parseIdMap(spec: string): IdRange[] {
  if (!spec.trim()) return [];
  return spec.split(',').map((part) => {
    const m = /^\s*(\d+):(\d+):(\d+)\s*$/.exec(part);
    if (!m || Number(m[3]) < 1) throw new Error(`bad id mapping "${part}" (want inside:outside:count)`);
    return { inside: Number(m[1]), outside: Number(m[2]), count: Number(m[3]) };
  });
}
