/**
 * The volume driver: one volume as a log-structured store (docs/volume-driver.md). Writes are appended
 * as 4 KiB clusters to the open SCO and logged in the TLog, in batches (group commit: at most one append
 * in flight; requests arriving meanwhile form the next batch, one writev + one TLog write). A write is
 * acknowledged once both writes reached the files, and only then is the LBA map updated, in slot order.
 * FLUSH/FUA fsync the SCO, append a SYNC marker and fsync the TLog. Reads look clusters up in the map
 * (unmapped clusters read as zeros without I/O), coalesce contiguous slots into one pread and verify
 * every cluster's crc32c.
 *
 * With a backend (docs/backend-volumes.md) sealed SCOs and closed TLogs are uploaded by a ScoUploader,
 * writes pass the router's write buffer bound first, SCOs evicted from the write buffer are read through
 * RemoteScoReader (read cache, then the backend), and a volume whose directory is empty is restored from
 * the TLogs in the backend before recovery.
 */
import assert from 'node:assert';
import path from 'node:path';
import type { OpenBlockTarget } from '../shared/block-target.ts';
import { crc32c } from '../shared/checksum.ts';
import { NodeDisk, type Disk } from '../shared/disk.ts';
import { KeelError, isKeelError } from '../shared/errors.ts';
import { clusterSizeBytes, limits } from '../shared/limits.ts';
import { silentLogger, type Logger } from '../shared/logger.ts';
import { ClosedScoCache } from './closed-sco-cache.ts';
import { ScoSpares, type ScoSparesStats } from './sco-spares.ts';
import { LbaMap, locationSco, locationSlot, packLocation } from './lba-map.ts';
import { OpenSco, type ClosedSco } from './sco-file.ts';
import { scoFileName } from './sco-format.ts';
import { decodeTlogRecord, encodeTlogRecord, encodeWriteRecord, tlogFileName, tlogRecordBytes } from './tlog-format.ts';
import { TlogWriter } from './tlog-writer.ts';
import { listSeqs, recoverVolume } from './volume-recovery.ts';
import { restoreVolumeTlogs } from './backend-volume-objects.ts';
import { RemoteScoReader, scoTablesCachedMax, type RemoteReadStats } from './remote-sco-reader.ts';
import { ScoLiveCounts } from './sco-live-counts.ts';
import { ScoUploader, type UploaderStats } from './sco-uploader.ts';
import { clusterChecksums, scoChecksumBytes, scoTrailerBytes, parseScoFileName } from './sco-format.ts';
import { parseTlogFileName } from './tlog-format.ts';
import { decodeUploadManifest, emptyUploadManifest, encodeUploadManifest, uploadManifestFileName, type UploadManifest } from './upload-manifest.ts';
import type { VolumeBackend } from './volume-backend.ts';
import type { VolumeUnderlay } from './volume-underlay.ts';
import type { WriteJournal } from './write-journal.ts';
import type { ClusterRamCache, RamCacheView } from './cluster-ram-cache.ts';
import { loadScrubbedScos } from './scrubbed-scos.ts';

export interface VolumeDriverOptions {
  dir: string;
  volumeName: string;
  sizeBytes: number;
  scoSizeBytes: number;
  disk?: Disk;
  logger?: Logger;
  /** Tests only: allow SCOs smaller than limits.scoSizeBytesMin (rollover tests without 4 MiB writes). */
  scoSizeBytesMinOverride?: number;
  /** Where the volume's data lives beyond the write buffer; without it the volume is local only. */
  backend?: VolumeBackend;
  /** A clone's parent snapshot: clusters this volume never wrote nor trimmed read from it (docs/snapshots.md). */
  underlay?: VolumeUnderlay;
  /** The router's RAM tier of cluster data (router/cluster-ram-cache.ts); small reads look there first. */
  ramCache?: ClusterRamCache;
}

/** The backend side of a volume: uploads, and reads of SCOs no longer in the write buffer. */
interface VolumeRemote {
  uploader: ScoUploader;
  reader: RemoteScoReader;
}

/** volume.json: what a volume directory is, written atomically. */
interface VolumeMetadata {
  formatVersion: number;
  name: string;
  sizeBytes: number;
  scoSizeBytes: number;
  clusterSizeBytes: number;
}
const volumeFormatVersion = 1;
const metadataFileName = 'volume.json';
/** How a dropped scrubber rewrite completes (rewriteCluster turns it into `false`). */
const rewriteDropped = new KeelError('BUSY', 'scrubber rewrite dropped: the cluster changed meanwhile');
/** TRIM records one batch may carry besides its clusters (the record buffer is sized for them). */
const batchTrimRecordsMax = 64;

type VolumeStatus = 'open' | 'closing' | 'closed' | 'failed';

/** Work for the append loop, in arrival order. One job per request, never one per cluster. */
interface AppendJob {
  kind: 'write' | 'trim' | 'sync' | 'records';
  lba: number;
  /** write: clusters in data; trim: clusters to unmap. */
  clusterCount: number;
  data: Buffer | undefined;
  /** write: clusters already placed into batches. */
  taken: number;
  /** A scrubber rewrite (one cluster): written only if the LBA still maps here when its batch forms; else 0. */
  expectedLocation: number;
  /** records: encoded TLog records without data (snapshots, rollback remaps), applied like replay applies them. */
  records: Buffer | undefined;
  /** write: crc32c of each cluster of data when the caller computed them already; else the batch does. */
  checksums: Uint32Array | undefined;
  resolve: () => void;
  reject: (err: unknown) => void;
}

/** One slice of a write job inside a batch: `count` clusters from job cluster `from`, at slot `firstSlot`. */
interface BatchEntry {
  job: AppendJob;
  from: number;
  count: number;
  firstSlot: number;
}

interface ClusterLock {
  ready: Promise<unknown>;
  release: () => void;
}

export class VolumeDriver implements OpenBlockTarget {
  readonly readOnly = false as const;
  private status: VolumeStatus = 'open';
  private failure: KeelError | undefined;
  private currentSizeBytes: number;

  private readonly queue: AppendJob[] = [];
  private queueHead = 0;
  private appending = false;
  /** The running append loop: requests are acknowledged before it finishes a SCO roll, so close() waits for it. */
  private appendLoopRunning: Promise<void> = Promise.resolve();
  private readonly spaceWaiters: Array<() => void> = [];
  private jobsEnqueued = 0;
  private jobsCompleted = 0;
  private readonly appliedWaiters: Array<{ target: number; resolve: () => void; reject: (err: unknown) => void }> = [];
  private readonly clusterLocks = new Map<number, Promise<void>>();
  private operationsInFlight = 0;
  private idleWaiters: Array<() => void> = [];

  // Reused for every batch: no per-batch allocation of checksums or TLog records.
  private readonly batchChecksums = new Uint32Array(limits.appendBatchClustersMax);
  private readonly batchRecords = Buffer.alloc((limits.appendBatchClustersMax + batchTrimRecordsMax + 4) * tlogRecordBytes);

  private readonly counters = { appendedClusters: 0, appendBatches: 0, syncs: 0, readClusters: 0, scosCreated: 0, tlogsCreated: 0, pressureRolls: 0, userMapChanges: 0, noSpaceBatches: 0, localCopyFailures: 0 };
  /** Since when batches fail on a full disk (undefined: they do not). */
  private noSpaceSinceMs: number | undefined;
  /** Write buffer pressure asked for the open SCO and TLog to close early (done at the end of the next batch). */
  private rollRequested = false;
  /** The current TLog holds changes (so a clean close closes it for upload). */
  private tlogDirty: boolean;
  private remote: VolumeRemote | undefined;
  /** Map entries per SCO, so a SCO that dies leaves the write buffer at once (router/sco-live-counts.ts). */
  private readonly liveCounts: ScoLiveCounts;
  private underlay: VolumeUnderlay | undefined;
  /**
   * The fsync of the SCO directory after the open SCO was created. Writes go on meanwhile: a crash before
   * it lands can only lose the new file with records past the TLog's durable point, which recovery drops
   * as torn writes. Durable points wait for it (appendDurablePoint), so none ever covers such a file.
   */
  private scoDirSynced: Promise<void> = Promise.resolve();
  /** The scrubber asked for the current TLog to close (so its SCO_DELETED records reach the backend). */
  private tlogCloseRequested = false;
  /**
   * Rolls a full disk interrupted, with the steps already done, so that the next batch does only the rest
   * (docs/volume-driver.md, "Disk full"): a sealed SCO, perhaps logged as closed, whose successor does not
   * exist yet; or a TLog closed (TLOG_CLOSED durable) whose successor does not exist yet.
   */
  private interruptedScoRoll: { sealed: ClosedSco; logged: boolean } | undefined;
  private interruptedTlogRoll: TlogWriter | undefined;
  private volumeBackend: VolumeBackend | undefined;
  /** Set by the router's HA layer: every write and trim also goes to the volume's DTL. */
  journal: WriteJournal | undefined;
  /** Set by the router (volume-registry.ts): told once when an I/O error fails the volume, to hand it over. */
  onFailed: ((cause: KeelError) => void) | undefined;
  private ramCache: RamCacheView | undefined;

