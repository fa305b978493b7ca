/**
 * Reads clusters of SCOs that are no longer in the write buffer (docs/backend-volumes.md "Read path"):
 * from the router's read cache when there, else with one backend readRange of exactly the missing
 * clusters' bytes (a SCO object is the SCO file byte for byte: slot i at i * 4096), which the store serves
 * from the one data fragment that holds them. Every cluster is checked against the SCO's crc table; the
 * table comes from the object's footer (one ranged read, then kept in a bounded LRU). The check is passed
 * to the store as `verify`, so bytes that fail it are re-read by decoding and the ASD that served them is
 * blamed. Fetched clusters go into the read cache.
 */
import { crc32c } from '../shared/checksum.ts';
import { KeelError } from '../shared/errors.ts';
import { clusterSizeBytes, limits } from '../shared/limits.ts';
import { volumeObjectName } from './backend-object-names.ts';
import { decodeScoChecksumTable, decodeScoTrailer, scoChecksumBytes, scoTrailerBytes } from './sco-format.ts';
import type { ReadCache } from './read-cache.ts';
import type { BackendObjectStore } from './volume-backend.ts';

export interface RemoteReadStats {
  remoteReads: number;
  remoteClustersFetched: number;
  remoteBytesFetched: number;
  cacheClustersServed: number;
  tablesFetched: number;
  tablesCached: number;
}

export class RemoteScoReader {
  private readonly tables = new Map<number, Promise<Uint32Array>>();
  private readonly counters = { remoteReads: 0, remoteClustersFetched: 0, remoteBytesFetched: 0, cacheClustersServed: 0, tablesFetched: 0 };

  constructor(
    private readonly store: BackendObjectStore,
    private readonly volumeId: string,
    private readonly cache: ReadCache,
    private readonly tablesMax = limits.remoteScoTablesCachedMax,
  ) {}

  objectName(scoSeq: number): string {
    return volumeObjectName(this.volumeId, 'sco', scoSeq);
  }

  /** The crc table of a SCO in the backend, from its footer (validated against the trailer). */
  table(scoSeq: number): Promise<Uint32Array> {
    let entry = this.tables.get(scoSeq);
    if (entry !== undefined) {
      this.tables.delete(scoSeq);
      this.tables.set(scoSeq, entry);
      return entry;
    }
    entry = this.fetchTable(scoSeq);
    entry.catch(() => this.tables.delete(scoSeq));
    this.tables.set(scoSeq, entry);
    while (this.tables.size > this.tablesMax) this.tables.delete(this.tables.keys().next().value!);
    return entry;
  }

  /** Fills target (whole clusters) with the SCO's clusters from `slot` on, verified. */
  async readClusters(scoSeq: number, slot: number, target: Buffer): Promise<void> {
    const table = await this.table(scoSeq);
    const count = target.length / clusterSizeBytes;
    if (slot + count > table.length) throw KeelError.corrupt(`SCO ${scoSeq}: slot ${slot + count - 1} beyond its ${table.length} clusters`);
    const name = this.objectName(scoSeq);
    // Serve what the cache has (runs of clusters contiguous in the slab: one pread each); note the rest.
    const missing: number[] = [];
    let index = 0;
    while (index < count) {
      const position = this.cache.lookup(name, slot + index);
      if (position < 0) {
        missing.push(index++);
        continue;
      }
      let run = 1;
      while (index + run < count && this.cache.lookup(name, slot + index + run) === position + run * clusterSizeBytes) run += 1;
      const view = target.subarray(index * clusterSizeBytes, (index + run) * clusterSizeBytes);
      const ok = (await this.cache.readAt(position, view)) && clustersMatch(view, table, slot + index);
      if (ok) this.counters.cacheClustersServed += run;
      else for (let i = index; i < index + run; i++) missing.push(i); // reused slot or bad disk: refetch
      index += run;
    }
    missing.sort((a, b) => a - b);
    const fetches: Array<Promise<void>> = [];
    for (let i = 0; i < missing.length; ) {
      let run = 1;
      while (i + run < missing.length && missing[i + run] === missing[i]! + run) run += 1;
      fetches.push(this.fetch(name, scoSeq, table, slot + missing[i]!, target.subarray(missing[i]! * clusterSizeBytes, (missing[i]! + run) * clusterSizeBytes)));
      i += run;
    }
    await Promise.all(fetches);
  }

  stats(): RemoteReadStats {
    return { ...this.counters, tablesCached: this.tables.size };
  }

  private async fetch(name: string, scoSeq: number, table: Uint32Array, firstSlot: number, target: Buffer): Promise<void> {
    const data = await this.store.readRange(name, firstSlot * clusterSizeBytes, target.length, {
      verify: (bytes) => clustersMatch(bytes, table, firstSlot),
    });
    if (!clustersMatch(data, table, firstSlot)) throw KeelError.checksumMismatch(`SCO ${scoSeq} slots ${firstSlot}+${target.length / clusterSizeBytes} from the backend`);
    data.copy(target);
    this.counters.remoteReads += 1;
    this.counters.remoteClustersFetched += target.length / clusterSizeBytes;
    this.counters.remoteBytesFetched += target.length;
    await this.cache.insert(name, firstSlot, data);
  }

  private async fetchTable(scoSeq: number): Promise<Uint32Array> {
    const name = this.objectName(scoSeq);
    const { sizeBytes } = await this.store.statObject(name);
    // size = n * 4096 + n * 4 + 32 (docs/sco-format.md)
    const clusterCount = (sizeBytes - scoTrailerBytes) / (clusterSizeBytes + scoChecksumBytes);
    if (!Number.isInteger(clusterCount) || clusterCount < 0) throw KeelError.corrupt(`backend SCO ${name}: size ${sizeBytes} is not a SCO file's`);
    const footerBytes = clusterCount * scoChecksumBytes + scoTrailerBytes;
    const footer = await this.store.readRange(name, sizeBytes - footerBytes, footerBytes);
    const trailer = decodeScoTrailer(footer.subarray(footerBytes - scoTrailerBytes));
    const tableBytes = footer.subarray(0, clusterCount * scoChecksumBytes);
    if (trailer === undefined || trailer.scoSeq !== scoSeq || trailer.clusterCount !== clusterCount || crc32c(tableBytes) !== trailer.tableCrc)
      throw KeelError.corrupt(`backend SCO ${name}: invalid footer`, { object: name });
    this.counters.tablesFetched += 1;
    return decodeScoChecksumTable(tableBytes, clusterCount);
  }
}

function clustersMatch(data: Buffer, table: Uint32Array, firstSlot: number): boolean {
  const count = data.length / clusterSizeBytes;
  for (let index = 0; index < count; index++) {
    if (crc32c(data.subarray(index * clusterSizeBytes, (index + 1) * clusterSizeBytes)) !== table[firstSlot + index]) return false;
  }
  return true;
}
