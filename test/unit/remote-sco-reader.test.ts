/**
 * RemoteScoReader against an in-memory store that counts ranged reads and can hold them: sequential
 * reads widen their fetch (read-ahead) and reads inside a fetch in flight wait for it instead of asking
 * the backend; random reads fetch exactly what they read; a failed read-ahead is not served from.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { crc32c } from '../../shared/checksum.ts';
import { KeelError } from '../../shared/errors.ts';
import { clusterSizeBytes, limits } from '../../shared/limits.ts';
import { ReadCache } from '../../router/read-cache.ts';
import { RemoteScoReader, scoTablesCachedMax } from '../../router/remote-sco-reader.ts';
import { encodeScoChecksumTable, encodeScoTrailer } from '../../router/sco-format.ts';
import type { BackendObjectStore } from '../../router/volume-backend.ts';

const scoClusters = 2048; // 8 MiB: two read-ahead windows
const readAheadClusters = limits.remoteReadAheadBytesMax / clusterSizeBytes;

/** A SCO object as the uploader writes it: clusters, crc table, trailer. Cluster i is filled with (seq + i) % 251. */
function scoObject(scoSeq: number): { object: Buffer; clusters: Buffer } {
  const clusters = Buffer.alloc(scoClusters * clusterSizeBytes);
  const table = new Uint32Array(scoClusters);
  for (let i = 0; i < scoClusters; i++) {
    const cluster = clusters.subarray(i * clusterSizeBytes, (i + 1) * clusterSizeBytes);
    cluster.fill((scoSeq + i) % 251);
    table[i] = crc32c(cluster);
  }
  const tableBytes = encodeScoChecksumTable(table, scoClusters);
  const trailer = encodeScoTrailer({ scoSeq, clusterCount: scoClusters, tableCrc: crc32c(tableBytes) });
  return { object: Buffer.concat([clusters, tableBytes, trailer]), clusters };
}

class CountingStore implements BackendObjectStore {
  readonly objects = new Map<string, Buffer>();
  /** Data reads (not the footer): [offset, length]. */
  readonly dataReads: Array<[number, number]> = [];
  holdReads: Promise<void> | undefined;
  failNextDataRead = false;

  async putObject(name: string, data: Buffer | readonly Buffer[]): Promise<void> {
    this.objects.set(name, Buffer.isBuffer(data) ? data : Buffer.concat(data as Buffer[]));
  }
  async statObject(name: string): Promise<{ sizeBytes: number }> {
    return { sizeBytes: this.objects.get(name)!.length };
  }
  async deleteObject(name: string): Promise<void> {
    this.objects.delete(name);
  }
  async readRange(name: string, offset: number, length: number): Promise<Buffer> {
    const object = this.objects.get(name)!;
    const isData = offset < scoClusters * clusterSizeBytes;
    if (isData) {
      this.dataReads.push([offset / clusterSizeBytes, length / clusterSizeBytes]);
      await this.holdReads;
      if (this.failNextDataRead) {
        this.failNextDataRead = false;
        throw KeelError.io('test: the backend failed this read');
      }
    }
    return Buffer.from(object.subarray(offset, offset + length));
  }
}

