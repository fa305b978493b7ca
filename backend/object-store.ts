/**
 * ErasureObjectStore: immutable objects (closed SCOs, TLogs) stored as k data + m parity fragments on
 * distinct ASDs, read back by byte range (like Open vStorage's ALBA proxy). Format, placement, partial and
 * degraded reads, repair: docs/backend-format.md.
 *
 * - putObject: stripes the stored stream over k data fragments, encodes m parity units per stripe, PUTs
 *   all k+m fragments in parallel (bounded), each with retries and exponential backoff.
 * - readRange: reads only the blocks of the data fragment(s) holding the range, verified against the
 *   fragment's crc table (cached in a bounded LRU). A missing fragment, an ASD error or timeout, a crc
 *   mismatch, or a caller's `verify` rejecting the bytes falls back to decoding the stripe from any k
 *   other fragments, and the checksum error is counted against the ASD that served the bad bytes.
 * - verifyObject / repairObject: check every fragment end to end; rebuild and rewrite the bad ones.
 */
import assert from 'node:assert';
import { randomBytes } from 'node:crypto';
import { setImmediate as setImmediatePromise } from 'node:timers/promises';
import { crc32c } from '../shared/checksum.ts';
import { KeelError, isKeelError } from '../shared/errors.ts';
import { BufferPool } from '../shared/buffer-pool.ts';
import { limits } from '../shared/limits.ts';
import { silentLogger, type Logger } from '../shared/logger.ts';
import { abortable, type Asd, type AsdWriteStats } from './asd.ts';
import { emptyAsdCounters, emptyObjectStoreCounters, type AsdCounters, type ObjectStoreCounters } from './backend-stats.ts';
import { ChunkTransform } from './chunk-transform.ts';
import { ConcurrencyGate, mapBounded } from './concurrency-gate.ts';
import { ErasureCodec } from './erasure-codec.ts';
import {
  blockAlignedWindow,
  blockCrcEntryBytes,
  decodeChunkIndex,
  decodeFragmentHeader,
  encodeChunkIndex,
  encodeFragmentHeader,
  badBlocks,
  firstBadBlock,
  fragmentFlagAesGcm,
  fragmentBlockBytes,
  fragmentFlagLz4,
  fragmentHeaderBytes,
  fragmentKey,
  fragmentLayout,
  geometryOf,
  fragmentRuns,
  mapStoredRange,
  objectNameHash,
  putIdBytes,
  sameGeometry,
  storedBlockOfDataBlock,
  stripeGeometry,
  tablesCrc,
  type ChunkIndex,
  type ChunkIndexEntry,
  type FragmentHeader,
  type FragmentPiece,
  type FragmentRun,
  type ObjectGeometry,
} from './fragment-format.ts';
import { Placement } from './placement.ts';
import { kSubsets } from './k-subsets.ts';
import { checkStripeParity } from './parity-check.ts';
import { describeStripes, planStripeRepair, type StripeRepairPlan } from './stripe-repair-plan.ts';
import { isRetryableReadFailure, readFailureKind, shortBodyError } from './read-failure.ts';
import { checkPreset, describePreset, presetTransformsChunks, type Preset } from './preset.ts';

export interface ErasureObjectStoreOptions {
  asds: readonly Asd[];
  preset: Preset;
  logger?: Logger;
  requestTimeoutMs?: number;
  retriesMax?: number;
  retryBackoffBaseMs?: number;
  retryBackoffMaxMs?: number;
  requestsInFlightMax?: number;
  headerCacheEntriesMax?: number;
  headerCacheBytesMax?: number;
}

export interface ReadRangeOptions {
  /**
   * The caller's own check of the bytes (e.g. the router's per-cluster crc32c). Returning false makes the
   * store re-read the range by decoding from other fragments, blaming the ASD whose bytes differ. readRange
   * returns only bytes that passed it, or throws CHECKSUM_MISMATCH: callers need not check them again.
   */
  verify?: (data: Buffer) => boolean;
  /**
   * The same check on part of the range: bytes [offset, +data.length) of the object, where `data` lies
   * within one stripe unit and starts and ends at the range's ends or at 4 KiB boundaries of the object.
   * When bytes decoded from the other fragments fail `verify` too, it lets the store find which fragments
   * to leave out (two silently bad fragments in a stripe: ErasureObjectStore.recheckPiece). Untransformed
   * objects only; without it such a read fails with CHECKSUM_MISMATCH.
   */
  verifyPart?: (data: Buffer, offset: number) => boolean;
}

export type FragmentState = 'ok' | 'missing' | 'corrupt' | 'unreachable';

export interface FragmentStatus {
  fragmentIndex: number;
  asdId: string;
  state: FragmentState;
  detail?: string;
}

export interface ObjectVerification {
  name: string;
  k: number;
  m: number;
  fragments: FragmentStatus[];
  healthyFragments: number;
  /** Every fragment is ok. */
  healthy: boolean;
  /** Every stripe has at least k good units (a fragment with bad blocks is bad in their stripes only): the object can be read and repaired. */
  readable: boolean;
  /** Stripes with fewer than k good units: their data is lost (all of them when no fragment header is valid). */
  unrecoverableStripes: number[];
  /**
   * Deep verification only: stripes whose stored parity disagrees with their data units. A stripe where
   * one unit is found to be the bad one shows as that fragment `corrupt` (and is repairable); the others
   * are listed in `unlocatedParityMismatches` too.
   */
  parityMismatchStripes?: number[];
  /** Deep verification only: mismatching stripes whose bad unit cannot be told (more than one, or m = 1). */
  unlocatedParityMismatches?: number[];
}

export interface VerifyOptions {
  /** Also re-encode every intact stripe's parity from its data units and compare with the stored parity. */
  deep?: boolean;
}

export interface PutObjectResult {
  abandonedWrites: number;
}

export interface PutObjectOptions {
  /**
   * crc32c of the object's first `knownBlockCrcs.length` 4 KiB blocks, as the caller computed them when
   * the bytes arrived (the router's SCO cluster crcs). The data fragments' block tables take them instead
   * of computing them again, so the tables check the bytes from ingest on: a block that changed since
   * fails its reads rather than being stored with a fresh crc. Ignored when the preset transforms chunks.
   */
  knownBlockCrcs?: Uint32Array;
}

export interface ObjectInfo {
  name: string;
  sizeBytes: number;
  storedSizeBytes: number;
  k: number;
  m: number;
  asdIds: string[];
}

/** What the store keeps per object for partial reads: its geometry, placement and verified tables. */
interface ObjectMeta {
  name: string;
  geometry: ObjectGeometry;
  /** ASD index of fragment i. */
  asdIndices: number[];
  /** Block crc table of fragment i, loaded on first use. */
  tables: (Buffer | undefined)[];
  chunkIndex?: ChunkIndex;
  transform?: ChunkTransform;
  cacheBytes: number;
}

interface FragmentRead {
  index: number;
  status: FragmentStatus;
  /** Set when header, tables and length are valid (also for a fragment with bad blocks). */
  header?: FragmentHeader;
  body?: Buffer;
  table?: Buffer;
  indexBytes?: Buffer;
  /** Body blocks failing their crc (only when `body` is set). */
  badBlocks?: number[];
}

const objectNamePattern = /^[A-Za-z0-9._\-/]+$/;
const objectNameLengthMax = 512;