  private constructor(
    private readonly disk: Disk,
    private readonly dir: string,
    readonly volumeName: string,
    sizeBytes: number,
    readonly scoSizeBytes: number,
    private readonly logger: Logger,
    private readonly map: LbaMap,
    private tlog: TlogWriter,
    private openSco: OpenSco,
    private readonly closedScos: ClosedScoCache,
    private readonly spares: ScoSpares,
    private scoCount: number,
    private tlogCount: number,
  ) {
    this.currentSizeBytes = sizeBytes;
    this.liveCounts = ScoLiveCounts.of(map);
    this.tlogDirty = tlog.recordCount > 2; // a fresh TLog holds HEADER + the recovery SYNC
  }

  get sizeBytes(): number {
    return this.currentSizeBytes;
  }

  /** The TLog being written now, and the last one on the backend: the DTL trims by them (router/dtl-journal.ts). */
  get currentTlogSeq(): number {
    return this.tlog.tlogSeq;
  }
  get tlogsUploadedThrough(): number | undefined {
    return this.remote?.uploader.lastUploadedTlog; // read after every DTL ack: no stats object for it
  }

  private static scoDir(dir: string): string {
    return path.join(dir, 'scos');
  }
  private static tlogDir(dir: string): string {
    return path.join(dir, 'tlogs');
  }

  /** Opens a volume: creates the directory when new, else recovers the map from the TLogs. */
  static async open(options: VolumeDriverOptions): Promise<VolumeDriver> {
    const disk = options.disk ?? new NodeDisk();
    const logger = options.logger ?? silentLogger();
    checkGeometry(options.sizeBytes, options.scoSizeBytes, options.scoSizeBytesMinOverride);
    const scoDir = VolumeDriver.scoDir(options.dir);
    const tlogDir = VolumeDriver.tlogDir(options.dir);
    await disk.mkdirp(scoDir);
    await disk.mkdirp(tlogDir);
    const backend = options.backend;
    let scoSeqFloor = 0;
    if (backend !== undefined && (await disk.readFile(path.join(options.dir, metadataFileName))) === undefined) {
      // An empty (or lost) volume directory: whatever is in the backend is the volume.
      const restored = await restoreVolumeTlogs(backend, disk, tlogDir, logger);
      scoSeqFloor = restored.scoSeqMax;
      const manifest: UploadManifest = { tlogsUploadedThrough: restored.tlogCount, scosUploaded: [] };
      await disk.writeFileAtomic(path.join(options.dir, uploadManifestFileName), encodeUploadManifest(manifest));
    }
    const metadata = await loadOrCreateMetadata(disk, options, logger);
    const clustersPerSco = metadata.scoSizeBytes / clusterSizeBytes;
    const startedMs = Date.now();
    const reader = backend !== undefined ? new RemoteScoReader(backend.store, backend.volumeId, backend.readCache, scoTablesCachedMax(metadata.scoSizeBytes)) : undefined;
    const remoteTable =
      reader === undefined
        ? undefined
        : (sco: number) =>
            reader.table(sco).catch((err: unknown): undefined | 'unreadable' => {
              if (isKeelError(err, 'OBJECT_NOT_FOUND')) return undefined;
              // Lost beyond repair (or damaged): the volume opens, and only this SCO's clusters fail reads.
              if (isKeelError(err, 'IO') || isKeelError(err, 'CORRUPT') || isKeelError(err, 'CHECKSUM_MISMATCH')) {
                logger.error({ dir: options.dir, sco, err: (err as Error).message }, 'SCO unreadable in the backend: its clusters will fail reads (keel backend verify; keel backend repair)');
                return 'unreadable';
              }
              throw err;
            });
    const deletedScos = await loadScrubbedScos(disk, options.dir);
    const recovered = await recoverVolume({ disk, scoDir, tlogDir, clustersPerSco, logger, scoSeqFloor, deletedScos, ...(remoteTable ? { remoteTable } : {}) });
    const openSco = await OpenSco.create(disk, path.join(scoDir, scoFileName(recovered.nextScoSeq)), recovered.nextScoSeq, clustersPerSco);
    await disk.syncDir(scoDir);
    logger.info(
      {
        volume: metadata.name,
        mappedClusters: recovered.map.mappedCount,
        replayedWrites: recovered.replayedWrites,
        discardedRecords: recovered.discardedRecords,
        sealedScos: recovered.sealedScos,
        recoveryMs: Date.now() - startedMs,
      },
      'volume driver open',
    );
    const driver = new VolumeDriver(
      disk,
      options.dir,
      metadata.name,
      metadata.sizeBytes,
      metadata.scoSizeBytes,
      logger,
      recovered.map,
      recovered.tlog,
      openSco,
      new ClosedScoCache(disk, scoDir, limits.scoChecksumTablesCachedMax),
      await ScoSpares.open(disk, options.dir, logger),
      recovered.scoCount + 1,
      recovered.tlogCount,
    );
    if (backend !== undefined && reader !== undefined) {
      const state = {
        manifest: await loadUploadManifest(disk, options.dir),
        localSealedScos: await sealedScoSizes(disk, scoDir, openSco.scoSeq),
        closedTlogs: (await listSeqs(disk, tlogDir, parseTlogFileName)).filter((seq) => seq < recovered.tlog.tlogSeq),
        scoClosedIn: recovered.scoClosedIn,
      };
      const uploader = new ScoUploader(
        {
          disk,
          volumeName: metadata.name,
          dir: options.dir,
          backend,
          logger,
          relievePressure: () => driver.relievePressure(),
          evictSco: (seq) => driver.evictLocalSco(seq),
          isScoDead: (seq) => seq !== driver.openSco.scoSeq && driver.liveCounts.isDead(seq),
        },
        state,
      );
      uploader.scoCreated(openSco.scoSeq);
      driver.remote = { uploader, reader };
    }
    driver.underlay = options.underlay;
    driver.volumeBackend = options.backend;
    driver.ramCache = options.ramCache?.openView();
    return driver;
  }

  /** Deletes every file of a volume. The volume must not be open. */
  static async destroy(dir: string, disk: Disk = new NodeDisk()): Promise<void> {
    await disk.remove(dir);
  }

  // ---------------------------------------------------------------- BlockTarget

  async read(offset: number, length: number): Promise<Buffer> {
    const result = Buffer.allocUnsafe(length);
    await this.readInto(result, offset);
    return result;
  }

  /** Fills all of target (holes read as zeros) from `offset`. */
  async readInto(target: Buffer, offset: number): Promise<void> {
    this.checkRequest(offset, target.length, limits.nbdRequestBytesMax);
    if (target.length === 0) return;
    return this.tracked(() => this.readRange(target, offset));
  }

