/**
 * The volume driver: one volume as a log-structured store (docs/volume-driver.md). Writes are appended
 * as 4 KiB clusters to the open SCO and logged in the TLog, in batches (group commit: at most one append
 * in flight; requests arriving meanwhile form the next batch, one writev + one TLog write). A write is
 * acknowledged once both writes reached the files, and only then is the LBA map updated, in slot order.
 * FLUSH/FUA fsync the SCO, append a SYNC marker and fsync the TLog. Reads look clusters up in the map
 * (unmapped clusters read as zeros without I/O), coalesce contiguous slots into one pread and verify
 * every cluster's crc32c.
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
import { LbaMap, locationSco, locationSlot, packLocation } from './lba-map.ts';
import { OpenSco } from './sco-file.ts';
import { scoFileName } from './sco-format.ts';
import { encodeTlogRecord, encodeWriteRecord, tlogFileName, tlogRecordBytes } from './tlog-format.ts';
import { TlogWriter } from './tlog-writer.ts';
import { recoverVolume } from './volume-recovery.ts';

export interface VolumeDriverOptions {
  dir: string;
  volumeName: string;
  sizeBytes: number;
  scoSizeBytes: number;
  disk?: Disk;
  logger?: Logger;
  /** Tests only: allow SCOs smaller than limits.scoSizeBytesMin (rollover tests without 4 MiB writes). */
  scoSizeBytesMinOverride?: number;
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
/** TRIM records one batch may carry besides its clusters (the record buffer is sized for them). */
const batchTrimRecordsMax = 64;

type VolumeStatus = 'open' | 'closing' | 'closed' | 'failed';

/** Work for the append loop, in arrival order. One job per request, never one per cluster. */
interface AppendJob {
  kind: 'write' | 'trim' | 'sync';
  lba: number;
  /** write: clusters in data; trim: clusters to unmap. */
  clusterCount: number;
  data: Buffer | undefined;
  /** write: clusters already placed into batches. */
  taken: number;
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

