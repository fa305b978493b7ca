/**
 * The router's local read cache of backend data (docs/backend-volumes.md "Read cache"): one preallocated
 * slab file of `bytesMax / blockBytes` slots, separate from the write buffer. A slot holds one
 * blockBytes-aligned block of one SCO (64 KiB by default: it matches the backend's stripe unit, so a block
 * never spans two fragments, and 1 GiB of cache is only 16k index entries). Clusters are fetched exactly
 * as read (a cold 4 KiB read fetches 4 KiB) and a per-slot presence mask says which clusters of the
 * block are there. Blocks are evicted least recently used; the slab never grows, so the bound holds by
 * construction. The cache is not persistent: it starts empty with every router start.
 *
 * Readers verify every cluster they take from the cache against the SCO's crc table, so a slot reused
 * while a read was in flight (or a bad disk) can only cause a refetch, never bad data. The cache is only a
 * speed-up: a slab write that fails (the slab is sparse, so a full disk refuses it) or a slab read that
 * fails is counted and the read goes on without the cache (docs/volume-driver.md, "Disk full").
 */
import path from 'node:path';
import { NodeDisk, type Disk, type DiskFile } from '../shared/disk.ts';
import { isKeelError } from '../shared/errors.ts';
import { clusterSizeBytes, limits } from '../shared/limits.ts';

export interface ReadCacheStats {
  bytesMax: number;
  blockBytes: number;
  slots: number;
  slotsUsed: number;
  clustersCached: number;
  hits: number;
  misses: number;
  evictions: number;
  insertedClusters: number;
  /** Slab writes and reads that failed (a full disk, an I/O error): the clusters were not cached, or refetched. */
  writeFailures: number;
  readFailures: number;
}

interface Block {
  slot: number;
  /** Bit i: cluster i of the block is in the slot. */
  mask: number;
  /** Grows every time the slot is given to another block (a write for an older owner is dropped). */
  generation: number;
}

export const readCacheFileName = 'read-cache.slab';

export class ReadCache {
  readonly clustersPerBlock: number;
  readonly slotCount: number;
  /** key `${object}#${block}` -> block; Map order = LRU order (oldest first). */
  private readonly blocks = new Map<string, Block>();
  private readonly freeSlots: number[] = [];
  private readonly slotGenerations: Uint32Array;
  private readonly counters = { hits: 0, misses: 0, evictions: 0, insertedClusters: 0, writeFailures: 0, readFailures: 0 };

  private constructor(
    private readonly file: DiskFile | undefined,
    readonly bytesMax: number,
    readonly blockBytes: number,
  ) {
    this.clustersPerBlock = blockBytes / clusterSizeBytes;
    this.slotCount = file === undefined ? 0 : Math.floor(bytesMax / blockBytes);
    this.slotGenerations = new Uint32Array(this.slotCount);
    for (let slot = this.slotCount - 1; slot >= 0; slot--) this.freeSlots.push(slot);
  }

  /** Opens an empty cache in `dir` (any previous slab is discarded). bytesMax 0 disables it. */
  static async open(dir: string, bytesMax: number, blockBytes = limits.readCacheBlockBytes, disk: Disk = new NodeDisk()): Promise<ReadCache> {
    if (bytesMax < blockBytes) return new ReadCache(undefined, 0, blockBytes);
    await disk.mkdirp(dir);
    const filePath = path.join(dir, readCacheFileName);
    await disk.remove(filePath);
    const file = await disk.open(filePath, 'createNew');
    return new ReadCache(file, bytesMax, blockBytes);
  }

  /**
   * Where cluster `slot` of `object` lies in the slab: its byte position, or -1 when not cached. Marks
   * the block recently used on a hit.
   */
  lookup(object: string, scoSlot: number): number {
    const blockIndex = Math.floor(scoSlot / this.clustersPerBlock);
    const key = `${object}#${blockIndex}`;
    const block = this.blocks.get(key);
    const bit = scoSlot - blockIndex * this.clustersPerBlock;
    if (block === undefined || (block.mask & (1 << bit)) === 0) {
      this.counters.misses += 1;
      return -1;
    }
    this.blocks.delete(key);
    this.blocks.set(key, block);
    this.counters.hits += 1;
    return block.slot * this.blockBytes + bit * clusterSizeBytes;
  }