  /**
   * readInto within this turn, for whole clusters that are holes or lie in local SCOs whose files are
   * open, while the inline-I/O gate allows synchronous reads: true once target is filled. False means
   * "use readInto" (target may hold part of the data). A cache-hit read then costs no promise at all,
   * which the router's profile showed as a fifth of its CPU per 4 KiB read.
   */
  readIntoInline(target: Buffer, offset: number): boolean {
    this.checkRequest(offset, target.length, limits.nbdRequestBytesMax);
    if (offset % clusterSizeBytes !== 0 || target.length % clusterSizeBytes !== 0) return false;
    const firstLba = offset / clusterSizeBytes;
    const endLba = firstLba + target.length / clusterSizeBytes;
    const ram = this.ramCacheFor(endLba - firstLba);
    let lba = firstLba;
    while (lba < endLba) {
      const location = this.map.get(lba);
      const at = (lba - firstLba) * clusterSizeBytes;
      if (location === 0) {
        if (this.underlay?.covers(lba)) return false;
        target.fill(0, at, at + clusterSizeBytes);
        lba += 1;
        continue;
      }
      if (ram?.read(location, target, at)) {
        this.counters.readClusters += 1;
        lba += 1;
        continue;
      }
      const count = this.runLength(lba, location, endLba);
      const sco = this.openLocalSco(locationSco(location));
      if (sco === undefined || !this.readLocalInline(sco, locationSlot(location), target.subarray(at, at + count * clusterSizeBytes))) return false;
      ram?.fill(location, target, at, count);
      this.counters.readClusters += count;
      lba += count;
    }
    return true;
  }

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    this.checkRequest(offset, data.length, limits.nbdRequestBytesMax);
    const account = this.remote?.uploader.account;
    if (account !== undefined && !account.admitsNow(data.length)) {
      await account.admit(data.length); // the write buffer bound: may delay or wait
      this.checkUsable();
    }
    // Inline rather than through tracked(): the hot path of every write, where each async layer costs a
    // promise and a microtask turn.
    const journal = this.journal; // DTL (docs/dtl.md): records the write and decides when it may be acknowledged
    // An aligned write's cluster crcs, computed once: for its TLog records, and folded into its DTL record's crc.
    const checksums = journal !== undefined && isClusterAligned(offset, data.length) ? clusterChecksums(data, new Uint32Array(data.length / clusterSizeBytes)) : undefined;
    this.operationsInFlight += 1;
    try {
      await (journal ? journal.write(offset, data, () => this.writeRange(offset, data, checksums), checksums) : this.writeRange(offset, data));
    } finally {
      this.untrack();
    }
    if (fua) await this.flush();
  }

  async flush(): Promise<void> {
    this.checkUsable();
    await this.tracked(() => this.enqueue('sync', 0, 0, undefined));
  }

  async trim(offset: number, length: number, fua: boolean): Promise<void> {
    this.checkRequest(offset, length, Number.MAX_SAFE_INTEGER);
    const journal = this.journal;
    await this.tracked(() => (journal ? journal.trim(offset, length, () => this.unmapRange(offset, length)) : this.unmapRange(offset, length)));
    if (fua) await this.flush();
  }

  /** Unmapped clusters read as zeros, so zeroing is trimming (partial edges are written as zeros). */
  async writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    await this.trim(offset, length, fua);
  }

  async resize(newSizeBytes: number): Promise<void> {
    this.checkUsable();
    checkGeometry(newSizeBytes, this.scoSizeBytes, clusterSizeBytes);
    const oldSizeBytes = this.currentSizeBytes;
    if (newSizeBytes === oldSizeBytes) return;
    await this.tracked(async () => {
      if (newSizeBytes < oldSizeBytes) {
        this.currentSizeBytes = newSizeBytes; // new requests beyond the end fail from now on
        await this.unmapRange(newSizeBytes, oldSizeBytes - newSizeBytes);
        await this.enqueue('sync', 0, 0, undefined);
      }
      await this.disk.writeFileAtomic(path.join(this.dir, metadataFileName), this.metadataBytes(newSizeBytes));
      this.currentSizeBytes = newSizeBytes;
    });
    this.logger.info({ volume: this.volumeName, oldSizeBytes, newSizeBytes }, 'volume resized');
  }

  /** Waits for every pending request, seals the open SCO and makes everything durable. */
  async close(): Promise<void> {
    if (this.status === 'closed' || this.status === 'closing') return;
    const wasFailed = this.status === 'failed';
    this.setStatus('closing');
    await this.whenIdle();
    await this.appendLoopRunning;
    try {
      if (!wasFailed) await this.sealOnClose();
      if (!wasFailed && this.remote !== undefined) await this.closeForUpload(this.remote);
    } finally {
      await this.remote?.uploader.close();
      await this.closedScos.closeAll();
      await this.tlog.close().catch(() => undefined);
      this.ramCache?.close();
      this.ramCache = undefined;
      this.setStatus('closed');
    }
  }

  stats(): {
    mappedClusters: number;
    mapBytes: number;
    scoCount: number;
    tlogCount: number;
    openScoSeq: number;
    openScoClusters: number;
    tlogSeq: number;
    queuedJobs: number;
    appendedClusters: number;
    appendBatches: number;
    syncs: number;
    readClusters: number;
    checksumTablesCached: number;
    pressureRolls: number;
    /** Batches refused because the disk was full (their writes failed with ENOSPC). */
    noSpaceBatches: number;
    /** Reads whose local SCO copy failed (checksum, I/O) and were served from the backend. */
    localCopyFailures: number;
    /** 1 once an I/O error failed the volume (every request fails until its router reopens it), else 0: an alert for /metrics. */
    failed: number;
    /** Batches with a user write, trim or rollback since open (not the scrubber's own moves): unchanged means no new garbage. */
    userMapChanges: number;
    scoSpares: ScoSparesStats;
    backend?: UploaderStats & RemoteReadStats;
  } {
    return {
      mappedClusters: this.map.mappedCount,
      mapBytes: this.map.memoryBytes(),
      scoCount: this.scoCount,
      tlogCount: this.tlogCount,
      openScoSeq: this.openSco.scoSeq,
      openScoClusters: this.openSco.clusterCount,
      tlogSeq: this.tlog.tlogSeq,
      queuedJobs: this.queue.length - this.queueHead,
      appendedClusters: this.counters.appendedClusters,
      appendBatches: this.counters.appendBatches,
      syncs: this.counters.syncs,
      readClusters: this.counters.readClusters,
      checksumTablesCached: this.closedScos.size,
      pressureRolls: this.counters.pressureRolls,
      noSpaceBatches: this.counters.noSpaceBatches,
      localCopyFailures: this.counters.localCopyFailures,
      failed: this.status === 'failed' ? 1 : 0,
      userMapChanges: this.counters.userMapChanges,
      scoSpares: this.spares.stats(),
      ...(this.remote ? { backend: { ...this.remote.uploader.stats(), ...this.remote.reader.stats() } } : {}),
    };
  }

  // ---------------------------------------------------------------- snapshots, clones, scrubbing (docs/snapshots.md)

  /**
   * Appends TLog records that carry no data (SNAPSHOT markers, rollback's WRITEs pointing at clusters that
   * already exist, TRIMs) at the current point of the stream, applies them to the map the way replay
   * does, and resolves once a SYNC after them is durable (`sync` false: once they are in the TLog).
   */
  async appendRecords(records: Buffer, sync = true): Promise<void> {
    this.checkUsable();
    const count = records.length / tlogRecordBytes;
    assert(Number.isInteger(count) && count > 0 && count <= batchTrimRecordsMax, 'appendRecords takes 1..64 whole records');
    await this.tracked(() => Promise.all([this.enqueue('records', 0, 0, undefined, records), sync ? this.enqueue('sync', 0, 0, undefined) : undefined]));
  }

  /** Grows with every user read and every batch of user writes: the scrubber slows down while it moves. */
  get userActivity(): number {
    return this.counters.readClusters + this.counters.userMapChanges;
  }

  /** The scrubber deletes dead SCO objects from here (docs/snapshots.md, "Scrubbing"). */
  get backend(): VolumeBackend | undefined {
    return this.volumeBackend;
  }

  /** Most records one appendRecords call takes. */
  static readonly recordsPerAppendMax = batchTrimRecordsMax;

  /** The live map, read-only (a snapshot of it is only consistent while no request is running). */
  mapView(): Pick<LbaMap, 'get' | 'forEach' | 'mappedCount'> {
    return this.map;
  }

  /** Verified clusters of one SCO of this volume, wherever it is (open SCO, write buffer, backend). */
  readScoClusters(scoSeq: number, slot: number, buffer: Buffer): Promise<void> {
    this.checkUsable();
    return this.tracked(() => this.readClustersOf(scoSeq, slot, buffer));
  }

  /** The scrubber deletes a sealed SCO nothing references (recorded in scrubbed-scos.json first). */
  async deleteScoFile(scoSeq: number): Promise<void> {
    assert(scoSeq !== this.openSco.scoSeq, 'the open SCO is never deleted');
    await this.retireScoFile(scoSeq);
  }

  /** The file of a SCO that is gone locally becomes a spare once its readers are done, or is removed. */
  private async retireScoFile(scoSeq: number): Promise<void> {
    this.closedScos.drop(scoSeq);
    const scoPath = path.join(VolumeDriver.scoDir(this.dir), scoFileName(scoSeq));
    // An open that raced the rename holds the file too: whenUnused drops it again and waits for it.
    await this.spares.retire(scoPath, scoSeq, () => this.closedScos.whenUnused(scoSeq));
  }

  /**
   * The scrubber moves a live cluster out of a mostly-garbage SCO: `data` (read from `expectedLocation`)
   * is appended like any write, but only if the LBA still maps to `expectedLocation` when the batch forms
   * (the batch before it has been applied then), so a concurrent user write always wins. True if written.
   */
  async rewriteCluster(lba: number, expectedLocation: number, data: Buffer): Promise<boolean> {
    this.checkUsable();
    assert(data.length === clusterSizeBytes && expectedLocation !== 0);
    try {
      await this.tracked(() => this.enqueue('write', lba, 1, data, undefined, expectedLocation));
      return true;
    } catch (err) {
      if (err === rewriteDropped) return false;
      throw err;
    }
  }

  /** A rewrite is stale when its LBA moved, or an earlier job of the forming batch touches it. */
  private rewriteIsStale(job: AppendJob, entries: BatchEntry[]): boolean {
    if (this.map.get(job.lba) !== job.expectedLocation) return true;
    return entries.some((entry) => entry.job.kind !== 'records' ? entry.job.lba <= job.lba && job.lba < entry.job.lba + entry.job.clusterCount : true);
  }

  /**
   * Seals the open SCO (when it holds data) and closes the current TLog at the end of the next batch, so
   * that the uploader can take them; resolves when done. Returns the seq of the TLog that was closed.
   */
  async closeCurrentTlog(): Promise<number> {
    this.checkUsable();
    const tlogSeq = this.tlog.tlogSeq;
    this.tlogCloseRequested = true;
    await this.tracked(() => this.enqueue('sync', 0, 0, undefined));
    return tlogSeq;
  }

  private async closeTlogForUpload(): Promise<void> {
    this.tlogCloseRequested = false;
    if (this.openSco.clusterCount > 0) await this.rollSco();
    if (this.tlog.recordCount > 2) await this.rollTlog(); // more than HEADER + a SYNC: something to upload
  }

  private applyRecords(records: Buffer): void {
    for (let at = 0; at < records.length; at += tlogRecordBytes) {
      const record = decodeTlogRecord(records, at);
      assert(record !== undefined, 'appendRecords encodes valid records');
      if (record.type === 'write') this.mapCluster(record.lba, packLocation(record.sco, record.slot));
      else if (record.type === 'trim') {
        this.unmapClusters(record.lba, record.count);
        this.underlay?.mask(record.lba, record.count);
      } else if (record.type === 'fallthrough') {
        this.unmapClusters(record.lba, record.count);
        this.underlay?.unmask(record.lba, record.count);
      }
    }
  }

  // ---------------------------------------------------------------- state

  private setStatus(next: VolumeStatus, err?: unknown): void {
    if (next === this.status) return;
    const log = next === 'failed' ? this.logger.error.bind(this.logger) : this.logger.debug.bind(this.logger);
    log({ volume: this.volumeName, from: this.status, to: next, err }, 'volume driver status');
    this.status = next;
  }

  private checkUsable(): void {
    if (this.status === 'failed') throw this.failure!;
    if (this.status !== 'open') throw KeelError.closed(`volume '${this.volumeName}'`);
  }

  private checkRequest(offset: number, length: number, lengthMax: number): void {
    this.checkUsable();
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw KeelError.badArgument(`bad request offset ${offset} length ${length}`);
    }
    if (length > lengthMax) throw KeelError.requestTooLarge(length, lengthMax);
    if (offset + length > this.currentSizeBytes) throw KeelError.outOfRange(offset, length, this.currentSizeBytes);
  }

  /** Counts an operation so close() can wait for it. */
  private async tracked<T>(operation: () => Promise<T>): Promise<T> {
    this.operationsInFlight += 1;
    try {
      return await operation();
    } finally {
      this.untrack();
    }
  }

  private untrack(): void {
    this.operationsInFlight -= 1;
    if (this.operationsInFlight === 0) for (const wake of this.idleWaiters.splice(0)) wake();
  }

  private whenIdle(): Promise<void> {
    if (this.operationsInFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /**
   * The append loop failed: nothing more is accepted; pending and future requests fail with the cause, or
   * with CLOSED when the router hands the volume to another one (onFailed): the edges re-send them there.
   */
  private fail(err: unknown): void {
    if (this.failure !== undefined) return;
    const cause = isKeelError(err) ? err : KeelError.io(`volume '${this.volumeName}' failed`, err);
    this.failure = this.onFailed === undefined ? cause : KeelError.closed(`volume '${this.volumeName}' (it failed here: ${cause.message}; another router takes it over)`);
    this.setStatus('failed', err);
    for (let index = this.queueHead; index < this.queue.length; index++) this.queue[index].reject(this.failure);
    this.queue.length = 0;
    this.queueHead = 0;
    for (const waiter of this.appliedWaiters.splice(0)) waiter.reject(this.failure);
    for (const wake of this.spaceWaiters.splice(0)) wake();
    this.onFailed?.(cause);
  }

  // ---------------------------------------------------------------- write path

  /**
   * Not async: an aligned write that no read-modify-write holds is queued in this call (the hot path).
   * `checksums`: crc32c of each cluster of data, when the caller has them (aligned writes only).
   */
  private writeRange(offset: number, data: Buffer, checksums?: Uint32Array): Promise<void> {
    if (data.length === 0) return Promise.resolve();
    const firstLba = Math.floor(offset / clusterSizeBytes);
    const endByte = offset + data.length;
    const lastLba = Math.floor((endByte - 1) / clusterSizeBytes);
    const aligned = isClusterAligned(offset, data.length);
    if (aligned && this.lockedLbasIn(firstLba, lastLba).length === 0) return this.enqueue('write', firstLba, lastLba - firstLba + 1, data, undefined, 0, checksums);
    return this.writeRangeLocked(offset, data, firstLba, lastLba, aligned, checksums);
  }

  private async writeRangeLocked(offset: number, data: Buffer, firstLba: number, lastLba: number, aligned: boolean, checksums?: Uint32Array): Promise<void> {
    if (aligned) {
      // Behind a read-modify-write: hold the whole range, so later RMWs of it wait for this write too.
      const range: number[] = [];
      for (let lba = firstLba; lba <= lastLba; lba++) range.push(lba);
      const lock = this.lockClusters(range);
      try {
        await lock.ready;
        return await this.enqueue('write', firstLba, lastLba - firstLba + 1, data, undefined, 0, checksums);
      } finally {
        lock.release();
      }
    }
    // Read-modify-write of the partial clusters at the edges, serialized per cluster.
    const edges = new Set([firstLba, lastLba, ...this.lockedLbasIn(firstLba, lastLba)]);
    const lock = this.lockClusters([...edges]);
    try {
      await lock.ready;
      await this.waitForApplied(this.jobsEnqueued); // the edges must reflect every earlier write
      const clusters = lastLba - firstLba + 1;
      const merged = Buffer.allocUnsafe(clusters * clusterSizeBytes);
      const readers = [this.readRange(merged.subarray(0, clusterSizeBytes), firstLba * clusterSizeBytes)];
      if (clusters > 1) readers.push(this.readRange(merged.subarray((clusters - 1) * clusterSizeBytes), lastLba * clusterSizeBytes));
      await Promise.all(readers);
      data.copy(merged, offset - firstLba * clusterSizeBytes);
      await this.enqueue('write', firstLba, clusters, merged);
    } finally {
      lock.release();
    }
  }

  /** Trim: whole clusters are unmapped (TRIM record), partial edges are overwritten with zeros. */
  private async unmapRange(offset: number, length: number): Promise<void> {
    if (length === 0) return;
    const endByte = offset + length;
    const firstWhole = Math.ceil(offset / clusterSizeBytes);
    const endWhole = Math.floor(endByte / clusterSizeBytes);
    if (endWhole <= firstWhole) return this.writeRange(offset, Buffer.alloc(length));
    const work: Array<Promise<void>> = [];
    if (offset < firstWhole * clusterSizeBytes) work.push(this.writeRange(offset, Buffer.alloc(firstWhole * clusterSizeBytes - offset)));
    if (endByte > endWhole * clusterSizeBytes) work.push(this.writeRange(endWhole * clusterSizeBytes, Buffer.alloc(endByte - endWhole * clusterSizeBytes)));
    const lock = this.lockClusters(this.lockedLbasIn(firstWhole, endWhole - 1));
    try {
      await lock.ready;
      work.push(this.enqueue('trim', firstWhole, endWhole - firstWhole, undefined));
      await Promise.all(work);
    } finally {
      lock.release();
    }
  }

  /** LBAs in [firstLba, lastLba] that a read-modify-write holds right now (they must go after it). */
  private lockedLbasIn(firstLba: number, lastLba: number): number[] {
    const locked: number[] = [];
    if (this.clusterLocks.size === 0) return locked;
    if (this.clusterLocks.size < lastLba - firstLba + 1) {
      for (const lba of this.clusterLocks.keys()) if (lba >= firstLba && lba <= lastLba) locked.push(lba);
    } else {
      for (let lba = firstLba; lba <= lastLba; lba++) if (this.clusterLocks.has(lba)) locked.push(lba);
    }
    return locked;
  }

  /** Queues behind the current holders of these clusters (FIFO per cluster); registration is synchronous. */
  private lockClusters(lbas: number[]): ClusterLock {
    if (lbas.length === 0) return { ready: Promise.resolve(), release: () => undefined };
    let release!: () => void;
    const mine = new Promise<void>((resolve) => (release = resolve));
    const previous: Array<Promise<void>> = [];
    for (const lba of lbas) {
      const holder = this.clusterLocks.get(lba);
      if (holder !== undefined) previous.push(holder);
      this.clusterLocks.set(lba, mine);
    }
    return {
      ready: Promise.all(previous),
      release: () => {
        for (const lba of lbas) if (this.clusterLocks.get(lba) === mine) this.clusterLocks.delete(lba);
        release();
      },
    };
  }

  /** Not async when the queue has room (the hot path): the job is queued in this call. */
  private enqueue(kind: AppendJob['kind'], lba: number, clusterCount: number, data: Buffer | undefined, records?: Buffer, expectedLocation = 0, checksums?: Uint32Array): Promise<void> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    if (this.queue.length - this.queueHead >= limits.volumeWritesQueuedMax) return this.enqueueWhenRoom(kind, lba, clusterCount, data, records, expectedLocation, checksums);
    const done = new Promise<void>((resolve, reject) => {
      this.queue.push({ kind, lba, clusterCount, data, taken: 0, expectedLocation, records, checksums, resolve, reject });
    });
    this.jobsEnqueued += 1;
    this.pump();
    return done;
  }

  private async enqueueWhenRoom(kind: AppendJob['kind'], lba: number, clusterCount: number, data: Buffer | undefined, records?: Buffer, expectedLocation = 0, checksums?: Uint32Array): Promise<void> {
    while (this.queue.length - this.queueHead >= limits.volumeWritesQueuedMax && this.failure === undefined) {
      await new Promise<void>((resolve) => this.spaceWaiters.push(resolve));
    }
    return this.enqueue(kind, lba, clusterCount, data, records, expectedLocation, checksums);
  }

  private waitForApplied(target: number): Promise<void> {
    if (this.jobsCompleted >= target) return Promise.resolve();
    if (this.failure !== undefined) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => this.appliedWaiters.push({ target, resolve, reject }));
  }

  /** Settles a job that leaves the queue: applied (no error), or not (a dropped rewrite, a full disk). */
  private completeJob(job: AppendJob, error?: unknown): void {
    this.jobsCompleted += 1;
    if (error !== undefined) job.reject(error);
    else job.resolve();
    while (this.appliedWaiters.length > 0 && this.appliedWaiters[0].target <= this.jobsCompleted) this.appliedWaiters.shift()!.resolve();
  }

  private pump(): void {
    if (this.appending || this.failure !== undefined || this.queueHead === this.queue.length) return;
    this.appending = true;
    // Start once this turn's requests are all queued (they reach enqueue through a few microtasks each):
    // they then share one batch, one SCO writev and one TLog write.
    this.appendLoopRunning = new Promise<void>((resolve) => setImmediate(resolve)).then(() => this.appendLoop());
  }

  private async appendLoop(): Promise<void> {
    try {
      while (this.queueHead < this.queue.length && this.failure === undefined) await this.appendBatch();
    } catch (err) {
      this.fail(err);
    } finally {
      this.appending = false;
    }
  }

  private dequeue(): void {
    this.queueHead += 1;
    if (this.queueHead === this.queue.length) {
      this.queue.length = 0;
      this.queueHead = 0;
    } else if (this.queueHead >= 1024) {
      this.queue.splice(0, this.queueHead);
      this.queueHead = 0;
    }
    this.spaceWaiters.shift()?.();
  }

  /** Takes the next batch off the queue, writes it, applies it to the map and acknowledges it. */
  private async appendBatch(): Promise<void> {
    if (this.interruptedScoRoll !== undefined || this.interruptedTlogRoll !== undefined) {
      try {
        await this.finishInterruptedRolls();
      } catch (err) {
        return this.refuseQueued(err);
      }
    }
    const sco = this.openSco;
    const entries: BatchEntry[] = [];
    const trims: AppendJob[] = [];
    const syncs: AppendJob[] = [];
    const buffers: Buffer[] = [];
    let clusters = 0;
    let recordBytes = 0;
    const clusterRoom = Math.min(limits.appendBatchClustersMax, sco.freeClusters);
    while (this.queueHead < this.queue.length) {
      const job = this.queue[this.queueHead];
      if (job.kind === 'sync') {
        syncs.push(job);
        this.dequeue();
        continue; // consecutive flushes share one fsync; a write after a flush waits for the next batch
      }
      if (syncs.length > 0) break;
      if (job.kind === 'records') {
        // Snapshot markers and remaps share the TRIM records' room in the batch buffer.
        const records = job.records!;
        if (trims.length + records.length / tlogRecordBytes > batchTrimRecordsMax) break;
        records.copy(this.batchRecords, recordBytes);
        recordBytes += records.length;
        for (let at = 0; at < records.length; at += tlogRecordBytes) trims.push(job);
        entries.push({ job, from: 0, count: 0, firstSlot: 0 });
        this.dequeue();
        continue;
      }
      if (job.kind === 'trim') {
        if (trims.length >= batchTrimRecordsMax) break;
        encodeTlogRecord(this.batchRecords, recordBytes, { type: 'trim', lba: job.lba, count: job.clusterCount });
        recordBytes += tlogRecordBytes;
        trims.push(job);
        entries.push({ job, from: 0, count: 0, firstSlot: 0 });
        this.dequeue();
        continue;
      }
      if (job.expectedLocation !== 0 && this.rewriteIsStale(job, entries)) {
        this.dequeue();
        this.completeJob(job, rewriteDropped); // a user write won the race: the scrubber's copy is dropped
        continue;
      }
      const count = Math.min(job.clusterCount - job.taken, clusterRoom - clusters);
      if (count === 0) break;
      const firstSlot = sco.clusterCount + clusters;
      const data = job.data!;
      for (let index = 0; index < count; index++) {
        const start = (job.taken + index) * clusterSizeBytes;
        const checksum = job.checksums !== undefined ? job.checksums[job.taken + index]! : crc32c(data.subarray(start, start + clusterSizeBytes));
        this.batchChecksums[clusters + index] = checksum;
        encodeWriteRecord(this.batchRecords, recordBytes, job.lba + job.taken + index, sco.scoSeq, firstSlot + index, checksum);
        recordBytes += tlogRecordBytes;
      }
      buffers.push(data.subarray(job.taken * clusterSizeBytes, (job.taken + count) * clusterSizeBytes));
      entries.push({ job, from: job.taken, count, firstSlot });
      job.taken += count;
      clusters += count;
      if (job.taken === job.clusterCount) this.dequeue();
    }

    const scoClustersBefore = sco.clusterCount;
    const tlogRecordsBefore = this.tlog.recordCount;
    const writes: Array<Promise<unknown>> = [];
    try {
      if (clusters > 0) writes.push(sco.append(buffers, this.batchChecksums.subarray(0, clusters)));
      if (recordBytes > 0) writes.push(this.tlog.append(this.batchRecords.subarray(0, recordBytes)));
      await Promise.all(writes);
    } catch (err) {
      if (isKeelError(err, 'NO_SPACE')) {
        await Promise.allSettled(writes); // both settled before either is undone
        sco.cutBack(scoClustersBefore);
        await this.tlog.cutBack(tlogRecordsBefore, err);
      }
      return this.refuseBatch(entries, syncs, err);
    }
    if (clusters > 0) this.remote?.uploader.account.addPending(clusters * clusterSizeBytes);
    if (recordBytes > 0) this.tlogDirty = true;
    this.counters.appendBatches += 1;
    this.counters.appendedClusters += clusters;
    this.noteSpaceBack();
    this.applyBatch(entries);
    if (syncs.length > 0) {
      try {
        await this.syncAll();
      } catch (err) {
        return this.refuseBatch([], syncs, err);
      }
    }
    for (const job of syncs) this.completeJob(job);
    try {
      if (this.openSco.freeClusters === 0) await this.rollSco();
      else if (this.tlog.recordCount >= limits.tlogRecordsMax) await this.rollTlog();
      if (this.rollRequested) await this.rollForPressure();
      if (this.tlogCloseRequested) await this.closeTlogForUpload();
    } catch (err) {
      this.refuseQueued(err); // this batch is done; what waits behind it needs the roll
    }
  }

  private async finishInterruptedRolls(): Promise<void> {
    if (this.interruptedTlogRoll !== undefined) await this.rollTlog();
    if (this.interruptedScoRoll !== undefined) await this.rollSco();
  }

  /**
   * A roll found the disk full: every queued job fails with NO_SPACE, since none can be appended before the
   * roll is done (the next batch tries it again). Any other error fails the volume (the caller's fail()).
   */
  private refuseQueued(err: unknown): void {
    if (!isKeelError(err, 'NO_SPACE')) throw err;
    const refused = this.queue.slice(this.queueHead);
    this.queue.length = 0;
    this.queueHead = 0;
    for (const wake of this.spaceWaiters.splice(0)) wake();
    for (const job of refused) this.completeJob(job, err);
    this.noteNoSpace(err);
  }

  /**
   * A batch that could not be written. On a full disk (NO_SPACE) its jobs fail and the volume stays open:
   * the caller has cut the SCO and the TLog back to where they ended before the batch (the next append
   * writes over the SCO slots), so reads go on and writes succeed again once there is space
   * (docs/volume-driver.md, "Disk full"). Anything else leaves the files in an unknown state: the batch
   * fails, and the volume with it (the caller's fail()).
   */
  private refuseBatch(entries: BatchEntry[], syncs: AppendJob[], err: unknown): void {
    if (!isKeelError(err, 'NO_SPACE')) {
      this.fail(err); // first: the batch's requests get the same answer as the queued ones (CLOSED when handed over)
      for (const entry of entries) entry.job.reject(this.failure);
      for (const job of syncs) job.reject(this.failure);
      throw err;
    }
    const last = entries.at(-1)?.job;
    // A job only partly taken into this batch is still queued: it fails as a whole.
    if (last !== undefined && this.queueHead < this.queue.length && this.queue[this.queueHead] === last) this.dequeue();
    for (const entry of entries) this.completeJob(entry.job, err);
    for (const job of syncs) this.completeJob(job, err);
    this.noteNoSpace(err);
  }

  private noteNoSpace(err: KeelError): void {
    this.counters.noSpaceBatches += 1;
    if (this.noSpaceSinceMs !== undefined) return;
    this.noSpaceSinceMs = Date.now();
    this.logger.warn({ volume: this.volumeName, err: err.message }, 'disk full: writes fail with ENOSPC until there is space again; reads go on');
  }

  private noteSpaceBack(): void {
    if (this.noSpaceSinceMs === undefined) return;
    this.logger.warn({ volume: this.volumeName, fullForMs: Date.now() - this.noSpaceSinceMs }, 'disk has space again: writes succeed');
    this.noSpaceSinceMs = undefined;
  }

  /**
   * Write buffer pressure: closed SCOs of a TLog that is still open cannot be evicted, so seal the open
   * SCO and close the TLog now (the next batch, a sync job, runs this). Costs a partly filled SCO.
   */
  private async rollForPressure(): Promise<void> {
    this.rollRequested = false;
    if (this.tlog.scoClosedCount === 0) return;
    this.counters.pressureRolls += 1;
    if (this.openSco.clusterCount > 0) await this.rollSco();
    if (this.tlog.scoClosedCount > 0) await this.rollTlog();
  }

  /** Called by the write buffer (via the uploader's account) when writes wait at the hard limit. */
  private relievePressure(): void {
    if (this.rollRequested || this.status !== 'open' || this.tlog.scoClosedCount === 0) return;
    this.rollRequested = true;
    this.enqueue('sync', 0, 0, undefined).catch(() => undefined);
  }

  /** The write buffer evicts a SCO whose TLog is on the backend: later reads go to the backend. */
  private async evictLocalSco(scoSeq: number): Promise<void> {
    await this.retireScoFile(scoSeq);
  }

  /** Clean close with a backend: close the TLog too, so everything can go up, and wait a bounded time. */
  private async closeForUpload(remote: VolumeRemote): Promise<void> {
    if (this.tlogDirty) {
      const closing = this.tlog;
      encodeTlogRecord(this.batchRecords, 0, { type: 'tlogClosed', tlogSeq: closing.tlogSeq, recordCount: closing.recordCount });
      await this.appendDurablePoint(closing, this.batchRecords.subarray(0, tlogRecordBytes));
      await closing.close();
      remote.uploader.tlogClosed(closing.tlogSeq);
    }
    const drained = await remote.uploader.drain(limits.uploadDrainOnCloseMs);
    if (!drained) this.logger.warn({ volume: this.volumeName, ...remote.uploader.stats() }, 'closing with uploads left: they resume at the next open');
  }

  /** Map updates in slot order, so overlapping writes resolve in arrival order; then acknowledgements. */
  private applyBatch(entries: BatchEntry[]): void {
    const scoSeq = this.openSco.scoSeq;
    if (entries.some((entry) => isUserMapChange(entry.job))) this.counters.userMapChanges += 1;
    for (const entry of entries) {
      const job = entry.job;
      if (job.kind === 'trim') {
        this.unmapClusters(job.lba, job.clusterCount);
        this.underlay?.mask(job.lba, job.clusterCount);
        this.completeJob(job);
        continue;
      }
      if (job.kind === 'records') {
        this.applyRecords(job.records!);
        this.completeJob(job);
        continue;
      }
      this.applyWrite(entry, packLocation(scoSeq, entry.firstSlot));
      if (entry.from + entry.count === job.clusterCount) {
        job.data = undefined;
        this.completeJob(job);
      }
    }
  }

  /**
   * Maps a batch entry's clusters, which now lie from `location` on. A scrubber move carries the cluster's
   * RAM copy to its new location. Writes leave no copies: the guest's own page cache holds what it just
   * wrote, and the copy cost every 4 KiB write 2-3 us of the owner's CPU (docs/volume-driver.md).
   */
  private applyWrite(entry: BatchEntry, location: number): void {
    const job = entry.job;
    if (job.expectedLocation !== 0) this.ramCache?.move(job.expectedLocation, location); // a rewrite is one cluster
    for (let index = 0; index < entry.count; index++) this.mapCluster(job.lba + entry.from + index, location + index);
  }

  private mapCluster(lba: number, location: number): void {
    const previous = this.map.get(lba);
    this.map.set(lba, location);
    this.liveCounts.add(locationSco(location));
    if (previous !== 0) this.forgetLocation(previous);
  }

  private unmapClusters(lba: number, count: number): void {
    this.map.forEachInRange(lba, count, (_lba, location) => this.forgetLocation(location));
    this.map.deleteRange(lba, count);
  }

  /** A map entry left `location`: its RAM copy goes, and its SCO, sealed and now holding nothing live, may leave the write buffer. */
  private forgetLocation(location: number): void {
    this.ramCache?.forget(location);
    const scoSeq = locationSco(location);
    if (this.liveCounts.remove(scoSeq) && scoSeq !== this.openSco.scoSeq) this.remote?.uploader.account.evictNow(scoSeq);
  }

  /** fsync the SCO, then SYNC marker, then fsync the TLog: a SYNC never precedes its data on disk. */
  private async syncAll(): Promise<void> {
    await this.openSco.sync();
    encodeTlogRecord(this.batchRecords, 0, { type: 'sync' });
    await this.appendDurablePoint(this.tlog, this.batchRecords.subarray(0, tlogRecordBytes));
    this.counters.syncs += 1;
  }

  /**
   * Appends records that end with a durable point (SYNC or TLOG_CLOSED) and fsyncs the TLog. They are
   * appended only once the open SCO's directory entry is durable (see scoDirSynced): page cache writeback
   * may put them on disk before the fsync, and a durable point must never cover writes to a lost file.
   */
  private async appendDurablePoint(tlog: TlogWriter, records: Buffer): Promise<void> {
    await this.scoDirSynced;
    await tlog.append(records);
    await tlog.sync();
  }

  /** The open SCO is full: seal it, log SCO_CLOSED, maybe roll the TLog, open the next SCO. */
  private async rollSco(): Promise<void> {
    if (this.interruptedScoRoll === undefined) {
      const sealed = await this.openSco.seal(); // a failed seal changes nothing: the next one writes the footer again
      this.closedScos.add(sealed);
      this.remote?.uploader.scoSealed(sealed.scoSeq);
      this.interruptedScoRoll = { sealed, logged: false };
    }
    const roll = this.interruptedScoRoll;
    const sealed = roll.sealed;
    if (!roll.logged) {
      encodeTlogRecord(this.batchRecords, 0, {
        type: 'scoClosed',
        sco: sealed.scoSeq,
        clusterCount: sealed.clusterCount,
        tableCrc: sealed.tableCrc,
      });
      await this.tlog.append(this.batchRecords.subarray(0, tlogRecordBytes));
      this.tlog.noteScoClosed();
      roll.logged = true;
    }
    const nextSeq = sealed.scoSeq + 1;
    const scoDir = VolumeDriver.scoDir(this.dir);
    this.openSco = await this.createOpenSco(scoDir, nextSeq, this.openSco.capacityClusters);
    this.interruptedScoRoll = undefined;
    // The directory fsync took 8-10 ms of every roll here, with the append loop (and every write) waiting.
    const dirSynced = this.disk.syncDir(scoDir);
    dirSynced.catch(() => undefined); // a failure surfaces at the next durable point, which fails the volume
    this.scoDirSynced = dirSynced;
    this.remote?.uploader.scoCreated(nextSeq);
    this.scoCount += 1;
    this.counters.scosCreated += 1;
    if (this.tlog.scoClosedCount >= limits.tlogScosMax || this.tlog.recordCount >= limits.tlogRecordsMax) await this.rollTlog();
  }

  /** The next open SCO, in a spare file when there is one (see sco-spares.ts). */
  private async createOpenSco(scoDir: string, scoSeq: number, capacityClusters: number): Promise<OpenSco> {
    const filePath = path.join(scoDir, scoFileName(scoSeq));
    const spare = this.spares.take();
    if (spare !== undefined) {
      try {
        const reused = await OpenSco.reuse(this.disk, spare, filePath, scoSeq, capacityClusters);
        this.spares.noteReused();
        return reused;
      } catch (err) {
        // Only a speed-up: fall back to a new file, whichever step failed.
        this.logger.warn({ volume: this.volumeName, spare, err: (err as Error).message }, 'could not reuse a spare SCO file; creating a new one');
        await this.disk.remove(filePath).catch(() => undefined);
        await this.disk.remove(spare).catch(() => undefined);
      }
    }
    return OpenSco.create(this.disk, filePath, scoSeq, capacityClusters);
  }

  /** Closes the TLog (everything in it durable first: recovery trusts closed TLogs) and starts the next. */
  private async rollTlog(): Promise<void> {
    if (this.interruptedTlogRoll === undefined) {
      await this.openSco.sync();
      const closing = this.tlog;
      encodeTlogRecord(this.batchRecords, 0, { type: 'tlogClosed', tlogSeq: closing.tlogSeq, recordCount: closing.recordCount });
      await this.appendDurablePoint(closing, this.batchRecords.subarray(0, tlogRecordBytes)); // cut back if it fails
      await closing.close();
      this.interruptedTlogRoll = closing;
    }
    const closing = this.interruptedTlogRoll;
    const tlogDir = VolumeDriver.tlogDir(this.dir);
    const nextSeq = closing.tlogSeq + 1;
    this.tlog = await TlogWriter.create(this.disk, path.join(tlogDir, tlogFileName(nextSeq)), nextSeq);
    this.interruptedTlogRoll = undefined;
    await this.disk.syncDir(tlogDir);
    this.tlogDirty = false;
    this.remote?.uploader.tlogClosed(closing.tlogSeq);
    this.tlogCount += 1;
    this.counters.tlogsCreated += 1;
  }

  private async sealOnClose(): Promise<void> {
    await this.finishInterruptedRolls(); // a full disk stopped one: finish it, or the close fails (recovery takes over)
    if (this.openSco.clusterCount === 0) {
      // Nothing in it: remove it rather than keep an empty SCO per open/close cycle.
      await this.openSco.close();
      await this.disk.remove(path.join(VolumeDriver.scoDir(this.dir), scoFileName(this.openSco.scoSeq)));
      this.scoCount -= 1;
      encodeTlogRecord(this.batchRecords, 0, { type: 'sync' });
      await this.appendDurablePoint(this.tlog, this.batchRecords.subarray(0, tlogRecordBytes));
      return;
    }
    const sealed = await this.openSco.seal();
    encodeTlogRecord(this.batchRecords, 0, { type: 'scoClosed', sco: sealed.scoSeq, clusterCount: sealed.clusterCount, tableCrc: sealed.tableCrc });
    encodeTlogRecord(this.batchRecords, tlogRecordBytes, { type: 'sync' });
    await this.appendDurablePoint(this.tlog, this.batchRecords.subarray(0, 2 * tlogRecordBytes));
    await sealed.close();
    this.tlogDirty = true;
    this.remote?.uploader.scoSealed(sealed.scoSeq);
  }

  // ---------------------------------------------------------------- read path

  /** Fills target with the volume's bytes at `offset` (target.length bytes). */
  private async readRange(target: Buffer, offset: number): Promise<void> {
    const firstLba = Math.floor(offset / clusterSizeBytes);
    const endByte = offset + target.length;
    const lastLba = Math.floor((endByte - 1) / clusterSizeBytes);
    const ram = this.ramCacheFor(lastLba - firstLba + 1);
    const reads: Array<Promise<void>> = [];
    let lba = firstLba;
    while (lba <= lastLba) {
      const location = this.map.get(lba);
      const at = lba * clusterSizeBytes - offset;
      if (location !== 0 && at >= 0 && at + clusterSizeBytes <= target.length && ram?.read(location, target, at)) {
        this.counters.readClusters += 1;
        lba += 1;
        continue;
      }
      if (location === 0 && this.underlay?.covers(lba)) {
        reads.push(this.underlay.readInto(lba, target, offset));
        lba += 1;
        continue;
      }
      if (location === 0) {
        target.fill(0, Math.max(0, lba * clusterSizeBytes - offset), Math.min(target.length, (lba + 1) * clusterSizeBytes - offset));
        lba += 1;
        continue;
      }
      const count = this.runLength(lba, location, lastLba + 1);
      reads.push(this.readRun(target, offset, lba, count, location, ram));
      lba += count;
    }
    await Promise.all(reads);
  }

  /** The RAM cache for a read of `clusters` clusters: small reads only, a syscall per read is what it saves and a scan would flush it. */
  private ramCacheFor(clusters: number): RamCacheView | undefined {
    return clusters <= limits.ramCacheReadClustersMax ? this.ramCache : undefined;
  }

  /** How many clusters from `lba` (mapped to `location`) lie in consecutive slots of one SCO, before `endLba`. */
  private runLength(lba: number, location: number, endLba: number): number {
    let count = 1;
    while (lba + count < endLba && this.map.get(lba + count) === location + count && locationSlot(location + count) !== 0) count += 1;
    return count;
  }

  /**
   * One pread for `count` clusters that lie in consecutive slots of one SCO (or one read from the
   * backend), verified, copied in place; copies go to the RAM cache when `ram` is given.
   */
  private async readRun(target: Buffer, offset: number, lba: number, count: number, location: number, ram: RamCacheView | undefined): Promise<void> {
    const scoSeq = locationSco(location);
    const runStart = lba * clusterSizeBytes;
    const runEnd = runStart + count * clusterSizeBytes;
    const inPlace = runStart >= offset && runEnd <= offset + target.length;
    const buffer = inPlace ? target.subarray(runStart - offset, runEnd - offset) : Buffer.allocUnsafe(count * clusterSizeBytes);
    await this.readClustersOf(scoSeq, locationSlot(location), buffer, lba);
    ram?.fill(location, buffer, 0, count);
    this.counters.readClusters += count;
    if (!inPlace) {
      const from = Math.max(runStart, offset);
      const to = Math.min(runEnd, offset + target.length);
      buffer.copy(target, from - offset, from - runStart, to - runStart);
    }
  }

  /** The open SCO, or a closed one in the write buffer whose file is open; undefined otherwise. */
  private openLocalSco(scoSeq: number): OpenSco | ClosedSco | undefined {
    if (scoSeq === this.openSco.scoSeq) return this.openSco;
    if (this.remote !== undefined && !this.remote.uploader.isLocal(scoSeq)) return undefined;
    return this.closedScos.readOpen(scoSeq);
  }

  /** A local read in this turn; false (the async path) when the local copy failed and the backend has one. */
  private readLocalInline(sco: OpenSco | ClosedSco, slot: number, target: Buffer): boolean {
    try {
      return sco.readClustersInline(slot, target);
    } catch (err) {
      if (this.backendCopyOf(sco.scoSeq, err) === undefined) throw err;
      return false;
    }
  }

  /** Local SCO (open, or closed in the write buffer) from disk; an evicted one through the backend. */
  private async readClustersOf(scoSeq: number, slot: number, buffer: Buffer, lba?: number): Promise<void> {
    if (scoSeq === this.openSco.scoSeq) return this.openSco.readClusters(slot, buffer);
    const remote = this.remote;
    if (remote !== undefined && !remote.uploader.isLocal(scoSeq)) return remote.reader.readClusters(scoSeq, slot, buffer, lba);
    try {
      await (await this.closedScos.get(scoSeq)).readClusters(slot, buffer);
    } catch (err) {
      // Evicted while this read was opening the file, or the local copy failed: read the backend's.
      const reader = remote !== undefined && !remote.uploader.isLocal(scoSeq) ? remote.reader : this.backendCopyOf(scoSeq, err);
      if (reader === undefined) throw err;
      if (remote!.uploader.isLocal(scoSeq)) this.dropLocalCopy(scoSeq, err as KeelError);
      await reader.readClusters(scoSeq, slot, buffer, lba);
    }
  }

  /**
   * Where to read a cluster whose local copy failed (a checksum mismatch: the write buffer's disk rotted;
   * or an I/O error): the backend's copy, once the SCO is there (DESIGN: a mismatch is repaired from
   * redundancy). Undefined when the local copy is the only one; the DTL peer still has the write.
   */
  private backendCopyOf(scoSeq: number, err: unknown): RemoteScoReader | undefined {
    if (!isKeelError(err, 'CHECKSUM_MISMATCH') && !isKeelError(err, 'IO')) return undefined;
    const remote = this.remote;
    if (remote === undefined || scoSeq === this.openSco.scoSeq || !remote.uploader.onBackend(scoSeq)) return undefined;
    return remote.reader;
  }

  /** The local copy of a SCO failed a read: counted, and evicted as soon as the write buffer may (reads then use the backend). */
  private dropLocalCopy(scoSeq: number, err: KeelError): void {
    this.counters.localCopyFailures += 1;
    this.logger.warn({ volume: this.volumeName, sco: scoSeq, code: err.code, err: err.message }, 'local SCO copy failed a read: served from the backend');
    this.remote?.uploader.account.evictNow(scoSeq);
  }

  private metadataBytes(sizeBytes: number): Buffer {
    const metadata: VolumeMetadata = {
      formatVersion: volumeFormatVersion,
      name: this.volumeName,
      sizeBytes,
      scoSizeBytes: this.scoSizeBytes,
      clusterSizeBytes,
    };
    return Buffer.from(JSON.stringify(metadata, null, 2) + '\n');
  }
}

