/**
 * A volume's upload pipeline to the backend (docs/backend-volumes.md "Upload pipeline"):
 *
 * 1. A sealed SCO is put as one object (the SCO file byte for byte), at most
 *    limits.scoUploadsInFlightMax at once per volume; the store retries each fragment with backoff and a
 *    deadline, and a put that still fails is tried again after uploadRetryDelayMs, forever (the SCO stays
 *    in the write buffer meanwhile: nothing is dropped).
 * 2. A closed TLog is put only after every SCO it references (WRITE and SCO_CLOSED records) is on the
 *    backend, and TLogs go up strictly in sequence order: a TLog in the backend therefore never points at
 *    a SCO that is not there, and restoring "every TLog in the backend" gives a consistent volume.
 * 3. Once a TLog is up, the SCOs it closed become evictable from the write buffer (never earlier).
 *
 * What is up is kept in upload.json (upload-manifest.ts), so a restart re-uploads what was not done and
 * never evicts too early.
 */
import path from 'node:path';
import { BufferPool } from '../shared/buffer-pool.ts';
import type { Disk } from '../shared/disk.ts';
import { clusterSizeBytes, limits } from '../shared/limits.ts';
import type { Logger } from '../shared/logger.ts';
import { volumeObjectName } from './backend-object-names.ts';
import { decodeScoFileChecksums, scoFileName } from './sco-format.ts';
import { decodeTlogRecord, tlogFileName, tlogRecordBytes } from './tlog-format.ts';
import { encodeUploadManifest, uploadManifestFileName, type UploadManifest } from './upload-manifest.ts';
import type { VolumeBackend } from './volume-backend.ts';
import type { WriteBufferAccount } from './write-buffer.ts';

export interface ScoUploaderOptions {
  disk: Disk;
  volumeName: string;
  dir: string;
  backend: VolumeBackend;
  logger: Logger;
  /** Asks the driver to close its TLog early (write buffer pressure). */
  relievePressure: () => void;
  /** Removes a SCO's local file (after the uploader marked it non-local). */
  evictSco: (scoSeq: number) => Promise<void>;
  /** True when the volume maps nothing in the SCO any more: the write buffer evicts it as soon as it may. */
  isScoDead?: (scoSeq: number) => boolean;
  retryDelayMs?: number;
}

export interface UploaderStartState {
  manifest: UploadManifest;
  /** Sealed SCO files present locally: seq -> cluster count. */
  localSealedScos: Map<number, number>;
  /** Closed TLogs present locally, any order. */
  closedTlogs: number[];
  /** SCO -> TLog holding its SCO_CLOSED record. */
  scoClosedIn: Map<number, number>;
}

/**
 * Buffers SCOs are read into for upload, reused across uploads and volumes: a fresh 64 MiB buffer costs
 * 16k page faults (2-5 us each on the test VM), and perf showed the upload read as 57% of the owner
 * router's page faults under 4k random writes. Sizes are rounded up to a power of two so partly filled
 * SCOs share buffers; SCOs larger than limits.scoUploadBufferBytesMax are allocated on their own.
 */
const scoUploadBuffers = new BufferPool(limits.scoUploadBufferBytesMax, limits.scoUploadBufferPoolBytesMax);

/** The upload buffer pool's counters (router GET /status). */
export function scoUploadBufferStats(): ReturnType<BufferPool['stats']> {
  return scoUploadBuffers.stats();
}

export interface UploaderStats {
  scosUploaded: number;
  tlogsUploaded: number;
  bytesUploaded: number;
  uploadFailures: number;
  scosQueued: number;
  scosUploading: number;
  tlogsQueued: number;
  /** Queued TLogs held up (TLogs go up in order) by one that waits for writes to seal its last SCO: not upload work. */
  tlogsWaitingForOpenSco: number;
  tlogsUploadedThrough: number;
  localScos: number;
  evictedScos: number;
}