export class ErasureObjectStore {
  readonly preset: Preset;
  private readonly asds: readonly Asd[];
  private readonly placement: Placement;
  private readonly log: Logger;
  private readonly gate: ConcurrencyGate;
  private readonly codecs = new Map<string, ErasureCodec>();
  private readonly cache = new Map<string, ObjectMeta>();
  /** Parity of objects being put, reused: fresh memory page-faults (2-5 us per 4 KiB page on the test VM). */
  private readonly parityBuffers = new BufferPool(limits.backendParityBufferBytesMax, limits.backendParityPoolBytesMax);
  private cacheBytes = 0;
  private readonly counters: AsdCounters[];
  private readonly storeCounters: ObjectStoreCounters = emptyObjectStoreCounters();
  private readonly requestTimeoutMs: number;
  private readonly retriesMax: number;
  private readonly retryBackoffBaseMs: number;
  private readonly retryBackoffMaxMs: number;
  private readonly headerCacheEntriesMax: number;
  private readonly headerCacheBytesMax: number;

  constructor(options: ErasureObjectStoreOptions) {
    checkPreset(options.preset, options.asds.length);
    const ids = options.asds.map((a) => a.id);
    if (new Set(ids).size !== ids.length) throw KeelError.badConfig('backend: ASD ids must be distinct', { ids });
    this.preset = options.preset;
    this.asds = options.asds;
    this.placement = new Placement(ids);
    this.log = options.logger ?? silentLogger();
    this.requestTimeoutMs = options.requestTimeoutMs ?? limits.backendRequestTimeoutMs;
    this.retriesMax = options.retriesMax ?? limits.backendRetriesMax;
    this.retryBackoffBaseMs = options.retryBackoffBaseMs ?? limits.backendRetryBackoffBaseMs;
    this.retryBackoffMaxMs = options.retryBackoffMaxMs ?? limits.backendRetryBackoffMaxMs;
    this.gate = new ConcurrencyGate(options.requestsInFlightMax ?? limits.backendFragmentRequestsInFlightMax);
    this.headerCacheEntriesMax = options.headerCacheEntriesMax ?? limits.backendHeaderCacheEntriesMax;
    this.headerCacheBytesMax = options.headerCacheBytesMax ?? limits.backendHeaderCacheBytesMax;
    this.counters = ids.map(emptyAsdCounters);
    this.log.info({ preset: describePreset(this.preset), asds: ids }, 'backend object store ready');
  }

  // ---------------------------------------------------------------- put

  /**
   * Stores `data` as k+m fragments. Resolves once every fragment is stored; `abandonedWrites` counts ASD
   * writes that timed out and were retried: such a write may still be reading `data`, so a caller that
   * reuses the buffer must not do so when it is above zero.
   */
  async putObject(name: string, data: Buffer | readonly Buffer[], options: PutObjectOptions = {}): Promise<PutObjectResult> {
    checkObjectName(name);
    const plain = Buffer.isBuffer(data) ? [data] : data;
    const objectSizeBytes = plain.reduce((sum, b) => sum + b.length, 0);
    if (objectSizeBytes > limits.backendObjectSizeBytesMax)
      throw KeelError.badArgument(`object ${name} has ${objectSizeBytes} bytes, more than ${limits.backendObjectSizeBytesMax}`);
    const knownBlockCrcs = options.knownBlockCrcs;
    assert(knownBlockCrcs === undefined || knownBlockCrcs.length * fragmentBlockBytes <= objectSizeBytes, 'knownBlockCrcs covers blocks past the object');
    const { k, m } = this.preset;
    const nameHash = objectNameHash(name);
    const transformed = presetTransformsChunks(this.preset);
    let stored: readonly Buffer[] = plain;
    let entries: ChunkIndexEntry[] = [];
    if (transformed) ({ stored, entries } = await this.transformChunks(plain, objectSizeBytes, nameHash));
    const storedSizeBytes = stored.reduce((sum, b) => sum + b.length, 0);
    const { stripeUnitBytes, stripeCount } = stripeGeometry(storedSizeBytes, k, this.preset.stripeUnitBytes);
    const geometry: ObjectGeometry = {
      k,
      m,
      flags: (this.preset.compression === 'lz4' ? fragmentFlagLz4 : 0) | (this.preset.encryption === 'aes-256-gcm' ? fragmentFlagAesGcm : 0),
      nameHash,
      objectSizeBytes,
      storedSizeBytes,
      stripeUnitBytes,
      stripeCount,
      chunkSizeBytes: transformed ? this.preset.chunkSizeBytes : 0,
      chunkCount: entries.length,
      putId: randomBytes(putIdBytes),
    };
    const { bodies, pooledParity } = await this.encodeBodies(geometry, stored);
    let parityReusable = false;
    try {
      const known = transformed ? undefined : knownBlockCrcs;
      const abandonedWrites = await this.putFragments(name, geometry, bodies, encodeChunkIndex(entries), known);
      parityReusable = abandonedWrites === 0;
      this.storeCounters.objectsPut++;
      return { abandonedWrites };
    } finally {
      // A write that timed out (or failed) may still read the parity: then it is left to the garbage collector.
      if (pooledParity && parityReusable) this.parityBuffers.release(pooledParity);
      else if (pooledParity) this.parityBuffers.discard(pooledParity);
    }
  }

  /** PUTs the k+m fragments (with retries); returns how many writes timed out along the way, or throws when a fragment could not be stored. */
  private async putFragments(name: string, geometry: ObjectGeometry, bodies: readonly Buffer[][], indexBytes: Buffer, knownBlockCrcs: Uint32Array | undefined): Promise<number> {
    const asdIndices = this.placement.place(name, bodies.length);
    this.forget(name);
    const failures: string[] = [];
    let abandonedWrites = 0;
    await Promise.all(
      bodies.map(async (body, i) => {
        const buffers = await this.fragmentBuffers(geometry, i, body, indexBytes, knownBlockCrcs);
        try {
          await this.withRetries(`put ${fragmentKey(name, i)}`, () =>
            this.request(asdIndices[i]!, 'write', (asd, signal) => asd.put(fragmentKey(name, i), buffers, signal)).catch((err: unknown) => {
              if (isKeelError(err, 'TIMEOUT')) abandonedWrites += 1;
              throw err;
            }),
          );
          this.counters[asdIndices[i]!]!.bytesWritten += buffers.reduce((sum, b) => sum + b.length, 0);
        } catch (err) {
          failures.push(`fragment ${i} on ASD ${this.asds[asdIndices[i]!]!.id}: ${(err as Error).message}`);
        }
      }),
    );
    this.forget(name); // a read racing the put may have cached a half-written object's metadata
    if (failures.length > 0)
      throw KeelError.io(`put of object ${name} failed: ${failures.length} of ${bodies.length} fragments not stored: ${failures.join('; ')}`, undefined, {
        object: name,
        failures,
      });
    return abandonedWrites;
  }

  /** Chunks the plain bytes and compresses/encrypts each chunk on its own. */
  private async transformChunks(plain: readonly Buffer[], sizeBytes: number, nameHash: Buffer) {
    const chunkSize = this.preset.chunkSizeBytes;
    const transform = new ChunkTransform(this.preset, nameHash);
    const chunkCount = Math.ceil(sizeBytes / chunkSize);
    const results = await mapBounded(
      Array.from({ length: chunkCount }, (_, c) => c),
      limits.backendCodecStripesInFlightMax,
      (c) => transform.encode(sliceConcat(plain, c * chunkSize, Math.min(chunkSize, sizeBytes - c * chunkSize)), c),
    );
    return { stored: results.map((r) => r.stored), entries: results.map((r) => r.entry) };
  }

