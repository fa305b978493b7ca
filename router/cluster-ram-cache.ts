/**
 * The router's RAM tier of cluster data (docs/volume-driver.md, "RAM cache"): copies of recently read
 * clusters in the router's memory, above the SCO files and the read cache on disk, as ZFS keeps its ARC
 * above its disks and L2ARC. A hit costs a map lookup and a 4 KiB copy instead of a pread and a crc32c.
 *
 * - **Keyed by location** (SCO seq and slot, router/lba-map.ts). A location's bytes never change while its
 *   volume driver lives: SCOs are append-only and immutable once sealed, and SCO seqs only grow. So no
 *   write or trim has to invalidate anything: it maps its LBA to a new location, and the old copy is no
 *   longer looked up and ages out.
 * - **Checked on the way in.** A cluster enters only after its read checked its crc32c, and a hit is not
 *   checked again (as ZFS checks a block when it reads it from disk, not on an ARC hit).
 * - **Small reads only.** Only reads of up to limits.ramCacheReadClustersMax clusters fill it or look in
 *   it: random small reads are what a syscall per read slows down, and a sequential scan would otherwise
 *   flush the working set. Writes do not fill it (router/volume-driver.ts, `applyWrite`).
 * - **Copies of dead locations go at once.** A location overwritten, trimmed or remapped is `forget`ed,
 *   so its slot serves live data instead of waiting for the clock; a scrubber move `move`s the copy to the
 *   cluster's new location without copying bytes.
 * - **Bounded.** One budget for all the router's volumes (`keel router --ram-cache`, default
 *   limits.ramCacheBytesDefault), in slabs of limits.ramCacheSlabBytes allocated as needed. When full, CLOCK (second chance) picks the victim: a
 *   slot hit since the hand last passed is spared once.
 */
import assert from 'node:assert';
import { clusterSizeBytes, limits } from '../shared/limits.ts';

const clustersPerSlab = limits.ramCacheSlabBytes / clusterSizeBytes;
const freeOwner = -1;

export interface RamCacheStats {
  bytesMax: number;
  bytes: number;
  hits: number;
  misses: number;
  fills: number;
  evictions: number;
}

/** One volume driver's view: its own location map over the router's shared slots. */
export interface RamCacheView {
  /** Copies the cluster at `location` into target[at..] and returns true, or returns false on a miss. */
  read(location: number, target: Buffer, at: number): boolean;
  /**
   * Keeps copies of the `count` clusters at source[at..] that were just read (checked) from `location` and
   * the slots after it; nothing once closed.
   */
  fill(location: number, source: Buffer, at: number, count?: number): void;
  /** Drops the copy of `location`, if any: no map entry points there any more. */
  forget(location: number): void;
  /** The cluster at `from` now lives at `to` (a scrubber move): its copy, if any, is keyed by `to` instead. */
  move(from: number, to: number): void;
  /** Forgets every cluster of this view (its driver closed). */
  close(): void;
}

export class ClusterRamCache {
  private readonly slabs: Buffer[] = [];
  private readonly slotsMax: number;
  /** Per slot: the view that owns it (freeOwner when free), and the location it holds. */
  private readonly slotOwner: Int32Array;
  private readonly slotLocation: Float64Array;
  /** Per slot: hit since the clock hand last passed (second chance). */
  private readonly slotReferenced: Uint8Array;
  private readonly freeSlots: number[] = [];
  private slotsInUse = 0;
  private clockHand = 0;
  private readonly maps: Array<Map<number, number> | undefined> = [];
  private readonly counters = { hits: 0, misses: 0, fills: 0, evictions: 0 };

  constructor(readonly bytesMax: number) {
    this.slotsMax = Math.floor(bytesMax / limits.ramCacheSlabBytes) * clustersPerSlab;
    // 13 bytes per 4 KiB slot, so the bookkeeping is taken whole; the slabs as they fill.
    this.slotOwner = new Int32Array(this.slotsMax).fill(freeOwner);
    this.slotLocation = new Float64Array(this.slotsMax);
    this.slotReferenced = new Uint8Array(this.slotsMax);
  }

  get enabled(): boolean {
    return this.slotsMax > 0;
  }

