/**
 * SCO files on disk (format: docs/sco-format.md, constants: sco-format.ts): the open, appendable SCO of a
 * volume, the reader of a closed SCO, and the recovery helpers that inspect and seal a SCO left open by a
 * crash. Every read verifies the crc32c of every cluster it returns.
 */
import assert from 'node:assert';
import { crc32c } from '../shared/checksum.ts';
import type { Disk, DiskFile } from '../shared/disk.ts';
import { limits } from '../shared/limits.ts';
import { KeelError } from '../shared/errors.ts';
import {
  checkScoChecksumTable,
  checkScoTrailer,
  clusterChecksums,
  encodeScoChecksumTable,
  encodeScoTrailer,
  firstBadCluster,
  scoChecksumBytes,
  scoClusterBytes,
  scoFooterOffset,
  scoTrailerBytes,
} from './sco-format.ts';

/** Bytes read at once when recovery scans a SCO's data. */
const scanChunkBytes = 1024 * 1024;

/** Throws CHECKSUM_MISMATCH unless every cluster of `data` matches the table from `firstSlot` on. */
export function verifyClusters(data: Buffer, table: Uint32Array, firstSlot: number, scoSeq: number): void {
  const bad = firstBadCluster(data, table, firstSlot);
  if (bad < 0) return;
  const slot = firstSlot + bad;
  const actual = crc32c(data.subarray(bad * scoClusterBytes, (bad + 1) * scoClusterBytes));
  throw KeelError.checksumMismatch(`SCO ${scoSeq} slot ${slot}`, { sco: scoSeq, slot, expected: table[slot], actual });
}

/** A SCO file handle shared by readers: closes only when the last reader is done. */
abstract class ScoHandle {
  private readers = 0;
  private closeRequested = false;
  private closed?: Promise<void>;
  private resolveFileClosed!: () => void;
  private readonly fileClosed = new Promise<void>((resolve) => (this.resolveFileClosed = resolve));

  constructor(
    readonly scoSeq: number,
    protected readonly file: DiskFile,
  ) {}

  protected abstract get checksums(): Uint32Array;
  abstract get clusterCount(): number;

  /**
   * Reads `count` clusters from `slot` into target (length count * 4096) with one pread and verifies
   * them. CHECKSUM_MISMATCH on a bad cluster; CORRUPT when the file is shorter than its slots.
   */
  async readClusters(slot: number, target: Buffer): Promise<void> {
    const count = target.length / scoClusterBytes;
    assert(Number.isInteger(count) && slot >= 0 && slot + count <= this.clusterCount, 'read outside the SCO');
    this.readers += 1;
    try {
      const bytesRead = await this.file.read(target, slot * scoClusterBytes);
      if (bytesRead !== target.length) {
        throw KeelError.corrupt(`SCO ${this.scoSeq}: short read at slot ${slot}`, { sco: this.scoSeq, slot, bytesRead });
      }
    } finally {
      this.readers -= 1;
      if (this.readers === 0 && this.closeRequested) void this.close();
    }
    verifyClusters(target, this.checksums, slot, this.scoSeq);
  }

  /**
   * readClusters within this turn, when the inline-I/O gate allows a synchronous pread: true once target
   * is filled and verified. False when the read must go through readClusters (target may hold part of it).
   */
  readClustersInline(slot: number, target: Buffer): boolean {
    const count = target.length / scoClusterBytes;
    assert(Number.isInteger(count) && slot >= 0 && slot + count <= this.clusterCount, 'read outside the SCO');
    if (this.closeRequested) return false;
    if (this.file.readInline(target, slot * scoClusterBytes) !== target.length) return false;
    verifyClusters(target, this.checksums, slot, this.scoSeq);
    return true;
  }

  /** Closes now, or once the reads in flight finish. */
  close(): Promise<void> {
    this.closeRequested = true;
    if (this.readers > 0) return Promise.resolve();
    this.closed ??= this.file
      .close()
      .catch(() => undefined)
      .then(() => this.resolveFileClosed());
    return this.closed;
  }

  /**
   * Resolves once the file is closed: after close(), and after the reads in flight when there are any.
   * Before a SCO's file may be overwritten (reused as a spare), no read of the old SCO may still use it.
   */
  whenClosed(): Promise<void> {
    return this.fileClosed;
  }
}