  /**
   * Stripes the stored stream and computes parity: returns the body pieces of each of the k+m fragments,
   * and the pooled parity buffer they point into (undefined when allocated: too large for the pool).
   */
  private async encodeBodies(g: ObjectGeometry, stored: readonly Buffer[]): Promise<{ bodies: Buffer[][]; pooledParity: Buffer | undefined }> {
    const unit = g.stripeUnitBytes;
    const stripeBytes = g.k * unit;
    const stripeParityBytes = g.m * unit;
    const codec = this.codec(g.k, g.m);
    const bodies: Buffer[][] = Array.from({ length: g.k + g.m }, () => []);
    const parityBytes = stripeParityBytes * g.stripeCount;
    const pooledParity = this.parityBuffers.acquireFitting(parityBytes, limits.uploadBufferClassBytes);
    const parityAll = pooledParity ?? Buffer.allocUnsafeSlow(parityBytes);
    const stripes = Array.from({ length: g.stripeCount }, (_, s) => s);
    const encoded = await mapBounded(stripes, limits.backendCodecStripesInFlightMax, async (s) => {
      // Zero-copy when the stripe lies inside one input buffer; otherwise gathered (and zero-padded).
      const data = sliceConcat(stored, s * stripeBytes, stripeBytes, true);
      const parity = parityAll.subarray(s * stripeParityBytes, (s + 1) * stripeParityBytes);
      await codec.encodeStripe(data, 0, parity, 0, unit);
      return { data, parity };
    }).catch((err: unknown) => {
      if (pooledParity) this.parityBuffers.discard(pooledParity); // stripes still encoding may write to it
      throw err;
    });
    for (const { data, parity } of encoded) {
      for (let i = 0; i < g.k; i++) bodies[i]!.push(data.subarray(i * unit, (i + 1) * unit));
      for (let j = 0; j < g.m; j++) bodies[g.k + j]!.push(parity.subarray(j * unit, (j + 1) * unit));
    }
    return { bodies, pooledParity };
  }

  /** Header, tables and body of fragment `index`; `table` when the caller computed it (a repair), else computed here. */
  private async fragmentBuffers(
    g: ObjectGeometry,
    index: number,
    body: readonly Buffer[],
    indexBytes: Buffer,
    knownBlockCrcs?: Uint32Array,
    givenTable?: Buffer,
  ): Promise<Buffer[]> {
    const knownCrcOf =
      knownBlockCrcs !== undefined && index < g.k ? (bodyBlock: number) => knownBlockCrcs[storedBlockOfDataBlock(g, index, bodyBlock)] : undefined;
    const table = givenTable ?? (await blockCrcTableYielding(body, knownCrcOf));
    const header = encodeFragmentHeader({ ...g, fragmentIndex: index, tablesCrc: tablesCrc(table, indexBytes) });
    return [header, table, indexBytes, ...body];
  }

  // ---------------------------------------------------------------- read

  async statObject(name: string): Promise<ObjectInfo> {
    checkObjectName(name);
    const meta = await this.loadMeta(name);
    return {
      name,
      sizeBytes: meta.geometry.objectSizeBytes,
      storedSizeBytes: meta.geometry.storedSizeBytes,
      k: meta.geometry.k,
      m: meta.geometry.m,
      asdIds: meta.asdIndices.map((i) => this.asds[i]!.id),
    };
  }

