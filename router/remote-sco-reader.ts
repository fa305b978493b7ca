/**
 * Reads clusters of SCOs that are no longer in the write buffer (docs/backend-volumes.md "Read path"):
 * from the router's read cache when there, else with one backend readRange of exactly the missing
 * clusters' bytes (a SCO object is the SCO file byte for byte: slot i at i * 4096), which the store serves
 * from the one data fragment that holds them. Every cluster is checked against the SCO's crc table; the
 * table comes from the object's footer (one ranged read, then kept in a bounded LRU). The check is passed
 * to the store as `verify`, so bytes that fail it are re-read by decoding and the ASD that served them is
 * blamed. Fetched clusters go into the read cache.
 *
 * Read-ahead: a read that starts where a recent read of the same SCO ended (or at slot 0 of the SCO after
 * one read to its end, or a few clusters on in LBA order: isSequential) is sequential, and its fetch is
 * widened to limits.remoteReadAheadBytesMax within the SCO. Reads of clusters that a fetch in flight will
 * bring wait for it and copy from it instead of asking the backend themselves, so 1M sequential reads at
 * QD8 cost one fetch per read-ahead window instead of one per read: every backend request has a fixed
 * cost (on s3rver, about 1 ms of the S3 server's CPU and 0.3 ms of the router's).
 */
import { crc32c } from '../shared/checksum.ts';
import { KeelError } from '../shared/errors.ts';
import { LruMap } from '../shared/lru-map.ts';
import { clusterSizeBytes, limits } from '../shared/limits.ts';
import { volumeObjectName } from './backend-object-names.ts';
import { decodeScoChecksumTable, decodeScoTrailer, firstBadCluster, scoChecksumBytes, scoTrailerBytes } from './sco-format.ts';
import type { ReadCache } from './read-cache.ts';
import type { BackendObjectStore } from './volume-backend.ts';

export interface RemoteReadStats {
  remoteReads: number;
  /** Fetches widened for a sequential read, and clusters that reads took from a fetch in flight. */
  readAheadFetches: number;
  readAheadClustersServed: number;
  remoteClustersFetched: number;
  remoteBytesFetched: number;
  cacheClustersServed: number;
  tablesFetched: number;
  tablesCached: number;
}

/** A backend fetch of slots [first, end) of one SCO, in flight. */
interface PendingFetch {
  first: number;
  end: number;
  data: Promise<Buffer>;
}

/** Where a recent read ended: the next read starting there is sequential. */
interface ReadEnd {
  scoSeq: number;
  slot: number;
  scoClusters: number;
  /** The volume LBA just past the read, when the reader said (a volume read, not a scan of the SCO). */
  lba: number | undefined;
  /** The read was sequential itself, or longer than one cluster: a random 4 KiB read is neither. */
  streaming: boolean;
  /** The reader's count of reads when this one was made. */
  readIndex: number;
}

export class RemoteScoReader {
  private readonly tables: LruMap<number, Promise<Uint32Array>>;
  private readonly pending = new Map<number, PendingFetch[]>();
  /** Where the latest read of each recently read SCO ended, least recently read first. */
  private readonly recentEnds = new LruMap<number, ReadEnd>(limits.remoteReadStreamsMax);
  private readCount = 0;
  private readonly counters = {
    remoteReads: 0,
    readAheadFetches: 0,
    readAheadClustersServed: 0,
    remoteClustersFetched: 0,
    remoteBytesFetched: 0,
    cacheClustersServed: 0,
    tablesFetched: 0,
  };

  constructor(
    private readonly store: BackendObjectStore,
    private readonly volumeId: string,
    private readonly cache: ReadCache,
    tablesMax: number,
  ) {
    this.tables = new LruMap(tablesMax);
  }

  objectName(scoSeq: number): string {
    return volumeObjectName(this.volumeId, 'sco', scoSeq);
  }

  /** The crc table of a SCO in the backend, from its footer (validated against the trailer). */
  table(scoSeq: number): Promise<Uint32Array> {
    let entry = this.tables.get(scoSeq);
    if (entry !== undefined) return entry;
    entry = this.fetchTable(scoSeq);
    entry.catch(() => this.tables.delete(scoSeq));
    this.tables.set(scoSeq, entry);
    return entry;
  }