/** The open SCO of a volume: clusters are appended in batches; its crc table is kept in RAM. */
export class OpenSco extends ScoHandle {
  private appendedClusters = 0;
  private readonly table: Uint32Array;
  /** Bytes appended since the last fsync started: see startBackgroundSync. */
  private unsyncedBytes = 0;
  private backgroundSync: Promise<void> | undefined;
  /** An fsync error is reported to one fsync call only (fsyncgate): keep it for the next awaited sync. */
  private backgroundSyncError: unknown;

  private constructor(
    scoSeq: number,
    file: DiskFile,
    readonly capacityClusters: number,
    /** A reused file, or one cut back: it may be longer than what was appended. */
    private hasStaleTail: boolean,
  ) {
    super(scoSeq, file);
    this.table = new Uint32Array(capacityClusters);
  }

  static async create(disk: Disk, filePath: string, scoSeq: number, capacityClusters: number): Promise<OpenSco> {
    assert(capacityClusters > 0 && capacityClusters <= 65536, 'a SCO holds 1..65536 clusters');
    return new OpenSco(scoSeq, await disk.open(filePath, 'createNew'), capacityClusters, false);
  }

  /**
   * Makes the file of a deleted SCO (`sparePath`, see sco-spares.ts) the new SCO at `filePath`. Its old
   * bytes past the appended clusters stay until seal() cuts them off; recovery keeps only clusters that
   * TLog records vouch for, by crc, so they are never taken for data (docs/sco-format.md).
   */
  static async reuse(disk: Disk, sparePath: string, filePath: string, scoSeq: number, capacityClusters: number): Promise<OpenSco> {
    assert(capacityClusters > 0 && capacityClusters <= 65536, 'a SCO holds 1..65536 clusters');
    await disk.rename(sparePath, filePath);
    return new OpenSco(scoSeq, await disk.open(filePath, 'readWrite'), capacityClusters, true);
  }

  protected get checksums(): Uint32Array {
    return this.table;
  }
  get clusterCount(): number {
    return this.appendedClusters;
  }
  get freeClusters(): number {
    return this.capacityClusters - this.appendedClusters;
  }

  /**
   * Appends `checksums.length` clusters, given as buffers whose lengths are whole clusters, with one
   * writev. Returns the first slot. Only one append may be in flight (the caller's batching ensures it).
   */
  async append(buffers: readonly Uint8Array[], checksums: Uint32Array): Promise<number> {
    const firstSlot = this.appendedClusters;
    assert(checksums.length <= this.freeClusters, 'append beyond the SCO capacity');
    await this.file.writev(buffers, firstSlot * scoClusterBytes);
    this.table.set(checksums, firstSlot);
    this.appendedClusters += checksums.length;
    this.unsyncedBytes += checksums.length * scoClusterBytes;
    this.startBackgroundSync();
    return firstSlot;
  }

  /**
   * Forgets the clusters from slot `clusterCount` on (a batch whose TLog records could not be written):
   * nothing vouches for them, and the next append writes over their slots.
   */
  cutBack(clusterCount: number): void {
    assert(clusterCount <= this.appendedClusters, 'cut back beyond the end');
    this.appendedClusters = clusterCount;
    this.hasStaleTail = true; // the failed append may have written past the new end
  }

  async sync(): Promise<void> {
    await this.backgroundSync;
    if (this.backgroundSyncError !== undefined) throw KeelError.io(`fsync of SCO ${this.scoSeq} failed`, this.backgroundSyncError);
    this.unsyncedBytes = 0;
    await this.file.sync();
  }

  /**
   * Sealing fsyncs the SCO on the append path; with a whole SCO of dirty pages that stalled every write for
   * 100+ ms (fio's p99.9). Flushing in the background every scoBackgroundSyncBytes keeps that backlog small.
   * Nothing waits for these: durability still comes from the awaited sync() at FLUSH, FUA and seal.
   */
  private startBackgroundSync(): void {
    if (this.backgroundSync !== undefined || this.unsyncedBytes < limits.scoBackgroundSyncBytes) return;
    this.unsyncedBytes = 0;
    this.backgroundSync = this.file
      .sync()
      .catch((err: unknown) => {
        this.backgroundSyncError ??= err;
      })
      .finally(() => {
        this.backgroundSync = undefined;
      });
  }

  /** Writes the footer and fsyncs; the handle lives on in the returned ClosedSco (reads keep working). */
  async seal(): Promise<ClosedSco> {
    const clusterCount = this.appendedClusters;
    const tableBytes = encodeScoChecksumTable(this.table, clusterCount);
    const tableCrc = crc32c(tableBytes);
    const trailer = encodeScoTrailer({ scoSeq: this.scoSeq, clusterCount, tableCrc });
    // Readers find the footer at the end of the file: a reused file's old tail must go first.
    if (this.hasStaleTail) await this.file.truncate(scoFooterOffset(clusterCount));
    await this.file.writev([tableBytes, trailer], scoFooterOffset(clusterCount));
    await this.sync();
    return new ClosedSco(this.scoSeq, this.file, this.table.slice(0, clusterCount), tableCrc);
  }
}