  async readRange(name: string, offset: number, length: number, options: ReadRangeOptions = {}): Promise<Buffer> {
    checkObjectName(name);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0)
      throw KeelError.badArgument(`readRange ${name}: bad range [${offset}, +${length})`);
    const meta = await this.loadMeta(name);
    const size = meta.geometry.objectSizeBytes;
    if (offset + length > size) throw KeelError.outOfRange(offset, length, size);
    this.storeCounters.rangeReads++;
    if (length === 0) return Buffer.alloc(0);
    // A caller that checks every byte itself (the router: each cluster's crc from ingest) makes the fragments'
    // block crcs redundant on the first pass: skipping their tables saves a GET per fragment first read.
    const checkBlocks = options.verify === undefined;
    const first = meta.transform ? await this.readTransformed(meta, offset, length, false) : await this.readStored(meta, offset, length, false, checkBlocks);
    if (!options.verify || options.verify(first.data)) return first.data;
    // The caller's checksum disagrees with bytes whose block crcs matched: decode the range from the other
    // fragments and blame whichever ASD served bytes that differ.
    this.log.warn({ object: name, offset, length }, 'caller rejected backend bytes: re-reading by decoding');
    const second = meta.transform
      ? await this.readTransformed(meta, offset, length, true)
      : await this.readStored(meta, offset, length, true, true, options.verifyPart);
    if (options.verify(second.data)) return second.data;
    throw KeelError.checksumMismatch(`object ${name} range [${offset}, +${length}) (decoded bytes fail the caller's check too)`, {
      object: name,
      offset,
      length,
    });
  }

  /**
   * Reads stored bytes [storedOffset, +length). `avoidDirect`: decode every piece from the other fragments
   * and compare with what the direct path served (re-read after a failed end-to-end check), checking each
   * piece with `verifyPart` when given (stored offsets are object offsets: untransformed objects only).
   */
  private async readStored(
    meta: ObjectMeta,
    storedOffset: number,
    length: number,
    avoidDirect: boolean,
    checkBlocks = true,
    verifyPart?: (data: Buffer, offset: number) => boolean,
  ): Promise<{ data: Buffer }> {
    const pieces = mapStoredRange(meta.geometry, storedOffset, length);
    const parts = avoidDirect
      ? await Promise.all(pieces.map((piece) => this.recheckPiece(meta, piece, verifyPart && ((bytes: Buffer) => verifyPart(bytes, piece.storedOffset)))))
      : await this.readPieces(meta, pieces, checkBlocks);
    if (parts.length === 1) return { data: parts[0]! };
    return { data: Buffer.concat(parts, length) };
  }

  /** The pieces' bytes, with one ranged read per run of adjacent bytes in a fragment (fragmentRuns). */
  private async readPieces(meta: ObjectMeta, pieces: FragmentPiece[], checkBlocks: boolean): Promise<Buffer[]> {
    const parts: Buffer[] = new Array<Buffer>(pieces.length);
    const reads = fragmentRuns(pieces, limits.backendFragmentReadBytesMax);
    await Promise.all(
      reads.map(async (read) => {
        let data: Buffer;
        try {
          data = await this.readBodyRange(meta, read.fragmentIndex, read.bodyOffset, read.length, checkBlocks);
        } catch (err) {
          await this.readPiecesDegraded(meta, read, pieces, parts, err);
          return;
        }
        for (const index of read.pieceIndexes) {
          const at = pieces[index]!.bodyOffset - read.bodyOffset;
          parts[index] = data.subarray(at, at + pieces[index]!.length);
        }
      }),
    );
    return parts;
  }

  /** A fragment read failed: each of its pieces is decoded from the other fragments. */
  private async readPiecesDegraded(meta: ObjectMeta, read: FragmentRun, pieces: FragmentPiece[], parts: Buffer[], err: unknown): Promise<void> {
    if (!isKeelError(err) || err.code === 'BAD_ARGUMENT') throw err;
    this.storeCounters.degradedReads += read.pieceIndexes.length;
    this.log.warn(
      { object: meta.name, fragment: read.fragmentIndex, asd: this.asdIdOf(meta, read.fragmentIndex), err: err.message },
      'fragment unreadable: decoding from the others',
    );
    // A failure that may not recur (in passing, a short body, bytes bad in transit) leaves the fragment as a
    // last resort: with m fragments already lost, it is needed.
    const lastResort = isRetryableReadFailure(err) ? new Map([[read.fragmentIndex, err]]) : undefined;
    await Promise.all(
      read.pieceIndexes.map(async (index) => {
        parts[index] = await this.readPieceDegraded(meta, pieces[index]!, new Set([read.fragmentIndex]), lastResort);
      }),
    );
  }

  private async readTransformed(meta: ObjectMeta, offset: number, length: number, avoidDirect: boolean): Promise<{ data: Buffer }> {
    const g = meta.geometry;
    const index = meta.chunkIndex!;
    const firstChunk = Math.floor(offset / g.chunkSizeBytes);
    const lastChunk = Math.floor((offset + length - 1) / g.chunkSizeBytes);
    const storedStart = index.storedOffsets[firstChunk]!;
    const storedEnd = index.storedOffsets[lastChunk + 1]!;
    const decodeAll = async (stored: Buffer) => {
      const plains: Buffer[] = [];
      for (let c = firstChunk; c <= lastChunk; c++) {
        const from = index.storedOffsets[c]! - storedStart;
        const to = index.storedOffsets[c + 1]! - storedStart;
        const plainLength = Math.min(g.chunkSizeBytes, g.objectSizeBytes - c * g.chunkSizeBytes);
        plains.push(await meta.transform!.decode(stored.subarray(from, to), c, index.compressed[c] === 1, index.plainCrcs[c]!, plainLength));
      }
      const joined = plains.length === 1 ? plains[0]! : Buffer.concat(plains);
      const skip = offset - firstChunk * g.chunkSizeBytes;
      return joined.subarray(skip, skip + length);
    };
    const { data: stored } = await this.readStored(meta, storedStart, storedEnd - storedStart, avoidDirect);
    try {
      return { data: await decodeAll(stored) };
    } catch (err) {
      if (avoidDirect || !isKeelError(err, 'CHECKSUM_MISMATCH')) throw err;
      this.log.warn({ object: meta.name, err: (err as Error).message }, 'chunk failed its check: re-reading by decoding');
      const again = await this.readStored(meta, storedStart, storedEnd - storedStart, true);
      return { data: await decodeAll(again.data) };
    }
  }

  /**
   * Decodes a piece without its fragment and compares with the direct bytes; blames the ASD on a difference.
   * With `accept` (the caller's check of this piece), a decode it rejects had a silently bad fragment among
   * its k sources (bytes and crc table rewritten alike, so no block crc sees it): other k-subsets of the
   * stripe's fragments are tried (decodeAccepted), then the direct bytes, before the decode is returned
   * anyway (and the caller's check of the range fails).
   */
  private async recheckPiece(meta: ObjectMeta, piece: FragmentPiece, accept?: (bytes: Buffer) => boolean): Promise<Buffer> {
    this.storeCounters.degradedReads++;
    let decoded = await this.readPieceDegraded(meta, piece, new Set([piece.fragmentIndex]));
    const direct = await this.readBodyRange(meta, piece.fragmentIndex, piece.bodyOffset, piece.length).catch(() => undefined);
    if (accept && !accept(decoded)) {
      const agreed = await this.decodeAccepted(meta, piece, accept);
      if (agreed) decoded = agreed;
      else if (direct && accept(direct)) {
        this.log.warn({ object: meta.name, fragment: piece.fragmentIndex }, 'no decode passes the caller\'s check, the fragment\'s own bytes do');
        return direct;
      }
    }
    if (direct && !direct.equals(decoded)) {
      const asd = meta.asdIndices[piece.fragmentIndex]!;
      this.counters[asd]!.checksumErrors++;
      this.log.warn({ object: meta.name, fragment: piece.fragmentIndex, asd: this.asds[asd]!.id }, 'fragment bytes differ from decoded bytes');
    }
    return decoded;
  }

  /**
   * Reads body bytes of one fragment, widened to whole 4 KiB blocks and checked against the fragment's
   * crc table (unless `checkBlocks` is false: the caller checks them). Throws (IO, TIMEOUT,
   * OBJECT_NOT_FOUND, CORRUPT, CHECKSUM_MISMATCH) on any problem.
   */
  private async readBodyRange(meta: ObjectMeta, fragment: number, bodyOffset: number, length: number, checkBlocks = true): Promise<Buffer> {
    const asd = meta.asdIndices[fragment]!;
    const { start, end } = blockAlignedWindow(bodyOffset, length);
    const bodyStart = fragmentLayout(meta.geometry).bodyOffset;
    const key = fragmentKey(meta.name, fragment);
    const [table, data] = await Promise.all([
      checkBlocks ? this.fragmentTable(meta, fragment) : undefined,
      this.request(asd, 'read', (a, signal) => a.getRange(key, bodyStart + start, end - start, signal)),
    ]);
    this.counters[asd]!.bytesRead += data.length;
    if (data.length !== end - start) {
      this.counters[asd]!.readErrors++;
      throw shortBodyError(`fragment ${key} on ASD ${this.asds[asd]!.id}`, data.length, end - start, { asd: this.asds[asd]!.id });
    }
    const bad = table === undefined ? -1 : firstBadBlock(table, start, data);
    if (bad >= 0) {
      this.counters[asd]!.checksumErrors++;
      throw KeelError.checksumMismatch(`fragment ${key} block ${bad} on ASD ${this.asds[asd]!.id}`, { asd: this.asds[asd]!.id, block: bad });
    }
    return data.subarray(bodyOffset - start, bodyOffset - start + length);
  }

  /**
   * Piece bytes decoded from a k-subset of the other fragments of its stripe that `accept` passes, trying
   * at most backendDecodeSubsetsMax subsets; blames every fragment whose unit differs from that decode.
   * Undefined when none passes. k = 1: the first other replica whose bytes pass.
   */
  private async decodeAccepted(meta: ObjectMeta, piece: FragmentPiece, accept: (bytes: Buffer) => boolean): Promise<Buffer | undefined> {
    const g = meta.geometry;
    const unit = g.stripeUnitBytes;
    const others = Array.from({ length: g.k + g.m }, (_, f) => f).filter((f) => f !== piece.fragmentIndex);
    if (g.k === 1) {
      for (const f of others) {
        const bytes = await this.readBodyRange(meta, f, piece.bodyOffset, piece.length).catch(() => undefined);
        if (bytes && accept(bytes)) return bytes;
      }
      return undefined;
    }
    const stripe = Math.floor(piece.bodyOffset / unit); // with k > 1 a piece never leaves its stripe unit
    const at = piece.bodyOffset - stripe * unit;
    const units = await Promise.all(others.map((f) => this.readBodyRange(meta, f, stripe * unit, unit).catch(() => undefined)));
    const present = others.filter((_, i) => units[i] !== undefined);
    const unitOf = (f: number) => units[others.indexOf(f)]!;
    let tried = 0;
    for (const subset of kSubsets(present, g.k)) {
      if (tried++ >= limits.backendDecodeSubsetsMax) break;
      this.storeCounters.subsetDecodes++;
      const sources = Array.from({ length: g.k + g.m }, (_, f) => (subset.includes(f) ? unitOf(f) : undefined));
      const rebuilt = await this.codec(g.k, g.m).reconstructStripe(sources, unit);
      const bytes = rebuilt[piece.fragmentIndex]!.subarray(at, at + piece.length);
      if (!accept(bytes)) continue;
      for (const f of present) {
        if (subset.includes(f) || unitOf(f).equals(rebuilt[f]!)) continue;
        this.counters[meta.asdIndices[f]!]!.checksumErrors++;
        this.log.warn({ object: meta.name, fragment: f, stripe, asd: this.asdIdOf(meta, f) }, 'fragment bytes differ from the decode that passes the caller\'s check');
      }
      return Buffer.from(bytes);
    }
    this.log.warn({ object: meta.name, fragment: piece.fragmentIndex, stripe, tried }, 'no decode of the stripe passes the caller\'s check');
    return undefined;
  }

  /** `lastResort`: fragments in `excluded` (with their failure) that may still be retried when the others are not enough. */
  private async readPieceDegraded(meta: ObjectMeta, piece: FragmentPiece, excluded: Set<number>, lastResort?: ReadonlyMap<number, unknown>): Promise<Buffer> {
    const g = meta.geometry;
    if (g.k === 1) return this.readFromReplica(meta, piece, excluded);
    const unit = g.stripeUnitBytes;
    const out = Buffer.allocUnsafe(piece.length);
    const firstStripe = Math.floor(piece.bodyOffset / unit);
    const lastStripe = Math.floor((piece.bodyOffset + piece.length - 1) / unit);
    for (let s = firstStripe; s <= lastStripe; s++) {
      const units = await this.decodeStripe(meta, s, excluded, lastResort);
      const from = Math.max(piece.bodyOffset, s * unit);
      const to = Math.min(piece.bodyOffset + piece.length, (s + 1) * unit);
      units[piece.fragmentIndex]!.copy(out, from - piece.bodyOffset, from - s * unit, to - s * unit);
    }
    return out;
  }

  /** k = 1: every fragment is a full copy, so the same range is read from the next healthy replica. */
  private async readFromReplica(meta: ObjectMeta, piece: FragmentPiece, excluded: Set<number>): Promise<Buffer> {
    const errors: string[] = [];
    for (let f = 0; f < meta.geometry.k + meta.geometry.m; f++) {
      if (excluded.has(f)) continue;
      try {
        return await this.readBodyRange(meta, f, piece.bodyOffset, piece.length);
      } catch (err) {
        errors.push(`fragment ${f}: ${(err as Error).message}`);
      }
    }
    throw this.tooFewFragments(meta, 0, errors);
  }

  /**
   * Reads stripe `s` from any k readable fragments outside `excluded` and rebuilds all its units. Fragments
   * whose failure may not recur (read-failure.ts: in passing, a short body, a bad block once), and those in
   * `lastResort`, get bounded retries before the read fails: with m fragments lost, one such failure would
   * otherwise be an EIO.
   */
  private async decodeStripe(meta: ObjectMeta, stripe: number, excluded: Set<number>, lastResort?: ReadonlyMap<number, unknown>): Promise<Buffer[]> {
    const g = meta.geometry;
    const unit = g.stripeUnitBytes;
    const n = g.k + g.m;
    const candidates = Array.from({ length: n }, (_, f) => f).filter((f) => !excluded.has(f));
    const units: (Buffer | undefined)[] = new Array(n).fill(undefined);
    const errors: string[] = [];
    /** Fragment -> its first failure, for the retry pass. */
    const retryable = new Map(lastResort);
    let next = 0;
    let good = 0;
    const readOnce = (f: number) => this.readBodyRange(meta, f, stripe * unit, unit);
    const retryingRead = (f: number) => {
      // Bad block crcs are re-read at most backendBadBlockRereadsMax times in all, the first failure included.
      let badBlocks = readFailureKind(retryable.get(f)) === 'bad-block' ? 1 : 0;
      if (readFailureKind(retryable.get(f)) !== 'passing') this.storeCounters.badBodyRereads++;
      return this.withRetries(`read ${fragmentKey(meta.name, f)} stripe ${stripe}`, () => readOnce(f), (err) => {
        const kind = readFailureKind(err);
        if (kind === 'bad-block' && ++badBlocks > limits.backendBadBlockRereadsMax) return false;
        if (kind === 'short-body' || kind === 'bad-block') this.storeCounters.badBodyRereads++;
        return kind !== 'final';
      });
    };
    /** One unit into `units`; a failure is noted, and remembered for the retry pass when it may not recur. */
    const tryUnit = async (f: number, read: (f: number) => Promise<Buffer>, firstPass: boolean): Promise<void> => {
      try {
        units[f] = await read(f);
        good++;
      } catch (err) {
        errors.push(`fragment ${f} on ASD ${this.asdIdOf(meta, f)}: ${(err as Error).message}`);
        if (firstPass && isRetryableReadFailure(err)) retryable.set(f, err);
      }
    };
    // Start k reads; every failure starts the next candidate, until k units are in or none is left.
    const worker = async (): Promise<void> => {
      while (good < g.k && next < candidates.length) await tryUnit(candidates[next++]!, readOnce, true);
    };
    await Promise.all(Array.from({ length: Math.min(g.k, candidates.length) }, worker));
    if (good < g.k && retryable.size > 0) {
      this.storeCounters.readRetries++;
      await Promise.all([...retryable.keys()].map((f) => tryUnit(f, retryingRead, false)));
    }
    if (good < g.k) throw this.tooFewFragments(meta, stripe, errors);
    this.storeCounters.stripesDecoded++;
    // Only k units feed the decode; extra ones read by racing workers are dropped.
    let kept = 0;
    const sources = units.map((u) => (u && kept++ < g.k ? u : undefined));
    return this.codec(g.k, g.m).reconstructStripe(sources, unit);
  }

  private tooFewFragments(meta: ObjectMeta, stripe: number, errors: string[]): KeelError {
    const g = meta.geometry;
    return KeelError.io(
      `object ${meta.name}: stripe ${stripe} cannot be read: more than m=${g.m} of its ${g.k + g.m} fragments are missing or bad (${errors.join('; ')})`,
      undefined,
      { object: meta.name, stripe, k: g.k, m: g.m, errors },
    );
  }

  // ---------------------------------------------------------------- metadata (headers + tables, LRU)

  private async loadMeta(name: string): Promise<ObjectMeta> {
    const cached = this.cache.get(name);
    if (cached) {
      this.storeCounters.headerCacheHits++;
      this.cache.delete(name); // re-insert: Map order is the LRU order
      this.cache.set(name, cached);
      return cached;
    }
    this.storeCounters.headerCacheMisses++;
    const nameHash = objectNameHash(name);
    let n = this.preset.k + this.preset.m;
    let asdIndices = this.placement.place(name, n);
    const errors: string[] = [];
    let notFound = 0;
    for (let f = 0; f < n; f++) {
      const key = fragmentKey(name, f);
      try {
        const buf = await this.request(asdIndices[f]!, 'read', (a, signal) => a.getRange(key, 0, fragmentHeaderBytes, signal));
        this.counters[asdIndices[f]!]!.bytesRead += buf.length;
        const header = decodeFragmentHeader(buf, nameHash, `header of ${key}`);
        if (header.fragmentIndex !== f) throw KeelError.corrupt(`header of ${key}: says fragment ${header.fragmentIndex}`);
        // The object may predate a preset change: its own k+m decides where its fragments are.
        if (header.k + header.m !== n) {
          n = header.k + header.m;
          asdIndices = this.placement.place(name, n);
        }
        const meta: ObjectMeta = {
          name,
          geometry: geometryOf(header),
          asdIndices,
          tables: new Array(n).fill(undefined),
          cacheBytes: 200,
        };
        if (header.flags !== 0) await this.loadChunkIndex(meta);
        this.remember(meta);
        return meta;
      } catch (err) {
        if (isKeelError(err, 'OBJECT_NOT_FOUND')) notFound++;
        else if (isKeelError(err, 'CORRUPT')) this.counters[asdIndices[f]!]!.checksumErrors++;
        errors.push(`fragment ${f}: ${(err as Error).message}`);
      }
    }
    if (notFound === n) throw KeelError.objectNotFound(`object ${name}`, { object: name });
    throw KeelError.io(`object ${name}: no fragment header could be read (${errors.join('; ')})`, undefined, { object: name, errors });
  }

  private async loadChunkIndex(meta: ObjectMeta): Promise<void> {
    const g = meta.geometry;
    if (g.flags & fragmentFlagAesGcm && !this.preset.encryptionKey)
      throw KeelError.badConfig(`object ${meta.name} is encrypted but the preset has no key`);
    const errors: string[] = [];
    for (let f = 0; f < g.k + g.m; f++) {
      try {
        const { indexBytes } = await this.loadFragmentTables(meta, f);
        meta.chunkIndex = decodeChunkIndex(indexBytes, g);
        meta.transform = new ChunkTransform(
          {
            compression: g.flags & fragmentFlagLz4 ? 'lz4' : 'none',
            encryption: g.flags & fragmentFlagAesGcm ? 'aes-256-gcm' : 'none',
            ...(this.preset.encryptionKey ? { encryptionKey: this.preset.encryptionKey } : {}),
          },
          g.nameHash,
        );
        meta.cacheBytes += indexBytes.length * 2;
        return;
      } catch (err) {
        errors.push(`fragment ${f}: ${(err as Error).message}`);
      }
    }
    throw KeelError.io(`object ${meta.name}: no chunk index could be read (${errors.join('; ')})`, undefined, { errors });
  }

  private async fragmentTable(meta: ObjectMeta, fragment: number): Promise<Buffer> {
    return meta.tables[fragment] ?? (await this.loadFragmentTables(meta, fragment)).table;
  }

  /** One GET of header + crc table + chunk index of a fragment, all verified; the table is cached. */
  private async loadFragmentTables(meta: ObjectMeta, fragment: number): Promise<{ table: Buffer; indexBytes: Buffer }> {
    const layout = fragmentLayout(meta.geometry);
    const asd = meta.asdIndices[fragment]!;
    const key = fragmentKey(meta.name, fragment);
    const buf = await this.request(asd, 'read', (a, signal) => a.getRange(key, 0, layout.bodyOffset, signal));
    this.counters[asd]!.bytesRead += buf.length;
    try {
      const header = decodeFragmentHeader(buf, meta.geometry.nameHash, `header of ${key}`);
      if (header.fragmentIndex !== fragment || !sameGeometry(header, meta.geometry))
        throw KeelError.corrupt(`header of ${key}: belongs to another put of the object`);
      if (buf.length !== layout.bodyOffset) throw KeelError.corrupt(`tables of ${key}: short`);
      const table = Buffer.from(buf.subarray(layout.tableOffset, layout.indexOffset));
      const indexBytes = buf.subarray(layout.indexOffset, layout.bodyOffset);
      if (tablesCrc(table, indexBytes) !== header.tablesCrc) throw KeelError.corrupt(`tables of ${key}: crc mismatch`);
      if (!meta.tables[fragment]) {
        meta.tables[fragment] = table;
        this.growCached(meta, table.length);
      }
      return { table, indexBytes };
    } catch (err) {
      this.counters[asd]!.checksumErrors++;
      throw err;
    }
  }

  private remember(meta: ObjectMeta): void {
    this.forget(meta.name);
    this.cache.set(meta.name, meta);
    this.cacheBytes += meta.cacheBytes;
    this.evict();
  }

  private growCached(meta: ObjectMeta, bytes: number): void {
    meta.cacheBytes += bytes;
    if (this.cache.get(meta.name) === meta) {
      this.cacheBytes += bytes;
      this.evict();
    }
  }

  private evict(): void {
    while (this.cache.size > this.headerCacheEntriesMax || (this.cacheBytes > this.headerCacheBytesMax && this.cache.size > 1)) {
      const oldest = this.cache.keys().next().value as string;
      this.forget(oldest);
    }
  }

  /**
   * Drops the cached headers and tables of every object whose name starts with `prefix`. A router that
   * opens a volume another router owned meanwhile must not trust them: that owner may have deleted
   * objects (a scrub), and a cached header would turn "not found" into an unreadable stripe.
   */
  forgetPrefix(prefix: string): void {
    for (const name of [...this.cache.keys()]) if (name.startsWith(prefix)) this.forget(name);
  }

  private forget(name: string): void {
    const meta = this.cache.get(name);
    if (!meta) return;
    this.cache.delete(name);
    this.cacheBytes -= meta.cacheBytes;
  }

  // ---------------------------------------------------------------- delete, verify, repair

  async deleteObject(name: string): Promise<void> {
    checkObjectName(name);
    let n = this.preset.k + this.preset.m;
    try {
      const meta = await this.loadMeta(name);
      n = meta.geometry.k + meta.geometry.m;
    } catch (err) {
      if (isKeelError(err, 'OBJECT_NOT_FOUND')) return;
      // No header readable: delete where the current preset would have put the fragments.
    }
    this.forget(name);
    const asdIndices = this.placement.place(name, n);
    const failures: string[] = [];
    await Promise.all(
      asdIndices.map(async (asd, f) => {
        try {
          await this.withRetries(`delete ${fragmentKey(name, f)}`, () =>
            this.request(asd, 'write', (a, signal) => a.delete(fragmentKey(name, f), signal)),
          );
        } catch (err) {
          failures.push(`fragment ${f} on ASD ${this.asds[asd]!.id}: ${(err as Error).message}`);
        }
      }),
    );
    if (failures.length > 0) throw KeelError.io(`delete of object ${name} incomplete: ${failures.join('; ')}`, undefined, { failures });
  }

  async verifyObject(name: string, options: VerifyOptions = {}): Promise<ObjectVerification> {
    checkObjectName(name);
    const { verification } = await this.readAllFragments(name, options);
    return verification;
  }

  /**
   * Rewrites every missing or corrupt fragment, stripe by stripe from the k good units of each stripe (a
   * fragment with bad blocks still serves its other stripes: stripe-repair-plan.ts). Returns the fragment
   * indices rewritten. Stripes with fewer than k good units cannot be rebuilt: the damaged fragments are
   * still rewritten for their other stripes (keeping, in those stripes, their bytes under their old crcs,
   * or marked-bad blocks when they had none, so the loss stays visible), then it throws naming the stripes.
   */
  async repairObject(name: string, options: VerifyOptions = {}): Promise<{ repaired: number[] }> {
    checkObjectName(name);
    const { verification, reads, geometry, asdIndices, plan } = await this.readAllFragments(name, options);
    if (verification.healthy) return { repaired: [] };
    if (!geometry || !plan)
      throw KeelError.io(`object ${name} cannot be repaired: no fragment has a valid header`, undefined, { object: name, fragments: verification.fragments });
    const g = geometry;
    const unit = g.stripeUnitBytes;
    const n = g.k + g.m;
    const codec = this.codec(g.k, g.m);
    const unrecoverable = new Set(plan.unrecoverable);
    /** Fragment -> stripe -> its rebuilt unit. */
    const rebuilt = new Map<number, Map<number, Buffer>>();
    for (const { stripe, good, damaged } of plan.damagedStripes) {
      if (unrecoverable.has(stripe)) continue;
      const units: (Buffer | undefined)[] = new Array(n).fill(undefined);
      for (const f of good.slice(0, g.k)) units[f] = reads[f]!.body!.subarray(stripe * unit, (stripe + 1) * unit);
      const all = await codec.reconstructStripe(units, unit);
      for (const f of damaged) {
        if (!rebuilt.has(f)) rebuilt.set(f, new Map());
        rebuilt.get(f)!.set(stripe, all[f]!);
      }
    }
    const rewrite = [...rebuilt.keys()].sort((a, b) => a - b);
    const indexBytes = reads.find((r) => r.body !== undefined)!.indexBytes!;
    this.forget(name);
    await Promise.all(
      rewrite.map(async (f) => {
        const own = reads[f]!;
        const units = rebuilt.get(f)!;
        const body = Array.from({ length: g.stripeCount }, (_, s) => units.get(s) ?? own.body?.subarray(s * unit, (s + 1) * unit) ?? Buffer.alloc(unit));
        const table = await blockCrcTableYielding(body);
        for (const s of plan.unrecoverable) {
          if (units.has(s)) continue;
          const from = (s * unit) / fragmentBlockBytes;
          const to = ((s + 1) * unit) / fragmentBlockBytes;
          // Never store lost bytes under a fresh crc: keep the old entries (they fail for the bad blocks), or
          // when the fragment had no valid table, entries that fail for every block of the stripe.
          if (own.table) own.table.copy(table, from * blockCrcEntryBytes, from * blockCrcEntryBytes, to * blockCrcEntryBytes);
          else for (let b = from; b < to; b++) table.writeUInt32LE(~table.readUInt32LE(b * blockCrcEntryBytes) >>> 0, b * blockCrcEntryBytes);
        }
        const buffers = await this.fragmentBuffers(g, f, body, indexBytes, undefined, table);
        const asd = asdIndices[f]!;
        await this.withRetries(`repair ${fragmentKey(name, f)}`, () =>
          this.request(asd, 'write', (a, signal) => a.put(fragmentKey(name, f), buffers, signal)),
        );
        this.counters[asd]!.bytesWritten += buffers.reduce((sum, b) => sum + b.length, 0);
        this.counters[asd]!.fragmentsRepaired++;
      }),
    );
    const unlocated = verification.unlocatedParityMismatches ?? [];
    if (unlocated.length > 0 && plan.unrecoverable.length === 0)
      throw KeelError.io(
        `object ${name} ${rewrite.length > 0 ? `repaired only in part (fragments ${rewrite.join(', ')} rewritten)` : 'cannot be repaired'}: ` +
          `stripes ${describeStripes(unlocated)} have parity that disagrees with their data, and which unit is bad cannot be told`,
        undefined,
        { object: name, repaired: rewrite, unlocatedParityMismatches: unlocated, fragments: verification.fragments },
      );
    if (plan.unrecoverable.length > 0) {
      const first = plan.damagedStripes.find((d) => d.stripe === plan.unrecoverable[0])!;
      const why =
        `${plan.unrecoverable.length} of ${g.stripeCount} stripes have fewer than k=${g.k} good units: stripes ${describeStripes(plan.unrecoverable)}` +
        ` (stripe ${first.stripe}: fragments ${first.damaged.join(', ')} missing or bad)`;
      this.log.error({ object: name, repaired: rewrite, unrecoverableStripes: plan.unrecoverable }, 'object not fully repairable');
      throw KeelError.io(
        rewrite.length > 0 ? `object ${name} repaired only in part (fragments ${rewrite.join(', ')} rewritten): ${why}` : `object ${name} cannot be repaired: ${why}`,
        undefined,
        { object: name, repaired: rewrite, unrecoverableStripes: plan.unrecoverable, fragments: verification.fragments },
      );
    }
    this.log.info({ object: name, repaired: rewrite, stripes: plan.damagedStripes.length }, 'object repaired');
    return { repaired: rewrite };
  }

  /**
   * Downloads and checks every fragment end to end. The object's identity is the put whose fragments are
   * the most numerous among the valid ones; fragments of another put count as corrupt.
   */
  private async readAllFragments(name: string, options: VerifyOptions = {}) {
    let n = this.preset.k + this.preset.m;
    try {
      const meta = await this.loadMeta(name);
      n = meta.geometry.k + meta.geometry.m;
    } catch (err) {
      if (isKeelError(err, 'OBJECT_NOT_FOUND')) throw err;
    }
    const asdIndices = this.placement.place(name, n);
    const nameHash = objectNameHash(name);
    const reads = await Promise.all(asdIndices.map((asd, f) => this.readWholeFragment(name, nameHash, f, asd)));
    const groups = new Map<string, FragmentRead[]>();
    for (const r of reads) {
      if (!r.header) continue; // a fragment with bad blocks still has a valid header: it votes too
      const id = r.header.putId.toString('hex');
      groups.set(id, [...(groups.get(id) ?? []), r]);
    }
    const winner = [...groups.values()].sort((a, b) => b.length - a.length)[0] ?? [];
    const geometry = winner[0] ? geometryOf(winner[0].header!) : undefined;
    for (const r of reads) {
      if (r.header && geometry && !sameGeometry(r.header, geometry)) {
        r.status = { ...r.status, state: 'corrupt', detail: 'fragment of another put of this object' };
        if (r.badBlocks?.length === 0) this.counters[asdIndices[r.index]!]!.checksumErrors++; // bad blocks were counted already
        for (const key of ['header', 'body', 'table', 'indexBytes', 'badBlocks'] as const) delete r[key];
      }
    }
    const k = geometry?.k ?? this.preset.k;
    const damageOf = () => reads.map((r) => ({ usable: r.body !== undefined, badBlocks: r.badBlocks ?? [] }));
    let plan = geometry && planStripeRepair(geometry, damageOf());
    const deep = options.deep && geometry && plan ? await this.checkParity(name, geometry, reads, plan, asdIndices) : undefined;
    if (deep && deep.located > 0) plan = planStripeRepair(geometry!, damageOf()); // located bad units are damage now
    const healthyFragments = reads.filter((r) => r.status.state === 'ok').length;
    const unrecoverableStripes = plan ? plan.unrecoverable : [];
    const verification: ObjectVerification = {
      name,
      k,
      m: n - k,
      fragments: reads.map((r) => r.status),
      healthyFragments,
      healthy: healthyFragments === n && (deep === undefined || deep.mismatched.length === 0),
      readable: plan !== undefined && unrecoverableStripes.length === 0,
      unrecoverableStripes,
      ...(deep ? { parityMismatchStripes: deep.mismatched, unlocatedParityMismatches: deep.unlocated } : {}),
    };
    return { verification, reads, geometry, asdIndices, plan };
  }

  /**
   * Deep verification: re-encodes the parity of every stripe whose units all pass their crcs and compares
   * it with the stored parity (parity-check.ts). A located bad unit becomes bad blocks of its fragment (the
   * whole unit), so the plan and a repair treat it like any other damage; its ASD is blamed.
   */
  private async checkParity(name: string, g: ObjectGeometry, reads: FragmentRead[], plan: StripeRepairPlan, asdIndices: number[]) {
    const unit = g.stripeUnitBytes;
    const codec = this.codec(g.k, g.m);
    const damaged = new Set(plan.damagedStripes.map((d) => d.stripe));
    const mismatched: number[] = [];
    const unlocated: number[] = [];
    let located = 0;
    for (let s = 0; s < g.stripeCount; s++) {
      if (damaged.has(s)) continue;
      const units = reads.map((r) => r.body!.subarray(s * unit, (s + 1) * unit));
      const check = await checkStripeParity(codec, units, unit);
      if (check.consistent) continue;
      mismatched.push(s);
      if (check.badUnit === undefined) {
        unlocated.push(s);
        continue;
      }
      located++;
      const r = reads[check.badUnit]!;
      const blocksPerUnit = unit / fragmentBlockBytes;
      r.badBlocks = [...r.badBlocks!, ...Array.from({ length: blocksPerUnit }, (_, b) => s * blocksPerUnit + b)].sort((a, b) => a - b);
      const detail = `stripe ${s} disagrees with the other units (parity check)`;
      r.status = { ...r.status, state: 'corrupt', detail: r.status.state === 'corrupt' ? `${r.status.detail}; ${detail}` : detail };
      this.counters[asdIndices[r.index]!]!.checksumErrors++;
      this.log.warn({ object: name, fragment: r.index, stripe: s }, 'deep verify: a unit disagrees with the rest of its stripe');
    }
    return { mismatched, unlocated, located };
  }

  private async readWholeFragment(name: string, nameHash: Buffer, f: number, asd: number): Promise<FragmentRead> {
    const key = fragmentKey(name, f);
    const asdId = this.asds[asd]!.id;
    const status = (state: FragmentState, detail?: string): FragmentStatus => ({ fragmentIndex: f, asdId, state, ...(detail ? { detail } : {}) });
    let buf: Buffer;
    try {
      buf = await this.request(asd, 'read', (a, signal) => a.get(key, signal));
      this.counters[asd]!.bytesRead += buf.length;
    } catch (err) {
      if (isKeelError(err, 'OBJECT_NOT_FOUND')) return { index: f, status: status('missing') };
      return { index: f, status: status('unreachable', (err as Error).message) };
    }
    try {
      const header = decodeFragmentHeader(buf, nameHash, `header of ${key}`);
      const layout = fragmentLayout(header);
      if (header.fragmentIndex !== f) throw KeelError.corrupt(`${key}: header says fragment ${header.fragmentIndex}`);
      if (buf.length !== layout.totalBytes) throw KeelError.corrupt(`${key}: ${buf.length} bytes, expected ${layout.totalBytes}`);
      const table = buf.subarray(layout.tableOffset, layout.indexOffset);
      const indexBytes = buf.subarray(layout.indexOffset, layout.bodyOffset);
      if (tablesCrc(table, indexBytes) !== header.tablesCrc) throw KeelError.corrupt(`${key}: tables crc mismatch`);
      const body = buf.subarray(layout.bodyOffset);
      const bad = badBlocks(table, 0, body);
      if (bad.length > 0) {
        // Kept with its body: its other blocks are good, and a repair rebuilds the stripes of the bad ones only.
        this.counters[asd]!.checksumErrors++;
        const detail = KeelError.checksumMismatch(`${key} block ${bad[0]}${bad.length > 1 ? ` (${bad.length} bad blocks)` : ''}`).message;
        return { index: f, status: status('corrupt', detail), header, body, table, indexBytes, badBlocks: bad };
      }
      return { index: f, status: status('ok'), header, body, table, indexBytes, badBlocks: [] };
    } catch (err) {
      this.counters[asd]!.checksumErrors++;
      return { index: f, status: status('corrupt', (err as Error).message) };
    }
  }

  // ---------------------------------------------------------------- plumbing

  asdStats(): Array<AsdCounters & Partial<AsdWriteStats>> {
    return this.counters.map((c, i) => ({ ...c, ...this.asds[i]!.writeStats?.() }));
  }

  stats(): ObjectStoreCounters & { headerCacheEntries: number; headerCacheBytes: number; parityBuffersAcquired: number; parityBuffersAllocated: number } {
    const parity = this.parityBuffers.stats();
    return {
      ...this.storeCounters,
      headerCacheEntries: this.cache.size,
      headerCacheBytes: this.cacheBytes,
      parityBuffersAcquired: parity.acquired,
      parityBuffersAllocated: parity.allocated,
    };
  }

  /** Drops cached headers and tables (tests measure cold reads with it). */
  clearCache(): void {
    this.cache.clear();
    this.cacheBytes = 0;
  }

  private asdIdOf(meta: ObjectMeta, fragment: number): string {
    return this.asds[meta.asdIndices[fragment]!]!.id;
  }

  private codec(k: number, m: number): ErasureCodec {
    const key = `${k}+${m}`;
    let codec = this.codecs.get(key);
    if (!codec) this.codecs.set(key, (codec = new ErasureCodec(k, m)));
    return codec;
  }

  /** One ASD call under the store's concurrency bound and deadline; counts requests and errors. */
  private request<T>(asdIndex: number, kind: 'read' | 'write', fn: (asd: Asd, signal: AbortSignal) => Promise<T>): Promise<T> {
    return this.gate.run(async () => {
      const asd = this.asds[asdIndex]!;
      const counters = this.counters[asdIndex]!;
      counters.requests++;
      const controller = new AbortController();
      const timer = setTimeout(
        () => controller.abort(KeelError.timeout(`request to ASD ${asd.id}`, this.requestTimeoutMs)),
        this.requestTimeoutMs,
      );
      try {
        // abortable(): an ASD that ignores its signal still cannot hold the caller past the deadline.
        return await abortable(fn(asd, controller.signal), controller.signal, `request to ASD ${asd.id}`);
      } catch (err) {
        if (isKeelError(err, 'OBJECT_NOT_FOUND')) counters.notFound++;
        else if (isKeelError(err, 'TIMEOUT')) counters.timeouts++;
        else if (kind === 'read') counters.readErrors++;
        else counters.writeErrors++;
        throw err instanceof KeelError ? err : KeelError.io(`request to ASD ${asd.id} failed: ${(err as Error).message}`, err);
      } finally {
        clearTimeout(timer);
      }
    });
  }

  private async withRetries<T>(what: string, fn: () => Promise<T>, retryable = (err: unknown) => !isKeelError(err, 'BAD_ARGUMENT')): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await fn();
      } catch (err) {
        if (attempt >= this.retriesMax || !retryable(err)) throw err;
        const backoffMs = Math.min(this.retryBackoffMaxMs, this.retryBackoffBaseMs * 2 ** attempt) * (0.5 + Math.random() / 2);
        this.log.warn({ what, attempt: attempt + 1, backoffMs: Math.round(backoffMs), err: (err as Error).message }, 'backend request failed: retrying');
        await new Promise((resolve) => setTimeout(resolve, backoffMs));
      }
    }
  }
}

