/**
 * Directory entries with stable readdir cookies. Each entry gets a cookie from a
 * per-directory counter when it is inserted; a Map keeps insertion (= cookie) order,
 * so "continue after cookie N" is well defined under concurrent inserts and removals:
 * removed entries are skipped, new ones appear at the end, none is returned twice.
 */
export const FIRST_COOKIE = 3; // 1 and 2 are "." and ".."

export interface DirSlot<T> {
  name: string;
  node: T;
  cookie: number;
}

export class DirTable<T> {
  private readonly byName = new Map<string, DirSlot<T>>();
  private readonly byCookie = new Map<number, DirSlot<T>>();
  private nextCookie = FIRST_COOKIE;

  get size(): number {
    return this.byName.size;
  }
  get(name: string): T | undefined {
    return this.byName.get(name)?.node;
  }
  has(name: string): boolean {
    return this.byName.has(name);
  }
  set(name: string, node: T): void {
    const old = this.byName.get(name);
    if (old) this.byCookie.delete(old.cookie);
    const slot = { name, node, cookie: this.nextCookie++ };
    // Replaced in place, not deleted and set again: V8 keeps a deleted Map entry in its
    // bucket's chain until a rehash, so a name replaced over and over (a file renamed over
    // again and again) would make each of its lookups walk every earlier copy.
    this.byName.set(name, slot);
    this.byCookie.set(slot.cookie, slot);
  }
  delete(name: string): boolean {
    const slot = this.byName.get(name);
    if (!slot) return false;
    this.byName.delete(name);
    this.byCookie.delete(slot.cookie);
    return true;
  }
  isLive(slot: DirSlot<T>): boolean {
    return this.byCookie.get(slot.cookie) === slot;
  }
  /** Entries with a cookie greater than `after`, in cookie order; live as the table changes. */
  *after(after: number): Generator<DirSlot<T>> {
    for (const slot of this.byCookie.values()) {
      if (slot.cookie > after) yield slot;
    }
  }
  values(): IterableIterator<DirSlot<T>> {
    return this.byName.values();
  }
}