  private readonly counters = { appendedClusters: 0, appendBatches: 0, syncs: 0, readClusters: 0, scosCreated: 0, tlogsCreated: 0 };

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
    private scoCount: number,
    private tlogCount: number,
  ) {
    this.currentSizeBytes = sizeBytes;
  }

  get sizeBytes(): number {
    return this.currentSizeBytes;
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
    const metadata = await loadOrCreateMetadata(disk, options, logger);
    const clustersPerSco = metadata.scoSizeBytes / clusterSizeBytes;
    const startedMs = Date.now();
    const recovered = await recoverVolume({ disk, scoDir, tlogDir, clustersPerSco, logger });
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
    return new VolumeDriver(
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
      recovered.scoCount + 1,
      recovered.tlogCount,
    );
  }

  /** Deletes every file of a volume. The volume must not be open. */
  static async destroy(dir: string, disk: Disk = new NodeDisk()): Promise<void> {
    await disk.remove(dir);
  }

  // ---------------------------------------------------------------- BlockTarget

  async read(offset: number, length: number): Promise<Buffer> {
    this.checkRequest(offset, length, limits.nbdRequestBytesMax);
    return this.tracked(async () => {
      const result = Buffer.alloc(length);
      if (length > 0) await this.readInto(result, offset);
      return result;
    });
  }

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    this.checkRequest(offset, data.length, limits.nbdRequestBytesMax);
    await this.tracked(() => this.writeRange(offset, data));
    if (fua) await this.flush();
  }

  async flush(): Promise<void> {
    this.checkUsable();
    await this.tracked(() => this.enqueue('sync', 0, 0, undefined));
  }

  async trim(offset: number, length: number, fua: boolean): Promise<void> {
    this.checkRequest(offset, length, Number.MAX_SAFE_INTEGER);
    await this.tracked(() => this.unmapRange(offset, length));
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
    try {
      if (!wasFailed) await this.sealOnClose();
    } finally {
      await this.closedScos.closeAll();
      await this.tlog.close().catch(() => undefined);
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
    };
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
      this.operationsInFlight -= 1;
      if (this.operationsInFlight === 0) for (const wake of this.idleWaiters.splice(0)) wake();
    }
  }

  private whenIdle(): Promise<void> {
    if (this.operationsInFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** The append loop failed: nothing more is accepted; pending and future requests fail with the cause. */
  private fail(err: unknown): void {
    if (this.failure !== undefined) return;
    this.failure = isKeelError(err) ? err : KeelError.io(`volume '${this.volumeName}' failed`, err);
    this.setStatus('failed', err);
    for (let index = this.queueHead; index < this.queue.length; index++) this.queue[index].reject(this.failure);
    this.queue.length = 0;
    this.queueHead = 0;
    for (const waiter of this.appliedWaiters.splice(0)) waiter.reject(this.failure);
    for (const wake of this.spaceWaiters.splice(0)) wake();
  }

  // ---------------------------------------------------------------- write path

  private async writeRange(offset: number, data: Buffer): Promise<void> {
    if (data.length === 0) return;
    const firstLba = Math.floor(offset / clusterSizeBytes);
    const endByte = offset + data.length;
    const lastLba = Math.floor((endByte - 1) / clusterSizeBytes);
    const aligned = offset % clusterSizeBytes === 0 && endByte % clusterSizeBytes === 0;
    if (aligned) {
      if (this.lockedLbasIn(firstLba, lastLba).length === 0) return this.enqueue('write', firstLba, lastLba - firstLba + 1, data);
      // Behind a read-modify-write: hold the whole range, so later RMWs of it wait for this write too.
      const range: number[] = [];
      for (let lba = firstLba; lba <= lastLba; lba++) range.push(lba);
      const lock = this.lockClusters(range);
      try {
        await lock.ready;
        return await this.enqueue('write', firstLba, lastLba - firstLba + 1, data);
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
      const readers = [this.readInto(merged.subarray(0, clusterSizeBytes), firstLba * clusterSizeBytes)];
      if (clusters > 1) readers.push(this.readInto(merged.subarray((clusters - 1) * clusterSizeBytes), lastLba * clusterSizeBytes));
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

  private async enqueue(kind: AppendJob['kind'], lba: number, clusterCount: number, data: Buffer | undefined): Promise<void> {
    while (this.queue.length - this.queueHead >= limits.volumeWritesQueuedMax && this.failure === undefined) {
      await new Promise<void>((resolve) => this.spaceWaiters.push(resolve));
    }
    if (this.failure !== undefined) throw this.failure;
    const done = new Promise<void>((resolve, reject) => {
      this.queue.push({ kind, lba, clusterCount, data, taken: 0, resolve, reject });
    });
    this.jobsEnqueued += 1;
    this.pump();
    return done;
  }

  private waitForApplied(target: number): Promise<void> {
    if (this.jobsCompleted >= target) return Promise.resolve();
    if (this.failure !== undefined) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => this.appliedWaiters.push({ target, resolve, reject }));
  }

  private completeJob(job: AppendJob): void {
    this.jobsCompleted += 1;
    job.resolve();
    while (this.appliedWaiters.length > 0 && this.appliedWaiters[0].target <= this.jobsCompleted) this.appliedWaiters.shift()!.resolve();
  }

  private pump(): void {
    if (this.appending || this.failure !== undefined || this.queueHead === this.queue.length) return;
    this.appending = true;
    void this.appendLoop();
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
      if (job.kind === 'trim') {
        if (trims.length >= batchTrimRecordsMax) break;
        encodeTlogRecord(this.batchRecords, recordBytes, { type: 'trim', lba: job.lba, count: job.clusterCount });
        recordBytes += tlogRecordBytes;
        trims.push(job);
        entries.push({ job, from: 0, count: 0, firstSlot: 0 });
        this.dequeue();
        continue;
      }
      const count = Math.min(job.clusterCount - job.taken, clusterRoom - clusters);
      if (count === 0) break;
      const firstSlot = sco.clusterCount + clusters;
      const data = job.data!;
      for (let index = 0; index < count; index++) {
        const start = (job.taken + index) * clusterSizeBytes;
        const checksum = crc32c(data.subarray(start, start + clusterSizeBytes));
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

    try {
      const writes: Array<Promise<unknown>> = [];
      if (clusters > 0) writes.push(sco.append(buffers, this.batchChecksums.subarray(0, clusters)));
      if (recordBytes > 0) writes.push(this.tlog.append(this.batchRecords.subarray(0, recordBytes)));
      await Promise.all(writes);
      this.counters.appendBatches += 1;
      this.counters.appendedClusters += clusters;
      this.applyBatch(entries);
      if (syncs.length > 0) await this.syncAll();
    } catch (err) {
      // The files are in an unknown state: fail this batch and (via fail()) the volume.
      for (const entry of entries) entry.job.reject(err);
      for (const job of syncs) job.reject(err);
      throw err;
    }
    for (const job of syncs) this.completeJob(job);
    if (this.openSco.freeClusters === 0) await this.rollSco();
    else if (this.tlog.recordCount >= limits.tlogRecordsMax) await this.rollTlog();
  }

  /** Map updates in slot order, so overlapping writes resolve in arrival order; then acknowledgements. */
  private applyBatch(entries: BatchEntry[]): void {
    const scoSeq = this.openSco.scoSeq;
    for (const entry of entries) {
      const job = entry.job;
      if (job.kind === 'trim') {
        this.map.deleteRange(job.lba, job.clusterCount);
        this.completeJob(job);
        continue;
      }
      for (let index = 0; index < entry.count; index++) {
        this.map.set(job.lba + entry.from + index, packLocation(scoSeq, entry.firstSlot + index));
      }
      if (entry.from + entry.count === job.clusterCount) {
        job.data = undefined;
        this.completeJob(job);
      }
    }
  }

  /** fsync the SCO, then SYNC marker, then fsync the TLog: a SYNC never precedes its data on disk. */
  private async syncAll(): Promise<void> {
    await this.openSco.sync();
    encodeTlogRecord(this.batchRecords, 0, { type: 'sync' });
    await this.tlog.append(this.batchRecords.subarray(0, tlogRecordBytes));
    await this.tlog.sync();
    this.counters.syncs += 1;
  }

  /** The open SCO is full: seal it, log SCO_CLOSED, maybe roll the TLog, open the next SCO. */
  private async rollSco(): Promise<void> {
    const sealed = await this.openSco.seal();
    this.closedScos.add(sealed);
    encodeTlogRecord(this.batchRecords, 0, {
      type: 'scoClosed',
      sco: sealed.scoSeq,
      clusterCount: sealed.clusterCount,
      tableCrc: sealed.tableCrc,
    });
    await this.tlog.append(this.batchRecords.subarray(0, tlogRecordBytes));
    this.tlog.noteScoClosed();
    const nextSeq = sealed.scoSeq + 1;
    const scoDir = VolumeDriver.scoDir(this.dir);
    this.openSco = await OpenSco.create(this.disk, path.join(scoDir, scoFileName(nextSeq)), nextSeq, this.openSco.capacityClusters);
    await this.disk.syncDir(scoDir);
    this.scoCount += 1;
    this.counters.scosCreated += 1;
    if (this.tlog.scoClosedCount >= limits.tlogScosMax || this.tlog.recordCount >= limits.tlogRecordsMax) await this.rollTlog();
  }

  /** Closes the TLog (everything in it durable first: recovery trusts closed TLogs) and starts the next. */
  private async rollTlog(): Promise<void> {
    await this.openSco.sync();
    const closing = this.tlog;
    encodeTlogRecord(this.batchRecords, 0, { type: 'tlogClosed', tlogSeq: closing.tlogSeq, recordCount: closing.recordCount });
    await closing.append(this.batchRecords.subarray(0, tlogRecordBytes));
    await closing.sync();
    await closing.close();
    const tlogDir = VolumeDriver.tlogDir(this.dir);
    const nextSeq = closing.tlogSeq + 1;
    this.tlog = await TlogWriter.create(this.disk, path.join(tlogDir, tlogFileName(nextSeq)), nextSeq);
    await this.disk.syncDir(tlogDir);
    this.tlogCount += 1;
    this.counters.tlogsCreated += 1;
  }

  private async sealOnClose(): Promise<void> {
    if (this.openSco.clusterCount === 0) {
      // Nothing in it: remove it rather than keep an empty SCO per open/close cycle.
      await this.openSco.close();
      await this.disk.remove(path.join(VolumeDriver.scoDir(this.dir), scoFileName(this.openSco.scoSeq)));
      this.scoCount -= 1;
      encodeTlogRecord(this.batchRecords, 0, { type: 'sync' });
      await this.tlog.append(this.batchRecords.subarray(0, tlogRecordBytes));
      await this.tlog.sync();
      return;
    }
    const sealed = await this.openSco.seal();
    encodeTlogRecord(this.batchRecords, 0, { type: 'scoClosed', sco: sealed.scoSeq, clusterCount: sealed.clusterCount, tableCrc: sealed.tableCrc });
    encodeTlogRecord(this.batchRecords, tlogRecordBytes, { type: 'sync' });
    await this.tlog.append(this.batchRecords.subarray(0, 2 * tlogRecordBytes));
    await this.tlog.sync();
    await sealed.close();
  }

  // ---------------------------------------------------------------- read path

  /** Fills target with the volume's bytes at `offset` (target.length bytes). */
  private async readInto(target: Buffer, offset: number): Promise<void> {
    const firstLba = Math.floor(offset / clusterSizeBytes);
    const endByte = offset + target.length;
    const lastLba = Math.floor((endByte - 1) / clusterSizeBytes);
    const reads: Array<Promise<void>> = [];
    let lba = firstLba;
    while (lba <= lastLba) {
      const location = this.map.get(lba);
      if (location === 0) {
        target.fill(0, Math.max(0, lba * clusterSizeBytes - offset), Math.min(target.length, (lba + 1) * clusterSizeBytes - offset));
        lba += 1;
        continue;
      }
      let count = 1;
      while (lba + count <= lastLba && this.map.get(lba + count) === location + count && locationSlot(location + count) !== 0) count += 1;
      reads.push(this.readRun(target, offset, lba, count, location));
      lba += count;
    }
    await Promise.all(reads);
  }

  /** One pread for `count` clusters that lie in consecutive slots of one SCO, verified, copied in place. */
  private async readRun(target: Buffer, offset: number, lba: number, count: number, location: number): Promise<void> {
    const scoSeq = locationSco(location);
    const sco = scoSeq === this.openSco.scoSeq ? this.openSco : await this.closedScos.get(scoSeq);
    const runStart = lba * clusterSizeBytes;
    const runEnd = runStart + count * clusterSizeBytes;
    const inPlace = runStart >= offset && runEnd <= offset + target.length;
    const buffer = inPlace ? target.subarray(runStart - offset, runEnd - offset) : Buffer.allocUnsafe(count * clusterSizeBytes);
    await sco.readClusters(locationSlot(location), buffer);
    this.counters.readClusters += count;
    if (!inPlace) {
      const from = Math.max(runStart, offset);
      const to = Math.min(runEnd, offset + target.length);
      buffer.copy(target, from - offset, from - runStart, to - runStart);
    }
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
