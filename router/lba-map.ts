/**
 * The LBA map of one volume: cluster index (LBA) -> location, where location = sco * 65536 + slot
 * (0 = unmapped; SCO numbers start at 1). Kept entirely in RAM, so it is designed for bytes per mapped
 * cluster, not for speed alone (see docs/volume-driver.md, "LBA map"):
 *
 * - The LBA space is cut into pages of 8192 clusters (32 MiB of volume). A page exists only while it maps
 *   something. A two-level directory (chunks of 4096 page ids, Int32Array) finds a page without a JS
 *   object per page; page metadata lives in parallel typed arrays indexed by page id.
 * - Every page stores SCO numbers as a 16-bit delta from the page's base SCO (the SCO of the page's first
 *   write), so an entry needs 16 bits of SCO + 16 bits of slot:
 *     dense page : 8192 x [delta + 1, slot] u16 pairs                    = 4 B per cluster of the page
 *     sparse page: sorted [offsetInPage, delta, slot] u16 triples        = 6 B per mapped cluster
 *   A sparse page turns dense when dense is smaller (more than 5461 entries) and back below 2048.
 * - Blocks live in a shared arena of 512 KiB Uint16Array segments (bump allocation). A growing sparse
 *   page moves to the next size class (x1.25); the old block becomes garbage, and the arena is compacted
 *   when garbage exceeds 1/16 of it, so no free lists are needed.
 * - A location whose SCO does not fit the page's delta window (SCO < base or > base + 65534: only after
 *   65535 SCOs of writes) goes into an `overflow` Map; correct, but ~80 B per entry.
 */
import assert from 'node:assert';

const pageShift = 13;
const pageClusters = 1 << pageShift;
const directoryChunkShift = 12;
const directoryChunkPages = 1 << directoryChunkShift;
const segmentShift = 18;
const segmentU16 = 1 << segmentShift;
const denseBlockU16 = pageClusters * 2;
/** The most entries a sparse page holds: beyond, the dense form is smaller. */
const sparseEntriesMax = Math.floor(denseBlockU16 / 3);
/** A dense page shrinking to this many entries turns sparse again (hysteresis against flapping). */
const sparseAgainEntries = 2048;
const denseMark = 0xffff;
const deltaMax = 0xfffe;
export const slotsPerSco = 65536;
/** Estimated V8 cost of one entry in the overflow Map (hash table slot + boxed doubles). */
const overflowEntryBytesEstimate = 80;
/** Estimated V8 cost of a typed array object beyond its bytes (JSTypedArray + JSArrayBuffer). */
const typedArrayOverheadBytes = 200;

/** Sparse capacities in entries, each about 1.25x the previous, ending at sparseEntriesMax. */
const sparseCapacities: number[] = (() => {
  const capacities: number[] = [];
  for (let capacity = 2; capacity < sparseEntriesMax; capacity = Math.max(capacity + 1, Math.ceil(capacity * 1.25))) {
    capacities.push(capacity);
  }
  capacities.push(sparseEntriesMax);
  return capacities;
})();

function sparseCapacityFor(count: number): number {
  for (const capacity of sparseCapacities) if (capacity >= count) return capacity;
  return sparseEntriesMax;
}

export function packLocation(sco: number, slot: number): number {
  return sco * slotsPerSco + slot;
}
export function locationSco(location: number): number {
  return Math.floor(location / slotsPerSco);
}
export function locationSlot(location: number): number {
  return location % slotsPerSco;
}

export class LbaMap {
  private directory: Array<Int32Array | undefined> = [];
  private pageBaseSco = new Uint32Array(64);
  private pageCount = new Uint16Array(64);
  /** Sparse capacity in entries, denseMark for a dense page, 0 for a free page id. */
  private pageCapacity = new Uint16Array(64);
  private pageAddress = new Uint32Array(64);
  private pageIdsUsed = 0;
  private freePageIds: number[] = [];

  private segments: Uint16Array[] = [];
  private bumpOffset = segmentU16;
  private garbageU16 = 0;
  private overflow = new Map<number, number>();
  private mapped = 0;

  /** Scratch results of locate(): the segment and offset of a page's block. */
  private blockSegment: Uint16Array = new Uint16Array(0);
  private blockOffset = 0;