function isClusterAligned(offset: number, length: number): boolean {
  return offset % clusterSizeBytes === 0 && length % clusterSizeBytes === 0;
}

/** A write or trim from a user, or a rollback's remap: not a scrubber rewrite, marker or SCO_DELETED record. */
function isUserMapChange(job: AppendJob): boolean {
  if (job.kind === 'trim') return true;
  if (job.kind === 'write') return job.expectedLocation === 0;
  if (job.kind !== 'records') return false;
  for (let at = 0; at < job.records!.length; at += tlogRecordBytes) {
    const type = decodeTlogRecord(job.records!, at)?.type;
    if (type === 'write' || type === 'trim' || type === 'fallthrough') return true;
  }
  return false;
}

function checkGeometry(sizeBytes: number, scoSizeBytes: number, scoSizeBytesMin = limits.scoSizeBytesMin): void {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes > limits.volumeSizeBytesMax || sizeBytes % 512 !== 0) {
    throw KeelError.badArgument(`volume size ${sizeBytes} must be a positive multiple of 512 up to ${limits.volumeSizeBytesMax}`);
  }
  if (
    !Number.isSafeInteger(scoSizeBytes) ||
    scoSizeBytes % clusterSizeBytes !== 0 ||
    scoSizeBytes < scoSizeBytesMin ||
    scoSizeBytes > limits.scoSizeBytesMax
  ) {
    throw KeelError.badArgument(`SCO size ${scoSizeBytes} must be whole clusters within [${scoSizeBytesMin}, ${limits.scoSizeBytesMax}]`);
  }
}

