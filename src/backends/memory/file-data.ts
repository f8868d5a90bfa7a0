/**
 * Sparse file contents as fixed-size chunks: a missing chunk is a hole that reads as
 * zeros, costs nothing, and is what SEEK_DATA/SEEK_HOLE report.
 */
export const CHUNK = 64 * 1024;
/** What a hole reads as (never written). */
const HOLE = Buffer.alloc(CHUNK);

export class FileData {
  private readonly chunks = new Map<number, Buffer>();
  size = 0;

  /** Bytes allocated (what st_blocks reports). */
  get allocated(): number {
    return this.chunks.size * CHUNK;
  }

  read(offset: number, length: number): Buffer {
    if (offset >= this.size || length <= 0) return Buffer.alloc(0);
    // Unzeroed: readInto writes every byte (holes as zeros).
    const out = Buffer.allocUnsafe(Math.min(this.size, offset + length) - offset);
    this.readInto(offset, [out]);
    return out;
  }

  /**
   * The bytes at [offset, offset+length) up to the end of the file as views of the chunks
   * (holes as zeros), with no copy: valid until the file next changes.
   */
  views(offset: number, length: number): Uint8Array[] {
    const end = Math.min(this.size, offset + Math.max(0, length));
    const out: Uint8Array[] = [];
    for (let pos = offset; pos < end; ) {
      const idx = Math.floor(pos / CHUNK);
      const within = pos - idx * CHUNK;
      const n = Math.min(CHUNK - within, end - pos);
      out.push((this.chunks.get(idx) ?? HOLE).subarray(within, within + n));
      pos += n;
    }
    return out;
  }

  /** Copies from `offset` into `dest` (in order) until it is full or the file ends; returns the bytes. */
  readInto(offset: number, dest: Uint8Array[]): number {
    let done = 0;
    for (const d of dest) {
      const end = Math.min(this.size, offset + done + d.length);
      for (let pos = offset + done; pos < end; ) {
        const idx = Math.floor(pos / CHUNK);
        const within = pos - idx * CHUNK;
        const n = Math.min(CHUNK - within, end - pos);
        const chunk = this.chunks.get(idx);
        const at = pos - offset - done;
        if (chunk) d.set(chunk.subarray(within, within + n), at);
        else d.fill(0, at, at + n);
        pos += n;
      }
      const got = Math.max(0, end - offset - done);
      done += got;
      if (got < d.length) break; // the end of the file
    }
    return done;
  }

  /** Writes data at offset; returns the number of newly allocated bytes. */
  write(offset: number, data: Uint8Array): number {
    let grown = 0;
    for (let done = 0; done < data.length; ) {
      const pos = offset + done;
      const idx = Math.floor(pos / CHUNK);
      const within = pos - idx * CHUNK;
      const n = Math.min(CHUNK - within, data.length - done);
      let chunk = this.chunks.get(idx);
      if (!chunk) {
        // Unzeroed, then zeros only where this write leaves the new chunk uncovered.
        chunk = Buffer.allocUnsafe(CHUNK);
        if (within > 0) chunk.fill(0, 0, within);
        if (within + n < CHUNK) chunk.fill(0, within + n);
        this.chunks.set(idx, chunk);
        grown += CHUNK;
      }
      chunk.set(data.subarray(done, done + n), within);
      done += n;
    }
    this.size = Math.max(this.size, offset + data.length);
    return grown;
  }

  /** Sets the size; bytes past a shrink point are dropped. Returns the allocation change. */
  truncate(size: number): number {
    const before = this.allocated;
    if (size < this.size) {
      const keep = Math.ceil(size / CHUNK);
      for (const idx of [...this.chunks.keys()]) if (idx >= keep) this.chunks.delete(idx);
      const tail = this.chunks.get(Math.floor(size / CHUNK));
      if (tail && size % CHUNK) tail.fill(0, size % CHUNK);
    }
    this.size = size;
    return this.allocated - before;
  }

  /** Zeroes [offset, offset+length) and frees whole chunks inside it. Returns the allocation change. */
  punch(offset: number, length: number): number {
    const before = this.allocated;
    const end = offset + length;
    for (let pos = offset; pos < end; ) {
      const idx = Math.floor(pos / CHUNK);
      const within = pos - idx * CHUNK;
      const n = Math.min(CHUNK - within, end - pos);
      const chunk = this.chunks.get(idx);
      if (chunk) {
        if (n === CHUNK) this.chunks.delete(idx);
        else chunk.fill(0, within, within + n);
      }
      pos += n;
    }
    return this.allocated - before;
  }

  /** Allocates chunks covering [offset, offset+length). Returns bytes newly allocated. */
  allocate(offset: number, length: number): number {
    let grown = 0;
    const last = Math.floor((offset + length - 1) / CHUNK);
    for (let idx = Math.floor(offset / CHUNK); idx <= last; idx++) {
      if (!this.chunks.has(idx)) {
        this.chunks.set(idx, Buffer.alloc(CHUNK));
        grown += CHUNK;
      }
    }
    return grown;
  }

  /** Bytes that allocate(offset, length) would add. */
  wouldAllocate(offset: number, length: number): number {
    if (length <= 0) return 0;
    let n = 0;
    const last = Math.floor((offset + length - 1) / CHUNK);
    for (let idx = Math.floor(offset / CHUNK); idx <= last; idx++) if (!this.chunks.has(idx)) n += CHUNK;
    return n;
  }

  /** SEEK_DATA: the first offset >= `from` inside an allocated chunk, or -1. */
  nextData(from: number): number {
    for (let idx = Math.floor(from / CHUNK); idx * CHUNK < this.size; idx++) {
      if (this.chunks.has(idx)) return Math.max(from, idx * CHUNK);
    }
    return -1;
  }

  /** SEEK_HOLE: the first offset >= `from` in a hole; the end of file counts as one. */
  nextHole(from: number): number {
    for (let idx = Math.floor(from / CHUNK); idx * CHUNK < this.size; idx++) {
      if (!this.chunks.has(idx)) return Math.max(from, idx * CHUNK);
    }
    return this.size;
  }
}