  get mappedCount(): number {
    return this.mapped;
  }

  get(lba: number): number {
    const page = Math.floor(lba / pageClusters);
    const pageId = this.pageIdOf(page);
    if (pageId >= 0) {
      const location = this.getInPage(pageId, lba - page * pageClusters);
      if (location !== 0) return location;
    }
    if (this.overflow.size !== 0) return this.overflow.get(lba) ?? 0;
    return 0;
  }

  set(lba: number, location: number): void {
    assert(Number.isSafeInteger(lba) && lba >= 0, 'lba must be a non-negative integer');
    assert(Number.isSafeInteger(location) && location >= slotsPerSco, 'location must be sco * 65536 + slot with sco >= 1');
    const sco = Math.floor(location / slotsPerSco);
    assert(sco <= 0xffffffff, 'SCO numbers are limited to 32 bits');
    const slot = location - sco * slotsPerSco;
    const page = Math.floor(lba / pageClusters);
    const offset = lba - page * pageClusters;
    let pageId = this.pageIdOf(page);
    if (pageId < 0) pageId = this.createPage(page, sco);
    const delta = sco - this.pageBaseSco[pageId];
    if (delta < 0 || delta > deltaMax) {
      if (this.removeFromPage(pageId, page, offset)) this.mapped -= 1;
      if (!this.overflow.has(lba)) this.mapped += 1;
      this.overflow.set(lba, location);
      return;
    }
    if (this.overflow.size !== 0 && this.overflow.delete(lba)) this.mapped -= 1;
    if (this.putInPage(pageId, offset, delta, slot)) this.mapped += 1;
    this.maybeCompact();
  }

  delete(lba: number): boolean {
    const page = Math.floor(lba / pageClusters);
    const pageId = this.pageIdOf(page);
    let removed = pageId >= 0 && this.removeFromPage(pageId, page, lba - page * pageClusters);
    if (!removed && this.overflow.size !== 0) removed = this.overflow.delete(lba);
    if (removed) this.mapped -= 1;
    this.maybeCompact();
    return removed;
  }

  /** Unmaps [lba, lba + count). Whole pages are dropped without visiting their entries. */
  deleteRange(lba: number, count: number): void {
    if (count <= 0) return;
    const end = lba + count;
    const firstPage = Math.floor(lba / pageClusters);
    const lastPage = Math.floor((end - 1) / pageClusters);
    for (let chunkIndex = firstPage >>> directoryChunkShift; chunkIndex <= lastPage >>> directoryChunkShift; chunkIndex++) {
      const chunk = this.directory[chunkIndex];
      if (chunk === undefined) continue;
      const chunkFirstPage = chunkIndex * directoryChunkPages;
      const from = Math.max(firstPage, chunkFirstPage);
      const to = Math.min(lastPage, chunkFirstPage + directoryChunkPages - 1);
      for (let page = from; page <= to; page++) {
        const pageId = chunk[page - chunkFirstPage] - 1;
        if (pageId < 0) continue;
        const pageStart = page * pageClusters;
        if (lba <= pageStart && end >= pageStart + pageClusters) {
          this.mapped -= this.pageCount[pageId];
          this.freePage(pageId, page);
        } else {
          const stop = Math.min(end, pageStart + pageClusters);
          for (let at = Math.max(lba, pageStart); at < stop; at++) {
            if (this.pageCapacity[pageId] === 0) break; // the page emptied and was freed
            if (this.removeFromPage(pageId, page, at - pageStart)) this.mapped -= 1;
          }
        }
      }
    }
    if (this.overflow.size !== 0) {
      for (const key of [...this.overflow.keys()]) {
        if (key >= lba && key < end) {
          this.overflow.delete(key);
          this.mapped -= 1;
        }
      }
    }
    this.maybeCompact();
  }

  clear(): void {
    this.directory = [];
    this.pageCapacity.fill(0);
    this.pageIdsUsed = 0;
    this.freePageIds = [];
    this.segments = [];
    this.bumpOffset = segmentU16;
    this.garbageU16 = 0;
    this.overflow.clear();
    this.mapped = 0;
  }

