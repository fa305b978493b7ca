/**
 * The peer side of the DTL (docs/dtl.md): the streams other routers' volumes send their acknowledged
 * writes to. A stream is (volume id, owner epoch, stream id); its records (router/dtl-format.ts) are
 * appended, as received, to segment files under ROUTER/dtl/<volumeId>/<epoch>-<streamId>/<firstSeq>.seg.
 * Trimming retires whole segments; the live bytes of a stream are bounded by limits.dtlBytesMax (an
 * append beyond it is refused with BUSY: the owner then waits for trims, it never drops a record).
 * A retired segment becomes a spare (`<n>.spare`, up to limits.dtlSpareSegmentsMax per stream) that a
 * later segment is renamed from and written over: its pages are in the page cache already, which makes
 * the write cheaper than into a new file. Its older records stay past the live ones; readers stop at the
 * first record out of sequence (decodeDtlSegment).
 *
 * Files are written without fsync: the DTL protects against the crash of the *owner's* process, and the
 * peer's page cache survives that. A restarted peer loads its segments again (torn tails cut).
 *
 * Fencing: `fetch` (a router taking the volume over reads the stream) seals every stream of that volume
 * and epoch, and a stream of a newer epoch fences older ones: appends to a sealed or older stream fail
 * with FENCED, so an old owner cannot acknowledge a write the new owner will never replay. The sealed
 * epoch is also kept in a file (`ROUTER/dtl/<volumeId>/fenced-through`), so that the fence outlives the
 * streams (the new owner drops them once replayed) and a restart of this router: otherwise an old owner,
 * frozen through the takeover, could open a fresh stream at its epoch here and acknowledge writes again.
 */