  /** A view for one volume driver; undefined when the cache is off (a budget below one slab). */
  openView(): RamCacheView | undefined {
    if (!this.enabled) return undefined;
    let owner = this.maps.indexOf(undefined);
    if (owner < 0) owner = this.maps.push(undefined) - 1;
    const map = new Map<number, number>();
    this.maps[owner] = map;
    return {
      read: (location, target, at) => this.read(map, location, target, at),
      fill: (location, source, at, count = 1) => {
        for (let index = 0; index < count; index++) this.fill(owner, map, location + index, source, at + index * clusterSizeBytes);
      },
      forget: (location) => this.forget(map, location),
      move: (from, to) => this.move(map, from, to),
      close: () => this.closeView(owner, map),
    };
  }

  stats(): RamCacheStats {
    return { bytesMax: this.bytesMax, bytes: this.slotsInUse * clusterSizeBytes, ...this.counters };
  }

  private read(map: Map<number, number>, location: number, target: Buffer, at: number): boolean {
    const slot = map.get(location);
    if (slot === undefined) {
      this.counters.misses += 1;
      return false;
    }
    this.counters.hits += 1;
    this.slotReferenced[slot] = 1;
    const slab = this.slabs[Math.floor(slot / clustersPerSlab)]!;
    const from = (slot % clustersPerSlab) * clusterSizeBytes;
    slab.copy(target, at, from, from + clusterSizeBytes);
    return true;
  }

  private fill(owner: number, map: Map<number, number>, location: number, source: Buffer, at: number): void {
    if (this.maps[owner] !== map || map.has(location)) return; // closed meanwhile (a read from the backend outlived its driver), or there already
    const slot = this.takeSlot();
    this.slotOwner[slot] = owner;
    this.slotLocation[slot] = location;
    this.slotReferenced[slot] = 0;
    map.set(location, slot);
    const slab = this.slabs[Math.floor(slot / clustersPerSlab)]!;
    source.copy(slab, (slot % clustersPerSlab) * clusterSizeBytes, at, at + clusterSizeBytes);
    this.counters.fills += 1;
  }

  private forget(map: Map<number, number>, location: number): void {
    const slot = map.get(location);
    if (slot === undefined) return;
    map.delete(location);
    this.freeSlot(slot);
  }

  private move(map: Map<number, number>, from: number, to: number): void {
    const slot = map.get(from);
    if (slot === undefined) return;
    map.delete(from);
    if (map.has(to)) return this.freeSlot(slot);
    map.set(to, slot);
    this.slotLocation[slot] = to;
  }

  private freeSlot(slot: number): void {
    this.slotOwner[slot] = freeOwner;
    this.freeSlots.push(slot);
    this.slotsInUse -= 1;
  }

  /** A free slot, from a new slab while under budget, else the clock's victim. */
  private takeSlot(): number {
    const free = this.freeSlots.pop();
    if (free !== undefined) return this.use(free);
    const allocated = this.slabs.length * clustersPerSlab;
    if (allocated < this.slotsMax) {
      this.addSlab();
      return this.use(allocated);
    }
    return this.evictOne();
  }

  private use(slot: number): number {
    this.slotsInUse += 1;
    return slot;
  }

  private addSlab(): void {
    const first = this.slabs.length * clustersPerSlab;
    this.slabs.push(Buffer.allocUnsafeSlow(limits.ramCacheSlabBytes));
    for (let slot = first + clustersPerSlab - 1; slot > first; slot--) this.freeSlots.push(slot);
  }

  /** CLOCK: the first slot in use not hit since the hand last passed; it stays in use for the caller. */
  private evictOne(): number {
    const slots = this.slotsMax;
    for (;;) {
      const slot = this.clockHand;
      this.clockHand = (this.clockHand + 1) % slots;
      if (this.slotOwner[slot] === freeOwner) continue;
      if (this.slotReferenced[slot] === 1) {
        this.slotReferenced[slot] = 0;
        continue;
      }
      const map = this.maps[this.slotOwner[slot]!];
      assert(map !== undefined, 'a slot in use belongs to an open view');
      map.delete(this.slotLocation[slot]!);
      this.counters.evictions += 1;
      return slot;
    }
  }

  private closeView(owner: number, map: Map<number, number>): void {
    if (this.maps[owner] !== map) return;
    for (const slot of map.values()) this.freeSlot(slot);
    map.clear();
    this.maps[owner] = undefined;
  }
}