  /** Calls fn for every mapped cluster in ascending LBA order. The map must not change meanwhile. */
  forEach(fn: (lba: number, location: number) => void): void {
    const overflowKeys = [...this.overflow.keys()].sort((a, b) => a - b);
    let overflowIndex = 0;
    const emit = (lba: number, location: number) => {
      while (overflowIndex < overflowKeys.length && overflowKeys[overflowIndex] < lba) {
        const key = overflowKeys[overflowIndex++];
        fn(key, this.overflow.get(key)!);
      }
      fn(lba, location);
    };
    for (let chunkIndex = 0; chunkIndex < this.directory.length; chunkIndex++) {
      const chunk = this.directory[chunkIndex];
      if (chunk === undefined) continue;
      for (let inChunk = 0; inChunk < directoryChunkPages; inChunk++) {
        const pageId = chunk[inChunk] - 1;
        if (pageId < 0) continue;
        this.forEachInPage(pageId, (chunkIndex * directoryChunkPages + inChunk) * pageClusters, emit);
      }
    }
    while (overflowIndex < overflowKeys.length) {
      const key = overflowKeys[overflowIndex++];
      fn(key, this.overflow.get(key)!);
    }
  }

  /** Calls fn for every mapped cluster in [lba, lba + count), pages in ascending order. The map must not change meanwhile. */
  forEachInRange(lba: number, count: number, fn: (lba: number, location: number) => void): void {
    if (count <= 0) return;
    const end = lba + count;
    const firstPage = Math.floor(lba / pageClusters);
    const lastPage = Math.floor((end - 1) / pageClusters);
    const inRange = (at: number, location: number) => {
      if (at >= lba && at < end) fn(at, location);
    };
    for (let chunkIndex = firstPage >>> directoryChunkShift; chunkIndex <= lastPage >>> directoryChunkShift; chunkIndex++) {
      const chunk = this.directory[chunkIndex];
      if (chunk === undefined) continue;
      const chunkFirstPage = chunkIndex * directoryChunkPages;
      for (let page = Math.max(firstPage, chunkFirstPage); page <= Math.min(lastPage, chunkFirstPage + directoryChunkPages - 1); page++) {
        const pageId = chunk[page - chunkFirstPage] - 1;
        if (pageId < 0) continue;
        const pageStart = page * pageClusters;
        this.forEachInPage(pageId, pageStart, lba <= pageStart && end >= pageStart + pageClusters ? fn : inRange);
      }
    }
    if (this.overflow.size !== 0) for (const [key, location] of this.overflow) if (key >= lba && key < end) fn(key, location);
  }

  /** SCO -> how many clusters map into it, straight from the pages: at a volume's open, 2.5-5x faster than a forEach (9 ms per million clusters). */
  clustersPerSco(): Map<number, number> {
    const counts = new Map<number, number>();
    const perDelta = new Uint32Array(deltaMax + 1);
    const touched: number[] = [];
    const note = (delta: number) => {
      if (perDelta[delta]++ === 0) touched.push(delta);
    };
    for (let pageId = 0; pageId < this.pageIdsUsed; pageId++) {
      const capacity = this.pageCapacity[pageId];
      if (capacity === 0) continue;
      this.locate(pageId);
      const segment = this.blockSegment;
      const base = this.blockOffset;
      if (capacity === denseMark) {
        for (let offset = 0; offset < pageClusters; offset++) {
          const deltaPlusOne = segment[base + offset * 2];
          if (deltaPlusOne !== 0) note(deltaPlusOne - 1);
        }
      } else {
        for (let index = 0; index < this.pageCount[pageId]; index++) note(segment[base + index * 3 + 1]);
      }
      const baseSco = this.pageBaseSco[pageId];
      for (const delta of touched) {
        counts.set(baseSco + delta, (counts.get(baseSco + delta) ?? 0) + perDelta[delta]);
        perDelta[delta] = 0;
      }
      touched.length = 0;
    }
    for (const location of this.overflow.values()) {
      const sco = Math.floor(location / slotsPerSco);
      counts.set(sco, (counts.get(sco) ?? 0) + 1);
    }
    return counts;
  }

  /** Mapped runs of consecutive LBAs, ascending (for stats and tools; builds an array). */
  mappedRanges(): Array<{ lba: number; count: number }> {
    const ranges: Array<{ lba: number; count: number }> = [];
    this.forEach((lba) => {
      const last = ranges[ranges.length - 1];
      if (last !== undefined && last.lba + last.count === lba) last.count += 1;
      else ranges.push({ lba, count: 1 });
    });
    return ranges;
  }