import { mkdir, readdir, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { NodeDisk, type Disk, type DiskFile } from '../shared/disk.ts';
import { KeelError } from '../shared/errors.ts';
import { limits } from '../shared/limits.ts';
import type { Logger } from '../shared/logger.ts';
import { decodeDtlRecords, decodeDtlSegment, dtlHeaderBytes } from './dtl-format.ts';

interface Segment {
  filePath: string;
  firstSeq: number;
  lastSeq: number;
  bytes: number;
}

interface Stream {
  volumeId: string;
  epoch: number;
  streamId: string;
  dir: string;
  segments: Segment[];
  /** Open handle of the last segment, while appending. */
  handle: DiskFile | undefined;
  lastSeq: number;
  trimmedThrough: number;
  liveBytes: number;
  /** Retired segment files, to be written over by the next segments. */
  spares: string[];
  nextSpareId: number;
  sealed: boolean;
  /** Its first trim dropped the earlier runs' streams of its epoch (see trim). */
  earlierRunsDropped: boolean;
  /** Appends, trims and drops of one stream run one after another, in arrival order. */
  chain: Promise<unknown>;
}

export interface DtlStreamInfo {
  streamId: string;
  lastSeq: number;
  trimmedThrough: number;
  liveBytes: number;
}

const seqDigits = 16;
const epochDigits = 10;

export class DtlStore {
  private readonly streams = new Map<string, Stream>();
  /** Per volume, the highest epoch a takeover sealed: no stream at or below it may open or append. */
  private readonly fencedThrough = new Map<string, number>();
  private readonly counters = { appendedRecords: 0, appendedBytes: 0, refusedFull: 0, refusedFenced: 0, fetches: 0, segmentsReused: 0, segmentsCreated: 0, earlierRunsDropped: 0 };

  private constructor(
    private readonly dir: string,
    private readonly logger: Logger,
    /** Segment appends go through the Disk (inline while the page cache answers, see inline-io-gate.ts). */
    private readonly disk: Disk = new NodeDisk(),
  ) {}

  /** Opens the store and loads the streams a previous run of this router left (torn tails cut). */
  static async open(dir: string, logger: Logger): Promise<DtlStore> {
    await mkdir(dir, { recursive: true });
    const store = new DtlStore(dir, logger);
    await store.load();
    return store;
  }

  /** Starts (or restarts, empty) a stream. FENCED when a newer epoch of the volume exists, or this one was sealed. */
  async openStream(volumeId: string, epoch: number, streamId: string): Promise<void> {
    this.checkNotFenced(volumeId, epoch);
    return this.serialize(volumeId, async () => {
      this.checkNotFenced(volumeId, epoch);
      for (const stream of this.streamsOf(volumeId)) {
        // Older epochs are obsolete once a newer owner streams (it replayed them before it started);
        // the same stream id restarts from scratch (the owner re-sends its whole backlog).
        if (stream.epoch < epoch || (stream.epoch === epoch && stream.streamId === streamId)) await this.remove(stream);
      }
      const stream = newStream(volumeId, epoch, streamId, path.join(this.dir, volumeId, `${String(epoch).padStart(epochDigits, '0')}-${streamId}`));
      await mkdir(stream.dir, { recursive: true });
      this.streams.set(streamKey(volumeId, epoch, streamId), stream);
      this.logger.info({ volumeId, epoch, streamId }, 'DTL stream opened');
    });
  }

  /** Appends encoded records (validated first). Records at or below the stream's last seq are skipped. */
  async append(volumeId: string, epoch: number, streamId: string, payload: Buffer): Promise<{ lastSeq: number }> {
    const stream = this.stream(volumeId, epoch, streamId);
    const { records, tornAt } = decodeDtlRecords(payload);
    if (tornAt !== undefined) throw KeelError.protocol('dtl-append: a torn record in the payload', { tornAt });
    return this.queue(stream, async () => {
      if (stream.sealed) throw this.fenced(stream);
      const fresh = records.filter((r) => r.seq > stream.lastSeq);
      if (fresh.length === 0) return { lastSeq: stream.lastSeq };
      // A new, empty stream (a new peer, or one restarted without it) starts where the owner's untrimmed
      // backlog starts: everything before it is on the backend already. Only a gap inside a stream is an error.
      if (stream.lastSeq === 0 && stream.segments.length === 0) {
        stream.lastSeq = fresh[0]!.seq - 1;
        stream.trimmedThrough = stream.lastSeq;
      }
      if (fresh[0]!.seq !== stream.lastSeq + 1) {
        throw KeelError.protocol(`dtl-append: seq ${fresh[0]!.seq} does not follow ${stream.lastSeq}`, { streamId });
      }
      const start = payload.length - fresh.reduce((sum, r) => sum + dtlHeaderBytes + (r.data?.length ?? 0), 0);
      const bytes = payload.subarray(start);
      if (stream.liveBytes + bytes.length > limits.dtlBytesMax) {
        this.counters.refusedFull += 1;
        throw KeelError.busy(`DTL stream of volume ${volumeId} (dtlBytesMax ${limits.dtlBytesMax})`);
      }
      const segment = await this.writableSegment(stream, fresh[0]!.seq);
      await stream.handle!.write(bytes, segment.bytes);
      segment.bytes += bytes.length;
      segment.lastSeq = fresh[fresh.length - 1]!.seq;
      stream.lastSeq = segment.lastSeq;
      stream.liveBytes += bytes.length;
      this.counters.appendedRecords += fresh.length;
      this.counters.appendedBytes += bytes.length;
      return { lastSeq: stream.lastSeq };
    });
  }

  /**
   * Forgets records up to throughSeq (they reached the backend): deletes the segments they fill. The first
   * trim of a stream also drops the older streams of its epoch: the owner's earlier runs (it restarted at the
   * same epoch). An owner trims a record only once the TLogs up to it are on the backend, and those include
   * everything its start found locally, which is what the earlier runs' streams protected. Kept, they would
   * be replayed by a takeover on top of newer data and roll acknowledged writes back.
   */
  async trim(volumeId: string, epoch: number, streamId: string, throughSeq: number): Promise<void> {
    const stream = this.stream(volumeId, epoch, streamId);
    await this.dropEarlierRuns(stream);
    return this.queue(stream, async () => {
      stream.trimmedThrough = Math.max(stream.trimmedThrough, throughSeq);
      while (stream.segments.length > 0 && stream.segments[0]!.lastSeq <= stream.trimmedThrough && stream.segments[0]!.lastSeq > 0) {
        const segment = stream.segments[0]!;
        if (stream.segments.length === 1) {
          await stream.handle?.close();
          stream.handle = undefined;
        }
        stream.segments.shift();
        stream.liveBytes -= segment.bytes;
        await this.retire(stream, segment.filePath);
      }
    });
  }

  /**
   * Seals every stream of (volume, epoch) — no more appends: the caller is taking the volume over — and
   * lists them oldest first. Read their records with `read`.
   */
  async seal(volumeId: string, epoch: number): Promise<DtlStreamInfo[]> {
    this.counters.fetches += 1;
    await this.fenceThrough(volumeId, epoch);
    const streams = this.streamsOf(volumeId).filter((s) => s.epoch === epoch).sort((a, b) => a.streamId.localeCompare(b.streamId));
    for (const stream of streams) {
      stream.sealed = true;
      await stream.chain.catch(() => undefined); // appends already queued finish first
    }
    this.logger.info({ volumeId, epoch, streams: streams.length }, 'DTL streams sealed for a takeover');
    return streams.map((s) => ({ streamId: s.streamId, lastSeq: s.lastSeq, trimmedThrough: s.trimmedThrough, liveBytes: s.liveBytes }));
  }

  /** Records of a stream with seq > afterSeq, at most about limits.dtlBatchBytesMax (always at least one record). */
  async read(volumeId: string, epoch: number, streamId: string, afterSeq: number): Promise<{ payload: Buffer; lastSeq: number; more: boolean }> {
    const stream = this.stream(volumeId, epoch, streamId);
    const parts: Buffer[] = [];
    let bytes = 0;
    let lastSeq = afterSeq;
    for (const segment of stream.segments) {
      if (segment.lastSeq <= afterSeq) continue;
      // A reused file holds older records past segment.bytes.
      const data = (await readFile(segment.filePath)).subarray(0, segment.bytes);
      const { records } = decodeDtlRecords(data);
      let at = 0;
      for (const record of records) {
        const size = dtlHeaderBytes + (record.data?.length ?? 0);
        if (record.seq > afterSeq && record.seq > stream.trimmedThrough) {
          if (bytes > 0 && bytes + size > limits.dtlBatchBytesMax) return { payload: Buffer.concat(parts), lastSeq, more: true };
          parts.push(data.subarray(at, at + size));
          bytes += size;
          lastSeq = record.seq;
        }
        at += size;
      }
    }
    return { payload: Buffer.concat(parts), lastSeq, more: false };
  }

  /**
   * Deletes streams of a volume: one stream, one epoch's, or (epoch undefined) all. Dropping a whole
   * epoch is what a new owner does after its replay, so that epoch stays fenced here.
   */
  async drop(volumeId: string, epoch?: number, streamId?: string): Promise<void> {
    if (epoch !== undefined && streamId === undefined) await this.fenceThrough(volumeId, epoch);
    for (const stream of this.streamsOf(volumeId)) {
      if (epoch !== undefined && stream.epoch !== epoch) continue;
      if (streamId !== undefined && stream.streamId !== streamId) continue;
      await this.queue(stream, () => this.remove(stream)).catch(() => undefined);
    }
    if (epoch === undefined) {
      // The volume is gone (its id is never reused): its fence goes too.
      this.fencedThrough.delete(volumeId);
      await rm(path.join(this.dir, volumeId), { recursive: true, force: true });
    }
  }

  stats(): typeof this.counters & { streams: number; liveBytes: number } {
    let liveBytes = 0;
    for (const stream of this.streams.values()) liveBytes += stream.liveBytes;
    return { ...this.counters, streams: this.streams.size, liveBytes };
  }

  async close(): Promise<void> {
    for (const stream of this.streams.values()) {
      await stream.chain.catch(() => undefined);
      await stream.handle?.close().catch(() => undefined);
      stream.handle = undefined;
    }
  }

  // ---------------------------------------------------------------- internals

  private stream(volumeId: string, epoch: number, streamId: string): Stream {
    const stream = this.streams.get(streamKey(volumeId, epoch, streamId));
    if (stream === undefined) {
      this.checkNotFenced(volumeId, epoch);
      throw KeelError.badArgument(`no DTL stream ${streamId} of volume ${volumeId} at epoch ${epoch} here`, { volumeId, epoch, streamId });
    }
    return stream;
  }

  private async dropEarlierRuns(stream: Stream): Promise<void> {
    if (stream.earlierRunsDropped) return;
    stream.earlierRunsDropped = true;
    for (const earlier of this.streamsOf(stream.volumeId)) {
      if (earlier.epoch !== stream.epoch || earlier.streamId >= stream.streamId || earlier.sealed) continue;
      this.counters.earlierRunsDropped += 1;
      this.logger.info({ volumeId: stream.volumeId, epoch: stream.epoch, streamId: earlier.streamId, by: stream.streamId }, 'DTL stream of an earlier run of the owner dropped: its records are on the backend');
      await this.queue(earlier, () => this.remove(earlier)).catch(() => undefined);
    }
  }

  private streamsOf(volumeId: string): Stream[] {
    return [...this.streams.values()].filter((s) => s.volumeId === volumeId);
  }

  private checkNotFenced(volumeId: string, epoch: number): void {
    const fencedThrough = this.fencedThrough.get(volumeId);
    if (fencedThrough !== undefined && epoch <= fencedThrough) {
      this.counters.refusedFenced += 1;
      throw new KeelError('FENCED', `DTL of volume ${volumeId} at epoch ${epoch} is fenced (a takeover sealed epoch ${fencedThrough})`, { volumeId, epoch });
    }
    const newer = this.streamsOf(volumeId).find((s) => s.epoch > epoch || (s.epoch === epoch && s.sealed));
    if (newer !== undefined) throw this.fenced(newer, epoch);
  }

  private async fenceThrough(volumeId: string, epoch: number): Promise<void> {
    if ((this.fencedThrough.get(volumeId) ?? 0) >= epoch) return;
    this.fencedThrough.set(volumeId, epoch);
    await mkdir(path.join(this.dir, volumeId), { recursive: true });
    await writeFile(path.join(this.dir, volumeId, fenceFileName), `${epoch}\n`);
  }

  private fenced(stream: Stream, epoch = stream.epoch): KeelError {
    this.counters.refusedFenced += 1;
    return new KeelError('FENCED', `DTL of volume ${stream.volumeId} at epoch ${epoch} is fenced (sealed, or epoch ${stream.epoch} exists)`, {
      volumeId: stream.volumeId,
      epoch,
    });
  }

  private queue<T>(stream: Stream, work: () => Promise<T>): Promise<T> {
    const run = stream.chain.catch(() => undefined).then(work);
    stream.chain = run;
    return run;
  }

  /** Serializes stream creation per volume (through a pseudo stream chain). */
  private readonly volumeChains = new Map<string, Promise<unknown>>();
  private serialize(volumeId: string, work: () => Promise<void>): Promise<void> {
    const run = (this.volumeChains.get(volumeId) ?? Promise.resolve()).catch(() => undefined).then(work);
    this.volumeChains.set(volumeId, run);
    return run;
  }

  private async writableSegment(stream: Stream, firstSeq: number): Promise<Segment> {
    let segment = stream.segments[stream.segments.length - 1];
    if (segment !== undefined && stream.handle !== undefined && segment.bytes < limits.dtlSegmentBytes) return segment;
    await stream.handle?.close();
    stream.handle = undefined;
    const filePath = path.join(stream.dir, `${String(firstSeq).padStart(seqDigits, '0')}.seg`);
    const spare = stream.spares.pop();
    if (spare === undefined) {
      stream.handle = await this.disk.open(filePath, 'createNew');
      this.counters.segmentsCreated += 1;
    } else {
      await this.disk.rename(spare, filePath);
      stream.handle = await this.disk.open(filePath, 'readWrite');
      this.counters.segmentsReused += 1;
    }
    segment = { filePath, firstSeq, lastSeq: 0, bytes: 0 };
    stream.segments.push(segment);
    return segment;
  }

  /** A trimmed segment's file: kept as a spare while there is room, else deleted. */
  private async retire(stream: Stream, filePath: string): Promise<void> {
    if (stream.spares.length >= limits.dtlSpareSegmentsMax) return rm(filePath, { force: true });
    const sparePath = path.join(stream.dir, `${stream.nextSpareId++}${spareSuffix}`);
    await this.disk.rename(filePath, sparePath);
    stream.spares.push(sparePath);
  }

  private async remove(stream: Stream): Promise<void> {
    this.streams.delete(streamKey(stream.volumeId, stream.epoch, stream.streamId));
    await stream.handle?.close().catch(() => undefined);
    stream.handle = undefined;
    await rm(stream.dir, { recursive: true, force: true });
    this.logger.debug({ volumeId: stream.volumeId, epoch: stream.epoch, streamId: stream.streamId }, 'DTL stream dropped');
  }

  /**
   * A stream's segments in seq order, each cut after its last record in sequence (a torn tail, or the older
   * records of a reused file). Records must run on from one segment to the next: past a gap nothing is
   * loaded, because a replay must not skip a write.
   */
  private async loadSegments(stream: Stream): Promise<void> {
    const files = await readdir(stream.dir);
    for (const file of files.filter((f) => f.endsWith(spareSuffix))) {
      stream.spares.push(path.join(stream.dir, file));
      stream.nextSpareId = Math.max(stream.nextSpareId, Number.parseInt(file, 10) + 1 || 0);
    }
    for (const file of files.filter((f) => f.endsWith('.seg')).sort()) {
      const filePath = path.join(stream.dir, file);
      const firstSeq = Number.parseInt(file, 10);
      if (stream.segments.length > 0 && firstSeq !== stream.lastSeq + 1) {
        this.logger.error({ dir: stream.dir, file, lastSeq: stream.lastSeq }, 'DTL stream has a gap: later segments ignored');
        return;
      }
      const data = await readFile(filePath);
      const { records, validBytes } = decodeDtlSegment(data, firstSeq);
      if (validBytes < data.length) await truncate(filePath, validBytes);
      if (records.length === 0) continue;
      stream.segments.push({ filePath, firstSeq, lastSeq: records[records.length - 1]!.seq, bytes: validBytes });
      stream.lastSeq = records[records.length - 1]!.seq;
      stream.liveBytes += validBytes;
    }
  }

  /** Streams of a previous run: every segment decoded, a torn tail cut; records stay for a takeover's fetch. */
  private async load(): Promise<void> {
    for (const volumeId of await readdir(this.dir).catch(() => [] as string[])) {
      const fence = Number.parseInt(await readFile(path.join(this.dir, volumeId, fenceFileName), 'utf8').catch(() => ''), 10);
      if (Number.isSafeInteger(fence) && fence > 0) this.fencedThrough.set(volumeId, fence);
      for (const name of await readdir(path.join(this.dir, volumeId)).catch(() => [] as string[])) {
        const match = /^(\d+)-(.+)$/.exec(name);
        if (match === null) continue;
        const stream = newStream(volumeId, Number(match[1]), match[2]!, path.join(this.dir, volumeId, name));
        try {
          await this.loadSegments(stream);
        } catch (err) {
          this.logger.error({ err, dir: stream.dir }, 'DTL stream unreadable: ignored');
          continue;
        }
        stream.trimmedThrough = (stream.segments[0]?.firstSeq ?? 1) - 1;
        this.streams.set(streamKey(volumeId, stream.epoch, stream.streamId), stream);
        this.logger.info({ volumeId, epoch: stream.epoch, streamId: stream.streamId, lastSeq: stream.lastSeq }, 'DTL stream loaded');
      }
    }
  }
}

const spareSuffix = '.spare';
const fenceFileName = 'fenced-through';

function streamKey(volumeId: string, epoch: number, streamId: string): string {
  return `${volumeId}/${epoch}/${streamId}`;
}

/** An empty stream: opened fresh, or about to be filled from its segment files by load(). */
function newStream(volumeId: string, epoch: number, streamId: string, dir: string): Stream {
  return {
    volumeId,
    epoch,
    streamId,
    dir,
    segments: [],
    handle: undefined,
    lastSeq: 0,
    trimmedThrough: 0,
    liveBytes: 0,
    spares: [],
    nextSpareId: 0,
    sealed: false,
    earlierRunsDropped: false,
    chain: Promise.resolve(),
  };
}