export class ScoUploader {
  readonly account: WriteBufferAccount;
  private readonly localScos = new Set<number>();
  /** SCOs on the backend (uploaded in this run or listed in the manifest). */
  private readonly uploaded = new Set<number>();
  /** SCOs whose closing TLog is on the backend. */
  private readonly covered = new Set<number>();
  private readonly scoQueue: number[] = [];
  private scosUploading = 0;
  private readonly scosInFlight = new Set<number>();
  private waitingOnUnsealed = false;
  private readonly tlogQueue: number[] = [];
  private tlogLoopRunning: Promise<void> | undefined;
  private readonly scoUploads = new Set<Promise<void>>();
  private tlogsUploadedThrough: number;
  private changeWaiters: Array<() => void> = [];
  private manifestWrite: Promise<void> = Promise.resolve();
  private closed = false;
  private readonly retryDelayMs: number;
  private readonly counters = { scosUploaded: 0, tlogsUploaded: 0, bytesUploaded: 0, uploadFailures: 0, evictedScos: 0 };

  constructor(
    private readonly options: ScoUploaderOptions,
    state: UploaderStartState,
  ) {
    this.retryDelayMs = options.retryDelayMs ?? limits.uploadRetryDelayMs;
    this.account = options.backend.writeBuffer.account(options.volumeName, () => this.hasUploadsPending(), options.relievePressure, options.isScoDead);
    this.tlogsUploadedThrough = state.manifest.tlogsUploadedThrough;
    for (const seq of state.manifest.scosUploaded) this.uploaded.add(seq);
    for (const [seq, clusterCount] of [...state.localSealedScos].sort((a, b) => a[0] - b[0])) {
      this.localScos.add(seq);
      const closedIn = state.scoClosedIn.get(seq);
      if (closedIn !== undefined && closedIn <= this.tlogsUploadedThrough) {
        this.covered.add(seq);
        this.account.addEvictable(seq, clusterCount * clusterSizeBytes, () => this.evict(seq));
        continue;
      }
      this.account.addPending(clusterCount * clusterSizeBytes);
      if (!this.uploaded.has(seq)) this.scoQueue.push(seq);
    }
    for (const seq of state.closedTlogs.filter((t) => t > this.tlogsUploadedThrough).sort((a, b) => a - b)) this.tlogQueue.push(seq);
    this.pumpScos();
    this.pumpTlogs();
  }

  /** The driver opened a new SCO (its bytes are counted by the driver as they are appended). */
  scoCreated(scoSeq: number): void {
    this.localScos.add(scoSeq);
  }

  /** The driver sealed a SCO: upload it. */
  scoSealed(scoSeq: number): void {
    if (this.closed) return;
    this.scoQueue.push(scoSeq);
    this.pumpScos();
  }

  /** The driver closed a TLog: upload it once its SCOs are up. */
  tlogClosed(tlogSeq: number): void {
    if (this.closed) return;
    this.tlogQueue.push(tlogSeq);
    this.pumpTlogs();
  }

  /** False once the SCO's file was evicted (or never was local: restored from the backend). */
  isLocal(scoSeq: number): boolean {
    return this.localScos.has(scoSeq);
  }

  /** True while uploads can make progress on their own (a TLog waiting for an unsealed SCO cannot). */
  hasUploadsPending(): boolean {
    return this.scoQueue.length > 0 || this.scosUploading > 0 || (this.tlogQueue.length > 0 && !this.waitingOnUnsealed);
  }

  /** True while anything at all is left to upload. */
  hasUploadsLeft(): boolean {
    return this.scoQueue.length > 0 || this.scosUploading > 0 || this.tlogQueue.length > 0;
  }

  /** Waits until nothing is left to upload, at most timeoutMs. True when drained. */
  async drain(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (this.hasUploadsLeft() && !this.closed) {
      const leftMs = deadline - Date.now();
      if (leftMs <= 0) return false;
      await this.nextChange(leftMs);
    }
    return !this.hasUploadsLeft();
  }

  /** Stops uploading (what is left is found again at the next open) and leaves the write buffer. */
  async close(): Promise<void> {
    this.closed = true;
    this.notifyChange();
    const running = [...this.scoUploads, ...(this.tlogLoopRunning ? [this.tlogLoopRunning] : [])];
    // Whatever is still in flight stays in the write buffer and is uploaded again at the next open.
    await Promise.race([Promise.allSettled(running), sleep(limits.uploadAbandonOnCloseMs)]);
    await this.manifestWrite;
    this.account.close();
  }