  /** Honest RAM estimate: every typed array's bytes plus per-object overheads. */
  memoryBytes(): number {
    let bytes = 512; // this object and its fields
    bytes += this.segments.length * (segmentU16 * 2 + typedArrayOverheadBytes);
    for (const chunk of this.directory) bytes += 8 + (chunk === undefined ? 0 : chunk.byteLength + typedArrayOverheadBytes);
    bytes += this.pageBaseSco.byteLength + this.pageCount.byteLength + this.pageCapacity.byteLength;
    bytes += this.pageAddress.byteLength + 4 * typedArrayOverheadBytes;
    bytes += this.freePageIds.length * 8;
    bytes += this.overflow.size * overflowEntryBytesEstimate;
    return bytes;
  }

  /** Internals for tests and the benchmark. */
  layoutStats(): { pages: number; densePages: number; overflowEntries: number; arenaBytes: number; garbageBytes: number } {
    let pages = 0;
    let densePages = 0;
    for (let id = 0; id < this.pageIdsUsed; id++) {
      if (this.pageCapacity[id] === 0) continue;
      pages += 1;
      if (this.pageCapacity[id] === denseMark) densePages += 1;
    }
    return {
      pages,
      densePages,
      overflowEntries: this.overflow.size,
      arenaBytes: this.segments.length * segmentU16 * 2,
      garbageBytes: this.garbageU16 * 2,
    };
  }

  private pageIdOf(page: number): number {
    const chunk = this.directory[page >>> directoryChunkShift];
    return chunk === undefined ? -1 : chunk[page & (directoryChunkPages - 1)] - 1;
  }

  private locate(pageId: number): void {
    const address = this.pageAddress[pageId];
    this.blockSegment = this.segments[address >>> segmentShift];
    this.blockOffset = address & (segmentU16 - 1);
  }

  /** Binary search in a sparse block: the index of `offset`, or -(insertion point) - 1. */
  private findSparse(segment: Uint16Array, base: number, count: number, offset: number): number {
    let low = 0;
    let high = count - 1;
    while (low <= high) {
      const middle = (low + high) >>> 1;
      const key = segment[base + middle * 3];
      if (key < offset) low = middle + 1;
      else if (key > offset) high = middle - 1;
      else return middle;
    }
    return -low - 1;
  }

  private getInPage(pageId: number, offset: number): number {
    this.locate(pageId);
    const segment = this.blockSegment;
    const base = this.blockOffset;
    if (this.pageCapacity[pageId] === denseMark) {
      const deltaPlusOne = segment[base + offset * 2];
      if (deltaPlusOne === 0) return 0;
      return (this.pageBaseSco[pageId] + deltaPlusOne - 1) * slotsPerSco + segment[base + offset * 2 + 1];
    }
    const index = this.findSparse(segment, base, this.pageCount[pageId], offset);
    if (index < 0) return 0;
    const at = base + index * 3;
    return (this.pageBaseSco[pageId] + segment[at + 1]) * slotsPerSco + segment[at + 2];
  }

  /** Returns true when the entry is new. */
  private putInPage(pageId: number, offset: number, delta: number, slot: number): boolean {
    if (this.pageCapacity[pageId] !== denseMark) {
      this.locate(pageId);
      const count = this.pageCount[pageId];
      const index = this.findSparse(this.blockSegment, this.blockOffset, count, offset);
      if (index >= 0) {
        const at = this.blockOffset + index * 3;
        this.blockSegment[at + 1] = delta;
        this.blockSegment[at + 2] = slot;
        return false;
      }
      if (count < this.pageCapacity[pageId]) {
        const insertAt = -index - 1;
        const segment = this.blockSegment;
        const at = this.blockOffset + insertAt * 3;
        segment.copyWithin(at + 3, at, this.blockOffset + count * 3);
        segment[at] = offset;
        segment[at + 1] = delta;
        segment[at + 2] = slot;
        this.pageCount[pageId] = count + 1;
        return true;
      }
      if (count < sparseEntriesMax) this.moveSparse(pageId, sparseCapacityFor(count + 1));
      else this.makeDense(pageId);
      return this.putInPage(pageId, offset, delta, slot);
    }
    this.locate(pageId);
    const at = this.blockOffset + offset * 2;
    const isNew = this.blockSegment[at] === 0;
    this.blockSegment[at] = delta + 1;
    this.blockSegment[at + 1] = slot;
    if (isNew) this.pageCount[pageId] += 1;
    return isNew;
  }