  /** Reads cached bytes at a position from lookup(). Returns false on a short or failed read (the caller refetches). */
  async readAt(position: number, target: Buffer): Promise<boolean> {
    if (this.file === undefined) return false;
    try {
      return (await this.file.read(target, position)) === target.length;
    } catch (err) {
      if (!isKeelError(err)) throw err;
      this.counters.readFailures += 1;
      return false;
    }
  }

  /** Stores clusters [scoSlot, +n) of `object` (data: n whole clusters), block by block. */
  async insert(object: string, scoSlot: number, data: Buffer): Promise<void> {
    if (this.file === undefined) return;
    const count = data.length / clusterSizeBytes;
    let index = 0;
    while (index < count) {
      const slotInSco = scoSlot + index;
      const blockIndex = Math.floor(slotInSco / this.clustersPerBlock);
      const first = slotInSco - blockIndex * this.clustersPerBlock;
      const run = Math.min(count - index, this.clustersPerBlock - first);
      await this.insertInBlock(`${object}#${blockIndex}`, first, data.subarray(index * clusterSizeBytes, (index + run) * clusterSizeBytes));
      index += run;
    }
  }

  /** Forgets every block of objects whose name starts with `prefix` (a deleted volume). */
  invalidatePrefix(prefix: string): void {
    for (const [key, block] of this.blocks) {
      if (!key.startsWith(prefix)) continue;
      this.blocks.delete(key);
      this.releaseSlot(block.slot);
    }
  }

  stats(): ReadCacheStats {
    let clustersCached = 0;
    for (const block of this.blocks.values()) clustersCached += popcount(block.mask);
    return {
      bytesMax: this.slotCount * this.blockBytes,
      blockBytes: this.blockBytes,
      slots: this.slotCount,
      slotsUsed: this.blocks.size,
      clustersCached,
      ...this.counters,
    };
  }

  async close(): Promise<void> {
    await this.file?.close();
  }

  private async insertInBlock(key: string, firstCluster: number, data: Buffer): Promise<void> {
    let block = this.blocks.get(key);
    if (block === undefined) {
      const slot = this.takeSlot();
      block = { slot, mask: 0, generation: this.slotGenerations[slot]! };
      this.blocks.set(key, block);
    } else {
      this.blocks.delete(key);
      this.blocks.set(key, block);
    }
    const { slot, generation } = block;
    try {
      await this.file!.write(data, slot * this.blockBytes + firstCluster * clusterSizeBytes);
    } catch (err) {
      if (!isKeelError(err)) throw err;
      this.counters.writeFailures += 1; // not cached: its mask bits stay clear
      return;
    }
    // The slot may have gone to another block while the write was in flight: then these bytes are not ours.
    if (this.slotGenerations[slot] !== generation || this.blocks.get(key) !== block) return;
    const clusters = data.length / clusterSizeBytes;
    for (let bit = firstCluster; bit < firstCluster + clusters; bit++) block.mask |= 1 << bit;
    this.counters.insertedClusters += clusters;
  }

  private takeSlot(): number {
    const free = this.freeSlots.pop();
    if (free !== undefined) return free;
    const [oldestKey, oldest] = this.blocks.entries().next().value!;
    this.blocks.delete(oldestKey);
    this.counters.evictions += 1;
    this.slotGenerations[oldest.slot]! += 1;
    return oldest.slot;
  }

  private releaseSlot(slot: number): void {
    this.slotGenerations[slot]! += 1;
    this.freeSlots.push(slot);
  }
}

function popcount(mask: number): number {
  let count = 0;
  for (let m = mask >>> 0; m !== 0; m &= m - 1) count += 1;
  return count;
}