/** Reads volume.json (stored geometry wins: it may have been resized) or writes it for a new volume. */
async function loadOrCreateMetadata(disk: Disk, options: VolumeDriverOptions, logger: Logger): Promise<VolumeMetadata> {
  const filePath = path.join(options.dir, metadataFileName);
  const bytes = await disk.readFile(filePath);
  if (bytes === undefined) {
    const metadata: VolumeMetadata = {
      formatVersion: volumeFormatVersion,
      name: options.volumeName,
      sizeBytes: options.sizeBytes,
      scoSizeBytes: options.scoSizeBytes,
      clusterSizeBytes,
    };
    await disk.writeFileAtomic(filePath, Buffer.from(JSON.stringify(metadata, null, 2) + '\n'));
    return metadata;
  }
  let metadata: VolumeMetadata;
  try {
    metadata = JSON.parse(bytes.toString('utf8')) as VolumeMetadata;
  } catch (err) {
    throw KeelError.corrupt(`${filePath}: not JSON`, { path: filePath, reason: (err as Error).message });
  }
  if (
    metadata.formatVersion !== volumeFormatVersion ||
    metadata.clusterSizeBytes !== clusterSizeBytes ||
    !Number.isSafeInteger(metadata.sizeBytes) ||
    !Number.isSafeInteger(metadata.scoSizeBytes) ||
    metadata.scoSizeBytes % clusterSizeBytes !== 0 ||
    metadata.scoSizeBytes <= 0 ||
    metadata.scoSizeBytes > limits.scoSizeBytesMax
  ) {
    throw KeelError.corrupt(`${filePath}: unsupported or invalid volume metadata`, { path: filePath });
  }
  if (metadata.sizeBytes !== options.sizeBytes || metadata.scoSizeBytes !== options.scoSizeBytes) {
    logger.warn(
      { volume: metadata.name, storedSizeBytes: metadata.sizeBytes, requestedSizeBytes: options.sizeBytes, storedScoSizeBytes: metadata.scoSizeBytes },
      'volume.json differs from the requested geometry: the stored geometry is used',
    );
  }
  assert(metadata.name.length > 0);
  return metadata;
}

async function loadUploadManifest(disk: Disk, dir: string): Promise<UploadManifest> {
  const filePath = path.join(dir, uploadManifestFileName);
  const bytes = await disk.readFile(filePath);
  return bytes === undefined ? emptyUploadManifest() : decodeUploadManifest(bytes, filePath);
}

/** Sealed SCO files of a volume (all but the open one after recovery): seq -> cluster count, from the file size. */
async function sealedScoSizes(disk: Disk, scoDir: string, openScoSeq: number): Promise<Map<number, number>> {
  const sizes = new Map<number, number>();
  for (const seq of await listSeqs(disk, scoDir, parseScoFileName)) {
    if (seq === openScoSeq) continue;
    const file = await disk.open(path.join(scoDir, scoFileName(seq)), 'read');
    try {
      const clusterCount = ((await file.sizeBytes()) - scoTrailerBytes) / (clusterSizeBytes + scoChecksumBytes);
      sizes.set(seq, Number.isInteger(clusterCount) && clusterCount >= 0 ? clusterCount : 0);
    } finally {
      await file.close();
    }
  }
  return sizes;
}