  /** Returns true when an entry was removed; frees the page when it empties. */
  private removeFromPage(pageId: number, page: number, offset: number): boolean {
    this.locate(pageId);
    const segment = this.blockSegment;
    const base = this.blockOffset;
    const count = this.pageCount[pageId];
    if (this.pageCapacity[pageId] === denseMark) {
      const at = base + offset * 2;
      if (segment[at] === 0) return false;
      segment[at] = 0;
      segment[at + 1] = 0;
      this.pageCount[pageId] = count - 1;
    } else {
      const index = this.findSparse(segment, base, count, offset);
      if (index < 0) return false;
      segment.copyWithin(base + index * 3, base + index * 3 + 3, base + count * 3);
      this.pageCount[pageId] = count - 1;
    }
    if (count - 1 === 0) this.freePage(pageId, page);
    else if (count - 1 <= sparseAgainEntries && this.pageCapacity[pageId] === denseMark) this.makeSparse(pageId);
    return true;
  }

  private forEachInPage(pageId: number, firstLba: number, fn: (lba: number, location: number) => void): void {
    this.locate(pageId);
    const segment = this.blockSegment;
    const base = this.blockOffset;
    const baseSco = this.pageBaseSco[pageId];
    if (this.pageCapacity[pageId] === denseMark) {
      for (let offset = 0; offset < pageClusters; offset++) {
        const deltaPlusOne = segment[base + offset * 2];
        if (deltaPlusOne !== 0) fn(firstLba + offset, (baseSco + deltaPlusOne - 1) * slotsPerSco + segment[base + offset * 2 + 1]);
      }
      return;
    }
    for (let index = 0; index < this.pageCount[pageId]; index++) {
      const at = base + index * 3;
      fn(firstLba + segment[at], (baseSco + segment[at + 1]) * slotsPerSco + segment[at + 2]);
    }
  }

  private createPage(page: number, baseSco: number): number {
    let pageId = this.freePageIds.pop();
    if (pageId === undefined) {
      pageId = this.pageIdsUsed++;
      if (pageId >= this.pageCapacity.length) this.growPageArrays();
    }
    const chunkIndex = page >>> directoryChunkShift;
    while (this.directory.length <= chunkIndex) this.directory.push(undefined);
    let chunk = this.directory[chunkIndex];
    if (chunk === undefined) {
      chunk = new Int32Array(directoryChunkPages);
      this.directory[chunkIndex] = chunk;
    }
    chunk[page & (directoryChunkPages - 1)] = pageId + 1;
    this.pageBaseSco[pageId] = baseSco;
    this.pageCount[pageId] = 0;
    this.pageCapacity[pageId] = sparseCapacities[0];
    this.pageAddress[pageId] = this.allocate(sparseCapacities[0] * 3);
    return pageId;
  }

  private freePage(pageId: number, page: number): void {
    this.garbageU16 += this.blockU16(pageId);
    this.pageCapacity[pageId] = 0;
    this.pageCount[pageId] = 0;
    this.directory[page >>> directoryChunkShift]![page & (directoryChunkPages - 1)] = 0;
    this.freePageIds.push(pageId);
  }

  private growPageArrays(): void {
    const length = Math.ceil(this.pageCapacity.length * 1.5);
    const grow = <T extends Uint16Array | Uint32Array>(old: T, make: (n: number) => T): T => {
      const next = make(length);
      next.set(old);
      return next;
    };
    this.pageBaseSco = grow(this.pageBaseSco, (n) => new Uint32Array(n));
    this.pageCount = grow(this.pageCount, (n) => new Uint16Array(n));
    this.pageCapacity = grow(this.pageCapacity, (n) => new Uint16Array(n));
    this.pageAddress = grow(this.pageAddress, (n) => new Uint32Array(n));
  }

  private blockU16(pageId: number): number {
    const capacity = this.pageCapacity[pageId];
    return capacity === denseMark ? denseBlockU16 : capacity * 3;
  }