describe('RemoteScoReader', () => {
  let dir: string;
  let store: CountingStore;
  let reader: RemoteScoReader;
  const contents = new Map<number, Buffer>();

  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'keel-remote-reader-'));
    store = new CountingStore();
    const cache = await ReadCache.open(dir, 0); // no cache: every read goes to the store or a fetch in flight
    reader = new RemoteScoReader(store, 'vol-1', cache, scoTablesCachedMax(scoClusters * clusterSizeBytes));
    for (const seq of [1, 2]) {
      const { object, clusters } = scoObject(seq);
      contents.set(seq, clusters);
      await store.putObject(reader.objectName(seq), object);
    }
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  const read = async (scoSeq: number, slot: number, clusters: number, lba?: number): Promise<Buffer> => {
    const target = Buffer.alloc(clusters * clusterSizeBytes);
    await reader.readClusters(scoSeq, slot, target, lba);
    expect(target.equals(contents.get(scoSeq)!.subarray(slot * clusterSizeBytes, (slot + clusters) * clusterSizeBytes))).toBe(true);
    return target;
  };

  it('1 MiB sequential reads at QD8: one fetch per read-ahead window, the others wait for it', async () => {
    let release!: () => void;
    store.holdReads = new Promise((resolve) => (release = resolve));
    // Eight 1 MiB reads at once, as fio issues them: SCO 1 from its start to its end.
    const reads = Array.from({ length: 8 }, (_, i) => read(1, i * 256, 256));
    await new Promise((resolve) => setTimeout(resolve, 20));
    release();
    await Promise.all(reads);
    // Read 0 has no history: it fetches itself. Read 1 follows it: slots 256 .. 256 + readAhead. The
    // reads inside that window wait for it; the first one past it starts the next window.
    expect(store.dataReads).toEqual([
      [0, 256],
      [256, readAheadClusters],
      [256 + readAheadClusters, scoClusters - 256 - readAheadClusters],
    ]);
    expect(reader.stats()).toMatchObject({ readAheadFetches: 2, readAheadClustersServed: (8 - 3) * 256 });
    store.dataReads.length = 0;
    await read(2, 0, 256); // on into the next SCO after reading SCO 1 to its end: a window again
    expect(store.dataReads).toEqual([[0, readAheadClusters]]);
  });

  it('keeps the crc tables of 16 GiB of SCOs whatever their size, and fetches a table again only after the LRU dropped it', async () => {
    expect(scoTablesCachedMax(4 * 2 ** 20)).toBe(4096);
    expect(scoTablesCachedMax(64 * 2 ** 20)).toBe(256);
    expect(scoTablesCachedMax(128 * 2 ** 20)).toBe(128);
    const small = new RemoteScoReader(store, 'vol-1', await ReadCache.open(path.join(dir, 'small'), 0), 1);
    for (const seq of [1, 2, 1]) await small.readClusters(seq, 5, Buffer.alloc(clusterSizeBytes));
    expect(small.stats().tablesFetched).toBe(3); // one table fits: SCO 1's went when SCO 2's came
    for (const seq of [1, 2, 1, 2]) await read(seq, 5, 1);
    expect(reader.stats().tablesFetched).toBe(2);
  });

  it('random reads fetch exactly what they read', async () => {
    for (const slot of [700, 12, 1500, 300]) await read(1, slot, 1);
    expect(store.dataReads).toEqual([
      [700, 1],
      [12, 1],
      [1500, 1],
      [300, 1],
    ]);
    expect(reader.stats().readAheadFetches).toBe(0);
  });

  it('a sequential read across clusters overwritten since is still sequential; small slot gaps between random LBAs are not', async () => {
    // SCO 1 was written in LBA order from LBA 5000; clusters 4 and 9-10 were overwritten later (other SCOs).
    await read(1, 0, 4, 5000);
    // Skips slot 4: the same distance in LBAs, so the fetch is a window; the next read, issued with it
    // (QD2), lies inside that window and waits for it.
    await Promise.all([read(1, 5, 4, 5005), read(1, 11, 4, 5011)]);
    expect(store.dataReads).toEqual([
      [0, 4],
      [5, readAheadClusters],
    ]);
    expect(reader.stats()).toMatchObject({ readAheadFetches: 1, readAheadClustersServed: 4 });
    // SCO 2 holds random writes: slots 3 and 5 are LBAs far apart, and gaps past the bound are not sequential either.
    store.dataReads.length = 0;
    await read(2, 3, 1, 90_000);
    await read(2, 5, 1, 12);
    await read(2, 6, 1, 13); // right where the last read ended: sequential by slot
    await read(2, 6 + 1 + readAheadClusters + limits.remoteReadAheadGapClustersMax + 1, 1, 13 + 1 + readAheadClusters + limits.remoteReadAheadGapClustersMax + 1);
    expect(store.dataReads).toEqual([
      [3, 1],
      [5, 1],
      [6, readAheadClusters],
      [6 + 1 + readAheadClusters + limits.remoteReadAheadGapClustersMax + 1, 1],
    ]);
    // Random 4 KiB reads of SCO 1's sequentially written clusters: a gap after a one-cluster read is not bridged.
    store.dataReads.length = 0;
    await read(1, 1500, 1, 6500);
    await read(1, 1503, 1, 6503);
    expect(store.dataReads).toEqual([
      [1500, 1],
      [1503, 1],
    ]);
    // A random read that lands where an old one-cluster read ended is not a stream; one right after it is.
    store.dataReads.length = 0;
    await read(1, 1700, 1, 6700);
    for (let i = 0; i < limits.remoteReadRecentReadsMax; i++) await read(2, 100 + 7 * i, 1, 1000 + 50 * i);
    await read(1, 1701, 1, 6701);
    await read(1, 1702, 1, 6702); // 4 KiB sequential (dd bs=4k): right after the last read
    expect(store.dataReads.filter(([slot]) => slot >= 1700)).toEqual([
      [1700, 1],
      [1701, 1],
      [1702, scoClusters - 1702], // a window, cut at the end of the SCO
    ]);
  });

  it('a read waiting for a read-ahead that fails fetches its clusters itself', async () => {
    await read(1, 0, 16);
    let release!: () => void;
    store.holdReads = new Promise((resolve) => (release = resolve));
    store.failNextDataRead = true;
    const ahead = reader.readClusters(1, 16, Buffer.alloc(16 * clusterSizeBytes)).then(
      () => 'ok',
      (err: KeelError) => err.code,
    ); // sequential: the window fails
    const inside = read(1, 64, 16); // inside the window: waits, then fetches alone
    await new Promise((resolve) => setTimeout(resolve, 20));
    release();
    expect(await ahead).toBe('IO');
    await inside;
    expect(store.dataReads).toEqual([
      [0, 16],
      [16, readAheadClusters],
      [64, 16],
    ]);
  });
});