  /** The last TLog on the backend (every one before it is there too). */
  get lastUploadedTlog(): number {
    return this.tlogsUploadedThrough;
  }

  stats(): UploaderStats {
    return {
      ...this.counters,
      scosQueued: this.scoQueue.length,
      scosUploading: this.scosUploading,
      tlogsQueued: this.tlogQueue.length,
      tlogsWaitingForOpenSco: this.waitingOnUnsealed ? this.tlogQueue.length : 0,
      tlogsUploadedThrough: this.tlogsUploadedThrough,
      localScos: this.localScos.size,
    };
  }

  // ---------------------------------------------------------------- SCOs

  private pumpScos(): void {
    while (!this.closed && this.scosUploading < limits.scoUploadsInFlightMax && this.scoQueue.length > 0) {
      const seq = this.scoQueue.shift()!;
      this.scosUploading += 1;
      this.scosInFlight.add(seq);
      const upload = this.uploadSco(seq).finally(() => {
        this.scosUploading -= 1;
        this.scosInFlight.delete(seq);
        this.scoUploads.delete(upload);
        this.notifyChange();
        this.pumpScos();
      });
      this.scoUploads.add(upload);
    }
  }

  private async uploadSco(seq: number): Promise<void> {
    const filePath = path.join(this.options.dir, 'scos', scoFileName(seq));
    const name = volumeObjectName(this.options.backend.volumeId, 'sco', seq);
    const put = async () => {
      let pooled: Buffer | undefined;
      let reusable = false;
      try {
        const data = await this.options.disk.readFileInto(filePath, (sizeBytes) => (pooled = scoUploadBuffers.acquireFitting(sizeBytes, limits.uploadBufferClassBytes)) ?? Buffer.allocUnsafeSlow(sizeBytes));
        if (data === undefined) throw new Error(`SCO file ${filePath} is missing`);
        // The cluster crcs taken at ingest become the data fragments' block crcs (docs/backend-format.md).
        const knownBlockCrcs = decodeScoFileChecksums(data, seq);
        const result = await this.options.backend.store.putObject(name, data, { knownBlockCrcs });
        reusable = (result?.abandonedWrites ?? 0) === 0;
        return data.length;
      } finally {
        // A fragment write that timed out (or failed) may still read the buffer: then it is not reused.
        if (pooled && reusable) scoUploadBuffers.release(pooled);
        else if (pooled) scoUploadBuffers.discard(pooled);
      }
    };
    const bytes = await this.retryForever(`SCO ${seq}`, put);
    if (bytes === undefined) return;
    this.uploaded.add(seq);
    this.counters.scosUploaded += 1;
    this.counters.bytesUploaded += bytes;
    this.persistManifest();
  }

  // ---------------------------------------------------------------- TLogs

  private pumpTlogs(): void {
    if (this.tlogLoopRunning || this.closed || this.tlogQueue.length === 0) return;
    this.tlogLoopRunning = this.tlogLoop().finally(() => {
      this.tlogLoopRunning = undefined;
      this.notifyChange();
      this.pumpTlogs();
    });
  }