  /** Bump-allocates a zero-filled block; blocks never span segments. Returns its arena address. */
  private allocate(sizeU16: number): number {
    if (this.bumpOffset + sizeU16 > segmentU16) {
      if (this.segments.length > 0) this.garbageU16 += segmentU16 - this.bumpOffset;
      assert(this.segments.length < 2 ** (32 - segmentShift), 'LBA map arena exhausted');
      this.segments.push(new Uint16Array(segmentU16));
      this.bumpOffset = 0;
    }
    const address = (this.segments.length - 1) * segmentU16 + this.bumpOffset;
    this.bumpOffset += sizeU16;
    return address;
  }

  private moveSparse(pageId: number, capacity: number): void {
    const oldU16 = this.blockU16(pageId);
    const address = this.allocate(capacity * 3);
    this.locate(pageId);
    const used = this.pageCount[pageId] * 3;
    this.segments[address >>> segmentShift].set(
      this.blockSegment.subarray(this.blockOffset, this.blockOffset + used),
      address & (segmentU16 - 1),
    );
    this.garbageU16 += oldU16;
    this.pageAddress[pageId] = address;
    this.pageCapacity[pageId] = capacity;
  }

  private makeDense(pageId: number): void {
    const oldU16 = this.blockU16(pageId);
    const address = this.allocate(denseBlockU16);
    const dense = this.segments[address >>> segmentShift];
    const denseBase = address & (segmentU16 - 1);
    this.locate(pageId);
    for (let index = 0; index < this.pageCount[pageId]; index++) {
      const at = this.blockOffset + index * 3;
      const offset = this.blockSegment[at];
      dense[denseBase + offset * 2] = this.blockSegment[at + 1] + 1;
      dense[denseBase + offset * 2 + 1] = this.blockSegment[at + 2];
    }
    this.garbageU16 += oldU16;
    this.pageAddress[pageId] = address;
    this.pageCapacity[pageId] = denseMark;
  }

  private makeSparse(pageId: number): void {
    const capacity = sparseCapacityFor(this.pageCount[pageId]);
    const address = this.allocate(capacity * 3);
    const sparse = this.segments[address >>> segmentShift];
    let at = address & (segmentU16 - 1);
    this.locate(pageId);
    for (let offset = 0; offset < pageClusters; offset++) {
      const deltaPlusOne = this.blockSegment[this.blockOffset + offset * 2];
      if (deltaPlusOne === 0) continue;
      sparse[at] = offset;
      sparse[at + 1] = deltaPlusOne - 1;
      sparse[at + 2] = this.blockSegment[this.blockOffset + offset * 2 + 1];
      at += 3;
    }
    this.garbageU16 += denseBlockU16;
    this.pageAddress[pageId] = address;
    this.pageCapacity[pageId] = capacity;
  }

  /** Copies every live block into fresh segments (sparse blocks shrink to fit) once garbage is 1/16. */
  private maybeCompact(): void {
    const arenaU16 = this.segments.length * segmentU16;
    if (this.garbageU16 <= segmentU16 || this.garbageU16 * 16 <= arenaU16) return;
    const oldSegments = this.segments;
    this.segments = [];
    this.bumpOffset = segmentU16;
    this.garbageU16 = 0;
    for (let pageId = 0; pageId < this.pageIdsUsed; pageId++) {
      const capacity = this.pageCapacity[pageId];
      if (capacity === 0) continue;
      const oldAddress = this.pageAddress[pageId];
      const oldSegment = oldSegments[oldAddress >>> segmentShift];
      const oldOffset = oldAddress & (segmentU16 - 1);
      const newCapacity = capacity === denseMark ? denseMark : sparseCapacityFor(this.pageCount[pageId]);
      const newU16 = newCapacity === denseMark ? denseBlockU16 : newCapacity * 3;
      const usedU16 = newCapacity === denseMark ? denseBlockU16 : this.pageCount[pageId] * 3;
      const address = this.allocate(newU16);
      this.segments[address >>> segmentShift].set(oldSegment.subarray(oldOffset, oldOffset + usedU16), address & (segmentU16 - 1));
      this.pageAddress[pageId] = address;
      this.pageCapacity[pageId] = newCapacity;
    }
  }
}