export function checkObjectName(name: string): void {
  if (
    typeof name !== 'string' ||
    name.length === 0 ||
    name.length > objectNameLengthMax ||
    !objectNamePattern.test(name) ||
    name.split('/').some((part) => part === '' || part === '.' || part === '..') ||
    name.includes('.tmp-')
  )
    throw KeelError.badArgument(`bad object name '${String(name)}': use [A-Za-z0-9._-/] segments, at most ${objectNameLengthMax} characters`);
}

/**
 * Bytes [offset, +length) of the concatenation of `buffers`: a subarray when they lie in one buffer, else a
 * copy. With `pad`, bytes past the end read as zeros (the last stripe's padding).
 */
function sliceConcat(buffers: readonly Buffer[], offset: number, length: number, pad = false): Buffer {
  let base = 0;
  let i = 0;
  while (i < buffers.length && base + buffers[i]!.length <= offset) base += buffers[i++]!.length;
  if (i < buffers.length && offset - base + length <= buffers[i]!.length) return buffers[i]!.subarray(offset - base, offset - base + length);
  const out = pad ? Buffer.alloc(length) : Buffer.allocUnsafe(length);
  let written = 0;
  let pos = offset - base;
  for (; i < buffers.length && written < length; i++, pos = 0) {
    const src = buffers[i]!;
    written += src.copy(out, written, pos, Math.min(src.length, pos + length - written));
  }
  if (!pad && written !== length) throw new RangeError(`sliceConcat: ${written} of ${length} bytes`);
  return out;
}