  private async tlogLoop(): Promise<void> {
    this.tlogQueue.sort((a, b) => a - b);
    while (!this.closed && this.tlogQueue.length > 0) {
      const seq = this.tlogQueue[0]!;
      const filePath = path.join(this.options.dir, 'tlogs', tlogFileName(seq));
      const data = await this.retryForever(`reading TLog ${seq}`, async () => {
        const bytes = await this.options.disk.readFile(filePath);
        if (bytes === undefined) throw new Error(`TLog file ${filePath} is missing`);
        return bytes;
      });
      if (data === undefined) return;
      const { referenced, closedScos } = tlogReferences(data);
      // The ordering rule: no TLog in the backend may point at a SCO that is not there.
      while (!this.closed && ![...referenced].every((sco) => this.onBackend(sco))) {
        // A TLog rolled before its last SCO sealed waits for writes to fill that SCO: not upload work.
        this.waitingOnUnsealed = [...referenced].some((sco) => !this.onBackend(sco) && !this.scoQueue.includes(sco) && !this.scosInFlight.has(sco));
        await this.nextChange();
      }
      this.waitingOnUnsealed = false;
      if (this.closed) return;
      const name = volumeObjectName(this.options.backend.volumeId, 'tlog', seq, this.options.backend.ownerEpoch);
      const done = await this.retryForever(`TLog ${seq}`, () => this.options.backend.store.putObject(name, data).then(() => true));
      if (done === undefined) return;
      this.tlogQueue.shift();
      this.tlogsUploadedThrough = seq;
      this.counters.tlogsUploaded += 1;
      this.counters.bytesUploaded += data.length;
      for (const [sco, clusterCount] of closedScos) {
        this.covered.add(sco);
        this.uploaded.delete(sco);
        if (this.localScos.has(sco)) this.account.markEvictable(sco, clusterCount * clusterSizeBytes, () => this.evict(sco));
      }
      this.persistManifest();
      this.notifyChange();
    }
  }

  /** On the backend: uploaded, or covered by an uploaded TLog, or not local (evicted / restored). */
  onBackend(sco: number): boolean {
    return this.uploaded.has(sco) || this.covered.has(sco) || !this.localScos.has(sco);
  }

  private async evict(sco: number): Promise<void> {
    if (!this.localScos.delete(sco)) return;
    this.counters.evictedScos += 1;
    await this.options.evictSco(sco);
  }

  // ---------------------------------------------------------------- plumbing

  /** Runs `attempt` until it succeeds or the uploader closes (then undefined). */
  private async retryForever<T>(what: string, attempt: () => Promise<T>): Promise<T | undefined> {
    for (let failures = 0; !this.closed; failures++) {
      try {
        return await attempt();
      } catch (err) {
        this.counters.uploadFailures += 1;
        const log = failures === 0 || failures % 30 === 0 ? this.options.logger.warn.bind(this.options.logger) : this.options.logger.debug.bind(this.options.logger);
        log({ volume: this.options.volumeName, what, failures: failures + 1, err: (err as Error).message }, 'upload failed: retrying');
        await this.nextChange(this.retryDelayMs);
      }
    }
    return undefined;
  }

  private persistManifest(): void {
    const manifest: UploadManifest = {
      tlogsUploadedThrough: this.tlogsUploadedThrough,
      scosUploaded: [...this.uploaded].filter((sco) => !this.covered.has(sco)),
    };
    const filePath = path.join(this.options.dir, uploadManifestFileName);
    this.manifestWrite = this.manifestWrite
      .then(() => this.options.disk.writeFileAtomic(filePath, encodeUploadManifest(manifest)))
      .catch((err) => this.options.logger.error({ err, volume: this.options.volumeName }, 'writing the upload manifest failed'));
  }

  private nextChange(timeoutMs?: number): Promise<void> {
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const wake = () => {
        if (timer) clearTimeout(timer);
        resolve();
      };
      if (timeoutMs !== undefined) timer = setTimeout(() => {
        this.changeWaiters = this.changeWaiters.filter((w) => w !== wake);
        resolve();
      }, timeoutMs);
      this.changeWaiters.push(wake);
    });
  }

  private notifyChange(): void {
    const waiters = this.changeWaiters;
    this.changeWaiters = [];
    for (const wake of waiters) wake();
  }
}

/** SCOs a closed TLog references (WRITE and SCO_CLOSED records) and the ones it closes (with cluster counts). */
export function tlogReferences(data: Buffer): { referenced: Set<number>; closedScos: Map<number, number> } {
  const referenced = new Set<number>();
  const closedScos = new Map<number, number>();
  const count = Math.floor(data.length / tlogRecordBytes);
  for (let index = 0; index < count; index++) {
    const record = decodeTlogRecord(data, index * tlogRecordBytes);
    if (record === undefined) break;
    if (record.type === 'write') referenced.add(record.sco);
    else if (record.type === 'scoClosed') {
      referenced.add(record.sco);
      closedScos.set(record.sco, record.clusterCount);
    }
  }
  return { referenced, closedScos };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