  /**
   * Fills target (whole clusters) with the SCO's clusters from `slot` on, verified. `lba` is the volume
   * LBA of the first cluster, for a read of the volume: it tells a sequential read across clusters
   * overwritten since (isSequential).
   */
  async readClusters(scoSeq: number, slot: number, target: Buffer, lba?: number): Promise<void> {
    const table = await this.table(scoSeq);
    const count = target.length / clusterSizeBytes;
    if (slot + count > table.length) throw KeelError.corrupt(`SCO ${scoSeq}: slot ${slot + count - 1} beyond its ${table.length} clusters`);
    const name = this.objectName(scoSeq);
    const sequential = this.isSequential(scoSeq, slot, lba);
    const endLba = lba === undefined ? undefined : lba + count;
    this.noteEnd({ scoSeq, slot: slot + count, scoClusters: table.length, lba: endLba, streaming: sequential || count > 1, readIndex: ++this.readCount });
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
      const ok = (await this.cache.readAt(position, view)) && firstBadCluster(view, table, slot + index) < 0;
      if (ok) this.counters.cacheClustersServed += run;
      else for (let i = index; i < index + run; i++) missing.push(i); // reused slot or bad disk: refetch
      index += run;
    }
    missing.sort((a, b) => a - b);
    const fetches: Array<Promise<void>> = [];
    for (let i = 0; i < missing.length; ) {
      let run = 1;
      while (i + run < missing.length && missing[i + run] === missing[i]! + run) run += 1;
      const part = target.subarray(missing[i]! * clusterSizeBytes, (missing[i]! + run) * clusterSizeBytes);
      fetches.push(this.fetchRun(name, scoSeq, table, slot + missing[i]!, part, sequential));
      i += run;
    }
    await Promise.all(fetches);
  }

  stats(): RemoteReadStats {
    return { ...this.counters, tablesCached: this.tables.size };
  }

  /** Fills target with slots from firstSlot on: from a fetch in flight that covers them, else fetched. */
  private async fetchRun(name: string, scoSeq: number, table: Uint32Array, firstSlot: number, target: Buffer, sequential: boolean): Promise<void> {
    const count = target.length / clusterSizeBytes;
    const covering = this.pending.get(scoSeq)?.find((fetch) => fetch.first <= firstSlot && firstSlot + count <= fetch.end);
    if (covering !== undefined) {
      const data = await covering.data.catch(() => undefined); // failed: fetch this run by itself below
      if (data !== undefined) {
        data.copy(target, 0, (firstSlot - covering.first) * clusterSizeBytes, (firstSlot - covering.first + count) * clusterSizeBytes);
        this.counters.readAheadClustersServed += count;
        return;
      }
    }
    const readAheadEnd = Math.min(table.length, firstSlot + limits.remoteReadAheadBytesMax / clusterSizeBytes);
    const end = sequential ? Math.max(firstSlot + count, readAheadEnd) : firstSlot + count;
    if (end > firstSlot + count) this.counters.readAheadFetches += 1;
    const data = await this.fetch(name, scoSeq, table, firstSlot, end);
    data.copy(target, 0, 0, target.length);
  }

  /** Slots [firstSlot, end) from the backend, verified; in `pending` while in flight, then into the cache. */
  private async fetch(name: string, scoSeq: number, table: Uint32Array, firstSlot: number, end: number): Promise<Buffer> {
    const bytes = (end - firstSlot) * clusterSizeBytes;
    const data = this.store
      .readRange(name, firstSlot * clusterSizeBytes, bytes, {
        verify: (got) => firstBadCluster(got, table, firstSlot) < 0,
        // Parts of the range let the store tell which of a stripe's fragments are silently bad.
        verifyPart: (got, at) => at % clusterSizeBytes === 0 && got.length % clusterSizeBytes === 0 && firstBadCluster(got, table, at / clusterSizeBytes) < 0,
      })
      .then((got) => {
        // No second crc pass here: readRange returns only bytes that passed `verify` (or throws).
        this.counters.remoteReads += 1;
        this.counters.remoteClustersFetched += end - firstSlot;
        this.counters.remoteBytesFetched += bytes;
        return got;
      });
    const entry: PendingFetch = { first: firstSlot, end, data };
    const list = this.pending.get(scoSeq) ?? [];
    list.push(entry);
    this.pending.set(scoSeq, list);
    try {
      const got = await data;
      await this.cache.insert(name, firstSlot, got);
      return got;
    } finally {
      list.splice(list.indexOf(entry), 1);
      if (list.length === 0 && this.pending.get(scoSeq) === list) this.pending.delete(scoSeq);
    }
  }

  /**
   * A read is sequential when it starts where the SCO's latest read ended, or a few clusters further
   * when the SCO holds the volume's clusters in LBA order there (the skipped ones were overwritten since,
   * and live in other SCOs). A sequential fill later overwritten at random leaves its SCOs full of such
   * holes; without the second rule, every run between two holes was a backend request of its own (61 per
   * 1 MiB read). In a SCO of random writes the next slot is a random LBA, so its reads are never widened.
   *
   * Random 4 KiB reads must not look sequential by chance, each a 4 MiB fetch: after a one-cluster read
   * that was not sequential itself, only a read right at its end within the next few reads counts (the
   * start of a 4 KiB sequential stream), and no gap is bridged. With ends kept for 256 SCOs, a random
   * read lands on one 1 in 1024 times, and a gap of 16 matches 1 in 64 (a full bench's cold reads from
   * S3 fetched twice the bytes before this rule).
   */
  private isSequential(scoSeq: number, slot: number, lba: number | undefined): boolean {
    const end = this.recentEnds.peek(scoSeq);
    if (end !== undefined) {
      const gap = slot - end.slot;
      const trusted = end.streaming || this.readCount - end.readIndex < limits.remoteReadRecentReadsMax;
      if (gap === 0 && trusted) return true;
      const inLbaOrder = lba !== undefined && end.lba !== undefined && lba - end.lba === gap;
      if (end.streaming && inLbaOrder && gap > 0 && gap <= limits.remoteReadAheadGapClustersMax) return true;
    }
    const before = this.recentEnds.peek(scoSeq - 1);
    return slot === 0 && before !== undefined && before.slot === before.scoClusters; // on into the next SCO
  }

  private noteEnd(end: ReadEnd): void {
    this.recentEnds.set(end.scoSeq, end);
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

/** How many crc tables of a volume's SCOs fit limits.remoteScoTableBytesMax (a full SCO's table: 4 B per cluster). */
export function scoTablesCachedMax(scoSizeBytes: number): number {
  return Math.max(1, Math.floor(limits.remoteScoTableBytesMax / ((scoSizeBytes / clusterSizeBytes) * scoChecksumBytes)));
}