/**
 * The fragment's block crc table, a slice at a time with a turn of the event loop in between: a 16 MiB
 * fragment is about 4 ms of crc32c here, and computed in one go it stalled every request of the router
 * (the 4k write p99 of the bench) for that long, six times per SCO.
 */
async function blockCrcTableYielding(body: readonly Buffer[], knownCrcOf?: (bodyBlock: number) => number | undefined): Promise<Buffer> {
  let blockCount = 0;
  for (const piece of body) blockCount += piece.length / fragmentBlockBytes;
  const table = Buffer.allocUnsafe(blockCount * blockCrcEntryBytes);
  let block = 0;
  let computedBytes = 0;
  for (const piece of body) {
    for (let offset = 0; offset < piece.length; offset += fragmentBlockBytes, block++) {
      const known = knownCrcOf?.(block);
      if (known !== undefined) {
        table.writeUInt32LE(known, block * blockCrcEntryBytes);
        continue;
      }
      table.writeUInt32LE(crc32c(piece.subarray(offset, offset + fragmentBlockBytes)), block * blockCrcEntryBytes);
      computedBytes += fragmentBlockBytes;
      if (computedBytes >= limits.eventLoopSliceBytesMax) {
        computedBytes = 0;
        await setImmediatePromise();
      }
    }
  }
  return table;
}