/** A closed, immutable SCO opened for reading; its crc table was validated against the trailer. */
export class ClosedSco extends ScoHandle {
  constructor(
    scoSeq: number,
    file: DiskFile,
    private readonly table: Uint32Array,
    readonly tableCrc: number,
  ) {
    super(scoSeq, file);
  }

  protected get checksums(): Uint32Array {
    return this.table;
  }
  get clusterCount(): number {
    return this.table.length;
  }
  /** The crc32c of one slot's cluster, as recorded at ingest. */
  checksumOf(slot: number): number {
    return this.table[slot];
  }
  /** Bytes of RAM the crc table takes (for cache accounting). */
  get tableBytes(): number {
    return this.table.byteLength;
  }

  /** Opens a closed SCO; CORRUPT when its footer is missing or invalid. */
  static async open(disk: Disk, filePath: string, scoSeq: number): Promise<ClosedSco> {
    const file = await disk.open(filePath, 'read');
    try {
      const footer = await readScoFooter(file, scoSeq);
      if (footer === undefined) throw KeelError.corrupt(`SCO ${scoSeq}: no valid footer`, { sco: scoSeq, path: filePath });
      return new ClosedSco(scoSeq, file, footer.table, footer.tableCrc);
    } catch (err) {
      await file.close().catch(() => undefined);
      throw err;
    }
  }
}

/** The crc table of a sealed SCO file, or undefined when it has no valid footer (left open by a crash). */
export async function readScoFooter(
  file: DiskFile,
  scoSeq: number,
): Promise<{ table: Uint32Array; tableCrc: number } | undefined> {
  const sizeBytes = await file.sizeBytes();
  if (sizeBytes < scoTrailerBytes) return undefined;
  const trailerBytes = Buffer.alloc(scoTrailerBytes);
  await file.read(trailerBytes, sizeBytes - scoTrailerBytes);
  const trailer = checkScoTrailer(trailerBytes, sizeBytes, scoSeq);
  if (trailer === undefined) return undefined;
  const tableBytes = Buffer.alloc(trailer.clusterCount * scoChecksumBytes);
  await file.read(tableBytes, scoFooterOffset(trailer.clusterCount));
  const table = checkScoChecksumTable(tableBytes, trailer);
  return table === undefined ? undefined : { table, tableCrc: trailer.tableCrc };
}

/** crc32c of every whole cluster in an unsealed SCO file (recovery), reading 1 MiB at a time. */
export async function scanClusterChecksums(file: DiskFile, clustersMax: number): Promise<Uint32Array> {
  const sizeBytes = await file.sizeBytes();
  const clusterCount = Math.min(Math.floor(sizeBytes / scoClusterBytes), clustersMax);
  const table = new Uint32Array(clusterCount);
  const chunk = Buffer.alloc(scanChunkBytes);
  for (let slot = 0; slot < clusterCount; ) {
    const clusters = Math.min(clusterCount - slot, scanChunkBytes / scoClusterBytes);
    const view = chunk.subarray(0, clusters * scoClusterBytes);
    await file.read(view, slot * scoClusterBytes);
    clusterChecksums(view, table, slot);
    slot += clusters;
  }
  return table;
}

/**
 * Seals a SCO a crash left open: truncates it to `clusterCount` clusters (later ones were never
 * acknowledged), appends crc table + trailer, fsyncs. `checksums` come from scanClusterChecksums.
 */
export async function sealCrashedSco(
  disk: Disk,
  filePath: string,
  scoSeq: number,
  checksums: Uint32Array,
  clusterCount: number,
): Promise<{ tableCrc: number }> {
  assert(clusterCount <= checksums.length, 'cannot seal clusters that are not in the file');
  const file = await disk.open(filePath, 'readWrite');
  try {
    await file.truncate(scoFooterOffset(clusterCount));
    const tableBytes = encodeScoChecksumTable(checksums, clusterCount);
    const tableCrc = crc32c(tableBytes);
    await file.writev([tableBytes, encodeScoTrailer({ scoSeq, clusterCount, tableCrc })], scoFooterOffset(clusterCount));
    await file.sync();
    return { tableCrc };
  } finally {
    await file.close();
  }
}
