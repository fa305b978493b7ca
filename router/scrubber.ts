/**
 * Scrubbing one volume (docs/snapshots.md, "Scrubbing"). Live clusters = the current map ∪ every
 * snapshot's map (clones of this volume depend on its snapshots, so they are covered). A sealed SCO with
 * no live cluster is deleted; a SCO whose garbage fraction reaches limits.scrubGarbageFractionMin and
 * that no snapshot references has its live clusters rewritten through the normal append path
 * (VolumeDriver.rewriteCluster: a concurrent user write wins), and is deleted once nothing maps into it.
 * The final check and the deletions run under the volume's snapshot lock, so no snapshot taken meanwhile
 * can reference a deleted SCO. A SCO_DELETED TLog record is durable before a SCO's files go.
 *
 * With a backend, a SCO is deleted only once it is settled (its SCO_CLOSED record is in a TLog already
 * uploaded: the uploader is done with it), and its backend object only once the TLog holding its
 * SCO_DELETED record is uploaded too, so a router restoring the volume from the backend always finds
 * the record that explains the missing object. Objects not yet deletable are deleted by a later scrub.
 */
import path from 'node:path';
import type { Disk } from '../shared/disk.ts';
import { clusterSizeBytes, limits } from '../shared/limits.ts';
import type { Logger } from '../shared/logger.ts';
import { locationSco, locationSlot, type LbaMap } from './lba-map.ts';
import { parseScoFileName, scoChecksumBytes, scoFileName, scoTrailerBytes } from './sco-format.ts';
import { listObjectNames } from '../backend/object-listing.ts';
import { isKeelError } from '../shared/errors.ts';
import { parseVolumeObjectName, volumeObjectKindPrefix, volumeObjectName } from './backend-object-names.ts';
import { scanScoHistory, type SealedTlogEvents } from './scrubbed-scos.ts';
import { markSnapshotLocations } from './scrub-marker.ts';
import { encodeTlogRecord, tlogRecordBytes } from './tlog-format.ts';
import type { VolumeDriver } from './volume-driver.ts';
import { listSeqs } from './volume-recovery.ts';
import type { VolumeSnapshots } from './volume-snapshots.ts';

export interface ScrubReport {
  volume: string;
  scosBefore: number;
  bytesBefore: number;
  scosAfter: number;
  bytesAfter: number;
  scosDeleted: number;
  /** The volume's SCO objects in the backend (logical bytes), when it has one. */
  backendBytesBefore?: number;
  backendBytesAfter?: number;
  backendObjectsDeleted?: number;
  scosRewritten: number;
  clustersRewritten: number;
  /** With `defrag`: LBA extents rewritten in order, their clusters copied, and fragmented extents left for another run. */
  extentsDefragmented?: number;
  clustersDefragmented?: number;
  extentsFragmentedLeft?: number;
  /** Dead SCOs (files or backend objects) left for a later scrub: their TLog records are not uploaded yet. */
  scosPending: number;
  /** SCOs the scrub left alone because their live clusters could not be read (lost fragments: keel backend repair). */
  scosUnreadable?: number[];
  durationMs: number;
}

/** Where a scrub is: `done` of `total` (mark: 0 or 1 pass; rewrite and defrag: clusters; delete: SCOs). */
export interface ScrubProgressEvent {
  phase: 'mark' | 'rewrite' | 'defrag' | 'delete';
  done: number;
  total: number;
}

export type ScrubProgress = (event: ScrubProgressEvent) => void;

/** Per sealed SCO: which slots are live, and which a snapshot holds (those are never moved). */
interface ScoLiveness {
  clusterCount: number;
  live: Uint8Array;
  liveCount: number;
  inSnapshot: boolean;
}

export async function scrubVolume(options: {
  disk: Disk;
  dir: string;
  driver: VolumeDriver;
  snapshots: VolumeSnapshots;
  logger: Logger;
  garbageFractionMin?: number;
  clustersPerSecondMax?: number;
  /** The pace while users read or write the volume (default limits.scrubClustersPerSecondBusyMax). */
  clustersPerSecondBusyMax?: number;
  onProgress?: ScrubProgress;
  /** Also rewrite fragmented LBA extents in LBA order (see defragment). */
  defrag?: boolean;
}): Promise<ScrubReport> {
  const { disk, dir, driver, snapshots, logger } = options;
  const startedMs = Date.now();
  const garbageFractionMin = options.garbageFractionMin ?? limits.scrubGarbageFractionMin;
  const scoDir = path.join(dir, 'scos');
  await driver.flush();
  const before = await scoSizes(disk, scoDir);
  const backendBefore = await backendScoSizes(driver);
  const history = await scanScoHistory(disk, dir, sealedTlogEventsOf(driver));
  const known = new Map(before);
  for (const [sco, sizeBytes] of backendBefore ?? []) if (!known.has(sco)) known.set(sco, sizeBytes);
  for (const sco of history.deletedIn.keys()) known.delete(sco);
  const openScoSeq = driver.stats().openScoSeq;

  // Mark.
  let liveness = await markLive(known, openScoSeq, driver, snapshots, disk, dir);
  options.onProgress?.({ phase: 'mark', done: 1, total: 1 });

  // Rewrite the live clusters of mostly-garbage SCOs that no snapshot holds.
  const candidates = [...liveness].filter(([, l]) => !l.inSnapshot && l.liveCount > 0 && 1 - l.liveCount / l.clusterCount >= garbageFractionMin).map(([sco]) => sco);
  const movesBySco = new Map<number, Move[]>(candidates.map((sco) => [sco, []]));
  let moveCount = 0;
  driver.mapView().forEach((lba, location) => {
    const moves = movesBySco.get(locationSco(location));
    if (moves === undefined) return;
    moves.push({ lba, location });
    moveCount += 1;
  });
  const pace = new ScrubPace(driver, options.clustersPerSecondMax, options.clustersPerSecondBusyMax ?? limits.scrubClustersPerSecondBusyMax);
  const groups = moveGroups(movesBySco.values(), limits.scrubRewriteClustersMax);
  const memory: ScrubMemory = { unreadableScos: new Map() };
  const clustersRewritten = await rewriteGroups(driver, groups, moveCount, pace, memory, 'rewrite', options.onProgress);
  const defragged = options.defrag ? await defragment(driver, liveness, pace, memory, options.onProgress) : undefined;

  // Delete what nothing references, checked again under the snapshot lock.
  const uploadedThrough = driver.stats().backend?.tlogsUploadedThrough;
  const settled = (sco: number) => uploadedThrough === undefined || (history.closedIn.get(sco) ?? Number.MAX_SAFE_INTEGER) <= uploadedThrough;
  let scosPending = 0;
  const deleted = await snapshots.exclusive(async () => {
    await driver.flush();
    liveness = await markLive(known, driver.stats().openScoSeq, driver, snapshots, disk, dir);
    const unreferenced = [...liveness].filter(([, l]) => l.liveCount === 0).map(([sco]) => sco);
    const dead = unreferenced.filter(settled);
    scosPending = unreferenced.length - dead.length;
    for (let at = 0; at < dead.length; at += 64) {
      const chunk = dead.slice(at, at + 64);
      const records = Buffer.alloc(chunk.length * tlogRecordBytes);
      chunk.forEach((sco, index) => encodeTlogRecord(records, index * tlogRecordBytes, { type: 'scoDeleted', sco }));
      await driver.appendRecords(records); // durable before any file goes
    }
    for (const [index, sco] of dead.entries()) {
      await driver.deleteScoFile(sco);
      options.onProgress?.({ phase: 'delete', done: index + 1, total: dead.length });
    }
    return dead;
  });
  if (deleted.length > 0 && driver.backend !== undefined) await waitForTlogUpload(driver, await driver.closeCurrentTlog());
  const backendObjects = await deleteSettledObjects(driver, disk, dir);
  scosPending += backendObjects.pending;
  const after = await scoSizes(disk, scoDir);
  const backendAfter = await backendScoSizes(driver);
  const report: ScrubReport = {
    volume: driver.volumeName,
    scosBefore: before.size,
    bytesBefore: sum(before.values()),
    scosAfter: after.size,
    bytesAfter: sum(after.values()),
    scosDeleted: deleted.length,
    ...(backendBefore && backendAfter
      ? { backendBytesBefore: sum(backendBefore.values()), backendBytesAfter: sum(backendAfter.values()), backendObjectsDeleted: backendObjects.deleted }
      : {}),
    scosRewritten: candidates.filter((sco) => deleted.includes(sco)).length,
    clustersRewritten,
    ...defragged,
    scosPending,
    ...(memory.unreadableScos.size > 0 ? { scosUnreadable: [...memory.unreadableScos.keys()] } : {}),
    durationMs: Date.now() - startedMs,
  };
  for (const [sco, why] of memory.unreadableScos) logger.error({ volume: driver.volumeName, sco, err: why }, 'scrub skipped a SCO whose live clusters cannot be read (keel backend verify/repair)');
  logger.info(report, 'volume scrubbed');
  return report;
}

interface Move {
  lba: number;
  location: number;
}

/**
 * Rewrites, in LBA order, every mapped cluster of the LBA extents (limits.defragExtentClusters, 1 MiB)
 * that lie in at least limits.defragRunsPerExtentMin runs (a run: neighbouring LBAs at neighbouring slots
 * of one SCO). After random writes a volume's sequential reads fetch one run at a time, and from a backend
 * each run is a request of its own; rewritten, an extent is one run in a new SCO. Extents with a cluster in
 * a SCO a snapshot holds are left alone (copying them would store their data twice), and so are extents
 * past limits.defragClustersPerScrubMax clusters: they are counted, for another run. The old copies are
 * garbage for the delete phase and later scrubs.
 */
async function defragment(
  driver: VolumeDriver,
  liveness: ReadonlyMap<number, ScoLiveness>,
  pace: ScrubPace,
  memory: ScrubMemory,
  onProgress: ScrubProgress | undefined,
): Promise<{ extentsDefragmented: number; clustersDefragmented: number; extentsFragmentedLeft: number }> {
  const { extents, left } = fragmentedExtents(driver.mapView(), (sco) => liveness.get(sco)?.inSnapshot === true);
  const total = extents.reduce((count, extent) => count + extent.length, 0);
  const written = await rewriteGroups(driver, moveGroups(extents, limits.scrubRewriteClustersMax), total, pace, memory, 'defrag', onProgress);
  return { extentsDefragmented: extents.length, clustersDefragmented: written, extentsFragmentedLeft: left };
}

/** Reads (readGroup) and rewrites (writeGroup) each of `groups` (`total` clusters in all) through the scrub's buffers, reporting `phase`. */
async function rewriteGroups(
  driver: VolumeDriver,
  groups: Iterable<Move[]>,
  total: number,
  pace: ScrubPace,
  memory: ScrubMemory,
  phase: 'rewrite' | 'defrag',
  onProgress: ScrubProgress | undefined,
): Promise<number> {
  if (total === 0) {
    onProgress?.({ phase, done: 0, total: 0 });
    return 0;
  }
  const buffers = (memory.buffers = scrubBuffers(total, memory.buffers));
  let done = 0;
  let written = 0;
  const onCopied = (count: number) => {
    done += count;
    onProgress?.({ phase, done, total });
  };
  for (const group of groups) {
    const read = await readGroup(driver, group, buffers, memory);
    if (read.data !== undefined) written += await writeGroup(driver, read.moves, read.data, pace, onCopied);
    if (read.skipped > 0) onCopied(read.skipped);
  }
  return written;
}

/**
 * A group's clusters, read SCO by SCO (readMoves). When that fails for want of readable copies (more
 * fragments lost than the preset's m, a local copy gone bad), the group is read again one SCO at a time
 * and the unreadable SCOs are left out, remembered in `memory.unreadableScos`: their clusters stay where
 * they are, and the rest of the volume is still reclaimed.
 */
async function readGroup(driver: VolumeDriver, group: Move[], buffers: ScrubBuffers, memory: ScrubMemory): Promise<{ moves: Move[]; data?: Buffer; skipped: number }> {
  const readable = group.filter((move) => !memory.unreadableScos.has(locationSco(move.location)));
  let failure: unknown;
  try {
    return { moves: readable, data: await readInto(driver, readable, buffers), skipped: group.length - readable.length };
  } catch (err) {
    if (!isUnreadable(err)) throw err;
    failure = err;
  }
  const knownBefore = memory.unreadableScos.size;
  for (const sco of new Set(readable.map((move) => locationSco(move.location)))) {
    try {
      await readInto(driver, readable.filter((move) => locationSco(move.location) === sco), buffers);
    } catch (err) {
      if (!isUnreadable(err)) throw err;
      memory.unreadableScos.set(sco, (err as Error).message);
    }
  }
  if (memory.unreadableScos.size === knownBefore) throw failure; // every SCO reads alone: not a lost SCO
  return readGroup(driver, group, buffers, memory);
}

async function readInto(driver: VolumeDriver, moves: readonly Move[], buffers: ScrubBuffers): Promise<Buffer | undefined> {
  if (moves.length === 0) return undefined;
  const data = buffers.group.subarray(0, moves.length * clusterSizeBytes);
  await readMoves(driver, moves, data, buffers.spans);
  return data;
}

function isUnreadable(err: unknown): boolean {
  return isKeelError(err, 'IO') || isKeelError(err, 'CHECKSUM_MISMATCH') || isKeelError(err, 'OBJECT_NOT_FOUND') || isKeelError(err, 'CORRUPT');
}

/** The mapped clusters of each fragmented extent, in LBA order, up to defragClustersPerScrubMax in all. */
export function fragmentedExtents(map: Pick<LbaMap, 'forEach'>, inSnapshot: (sco: number) => boolean): { extents: Move[][]; left: number } {
  const extents: Move[][] = [];
  let taken = 0;
  let left = 0;
  let current: Move[] = [];
  let runs = 0;
  let held = false;
  const finish = () => {
    if (current.length === 0 || runs < limits.defragRunsPerExtentMin || held) return;
    if (taken + current.length > limits.defragClustersPerScrubMax) left += 1;
    else {
      extents.push(current);
      taken += current.length;
    }
  };
  map.forEach((lba, location) => {
    let last = current.at(-1);
    if (last !== undefined && Math.floor(lba / limits.defragExtentClusters) !== Math.floor(last.lba / limits.defragExtentClusters)) {
      finish();
      current = [];
      runs = 0;
      held = false;
      last = undefined;
    }
    if (last === undefined || lba !== last.lba + 1 || location !== last.location + 1 || locationSco(location) !== locationSco(last.location)) runs += 1;
    held ||= inSnapshot(locationSco(location));
    current.push({ lba, location });
  });
  finish();
  return { extents, left };
}

/** The scrubber's memory: a group's clusters, and one buffer per read in flight. */
interface ScrubBuffers {
  group: Buffer;
  spans: Buffer[];
}

/** Shared by a scrub's phases (rewrite, then defrag), so that fresh memory is taken once per scrub. */
interface ScrubMemory {
  buffers?: ScrubBuffers;
  /** SCOs whose live clusters could not be read, with why: skipped by both phases. */
  unreadableScos: Map<number, string>;
}

/** Buffers for `moveCount` clusters: `reuse` when its group buffer is large enough, else a larger one. */
function scrubBuffers(moveCount: number, reuse: ScrubBuffers | undefined): ScrubBuffers {
  const groupBytes = Math.min(moveCount, limits.scrubRewriteClustersMax) * clusterSizeBytes;
  if (reuse !== undefined && reuse.group.length >= groupBytes) return reuse;
  return {
    group: Buffer.allocUnsafe(groupBytes),
    spans: reuse?.spans ?? Array.from({ length: limits.scrubReadsInFlightMax }, () => Buffer.allocUnsafe(limits.scrubReadClustersMax * clusterSizeBytes)),
  };
}

/**
 * Lists of moves (a candidate SCO's, or a fragmented extent's), one after another, in groups of at most
 * `clustersMax` (a longer list is split). A group is what the scrubber holds in RAM at once (readGroup).
 */
export function* moveGroups(lists: Iterable<readonly Move[]>, clustersMax: number): Generator<Move[]> {
  let group: Move[] = [];
  for (const moves of lists) {
    for (let at = 0; at < moves.length; ) {
      const taken = Math.min(moves.length - at, clustersMax - group.length);
      group.push(...moves.slice(at, at + taken));
      at += taken;
      if (group.length === clustersMax) {
        yield group;
        group = [];
      }
    }
  }
  if (group.length > 0) yield group;
}

/**
 * Copies a group's clusters to the open SCO and returns how many were written (a user write to the LBA
 * meanwhile drops the copy). The group is read SCO by SCO with few requests (readMoves), then rewritten
 * in LBA order, so that the copies of neighbouring LBAs from different SCOs land side by side.
 * scrubPaceClusters copies share one append; after each such batch `onCopied` hears of it and the pace
 * waits.
 */
async function writeGroup(driver: VolumeDriver, group: readonly Move[], data: Buffer, pace: ScrubPace, onCopied: (count: number) => void): Promise<number> {
  const order = group.map((_move, index) => index).sort((a, b) => group[a].lba - group[b].lba);
  let written = 0;
  for (let at = 0; at < order.length; at += scrubPaceClusters) {
    const batch = order.slice(at, at + scrubPaceClusters);
    const results = await Promise.all(batch.map((index) => driver.rewriteCluster(group[index].lba, group[index].location, clusterOf(data, index))));
    written += results.filter(Boolean).length;
    onCopied(batch.length);
    await pace.wait();
  }
  return written;
}

/** A run of slots of one SCO read at once, and the moves (indexes) whose clusters it holds. */
interface ScoSpan {
  sco: number;
  firstSlot: number;
  endSlot: number;
  members: number[];
}

/**
 * Reads the cluster of moves[i] into cluster i of `into`, SCO by SCO in spans of neighbouring slots
 * (bridging up to scrubReadGapClustersMax dead ones), up to scrubReadsInFlightMax spans at once. A
 * mostly-garbage SCO of a random-write workload has its live clusters scattered, and reading them one by
 * one cost a backend request each.
 */
async function readMoves(driver: VolumeDriver, moves: readonly Move[], into: Buffer, spanBuffers: readonly Buffer[]): Promise<void> {
  const spans = spansOf(moves);
  let next = 0;
  const reader = async (buffer: Buffer): Promise<void> => {
    while (next < spans.length) await readSpan(driver, spans[next++], moves, buffer, into);
  };
  await Promise.all(spanBuffers.slice(0, spans.length).map(reader));
}

/** One span's live clusters into `into`, read through `buffer`. */
async function readSpan(driver: VolumeDriver, span: ScoSpan, moves: readonly Move[], buffer: Buffer, into: Buffer): Promise<void> {
  const view = buffer.subarray(0, (span.endSlot - span.firstSlot) * clusterSizeBytes);
  try {
    await driver.readScoClusters(span.sco, span.firstSlot, view);
  } catch (err) {
    // A bad dead cluster the span bridged must not stop the scrub, which never needs it: read the live
    // ones alone (a bad live one still fails the scrub, as it always did).
    if (!isKeelError(err, 'CHECKSUM_MISMATCH') || span.members.length === span.endSlot - span.firstSlot) throw err;
    for (const member of span.members) await driver.readScoClusters(span.sco, locationSlot(moves[member].location), clusterOf(into, member));
    return;
  }
  for (const member of span.members) {
    const offset = (locationSlot(moves[member].location) - span.firstSlot) * clusterSizeBytes;
    view.copy(into, member * clusterSizeBytes, offset, offset + clusterSizeBytes);
  }
}

/** The moves as spans of at most scrubReadClustersMax slots of one SCO each (see readMoves). */
export function spansOf(moves: readonly Move[]): ScoSpan[] {
  const bySco = new Map<number, number[]>();
  moves.forEach((move, index) => {
    const sco = locationSco(move.location);
    const members = bySco.get(sco);
    if (members === undefined) bySco.set(sco, [index]);
    else members.push(index);
  });
  const spans: ScoSpan[] = [];
  for (const [sco, members] of bySco) {
    members.sort((a, b) => locationSlot(moves[a].location) - locationSlot(moves[b].location));
    let span: ScoSpan | undefined;
    for (const member of members) {
      const slot = locationSlot(moves[member].location);
      const joins = span !== undefined && slot - span.endSlot <= limits.scrubReadGapClustersMax && slot + 1 - span.firstSlot <= limits.scrubReadClustersMax;
      if (joins) {
        span!.endSlot = Math.max(span!.endSlot, slot + 1);
        span!.members.push(member);
      } else {
        span = { sco, firstSlot: slot, endSlot: slot + 1, members: [member] };
        spans.push(span);
      }
    }
  }
  return spans;
}

function clusterOf(data: Buffer, index: number): Buffer {
  return data.subarray(index * clusterSizeBytes, (index + 1) * clusterSizeBytes);
}

/** SCO seq -> object bytes of the volume's SCO objects in the backend; undefined without a backend. */
async function backendScoSizes(driver: VolumeDriver): Promise<Map<number, number> | undefined> {
  const backend = driver.backend;
  if (backend === undefined) return undefined;
  const { names } = await listObjectNames(backend.asds, volumeObjectKindPrefix(backend.volumeId, 'sco'));
  const sizes = new Map<number, number>();
  for (const name of names) {
    const parsed = parseVolumeObjectName(backend.volumeId, name);
    if (parsed?.kind !== 'sco') continue;
    const stat = await backend.store.statObject(name).catch((err: unknown) => {
      if (isKeelError(err, 'OBJECT_NOT_FOUND')) return undefined;
      throw err;
    });
    if (stat) sizes.set(parsed.seq, stat.sizeBytes);
  }
  return sizes;
}

/** Waits (bounded) until TLog `tlogSeq` is in the backend; objects not deletable yet go at a later scrub. */
async function waitForTlogUpload(driver: VolumeDriver, tlogSeq: number): Promise<void> {
  const deadlineMs = Date.now() + limits.scrubUploadWaitMs;
  while ((driver.stats().backend?.tlogsUploadedThrough ?? tlogSeq) < tlogSeq && Date.now() < deadlineMs) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Deletes the backend objects of SCOs whose SCO_DELETED record is in an uploaded TLog. */
async function deleteSettledObjects(driver: VolumeDriver, disk: Disk, dir: string): Promise<{ deleted: number; pending: number }> {
  const backend = driver.backend;
  const uploadedThrough = driver.stats().backend?.tlogsUploadedThrough;
  if (backend === undefined || uploadedThrough === undefined) return { deleted: 0, pending: 0 };
  const present = await backendScoSizes(driver);
  let deleted = 0;
  let pending = 0;
  for (const [sco, tlogSeq] of (await scanScoHistory(disk, dir, sealedTlogEventsOf(driver))).deletedIn) {
    if (!present?.has(sco)) continue;
    if (tlogSeq > uploadedThrough) {
      pending += 1;
      continue;
    }
    await backend.store.deleteObject(volumeObjectName(backend.volumeId, 'sco', sco));
    deleted += 1;
  }
  return { deleted, pending };
}

/** Per open driver: what its sealed TLogs say about SCOs (scanScoHistory). */
const sealedTlogEvents = new WeakMap<VolumeDriver, SealedTlogEvents>();

function sealedTlogEventsOf(driver: VolumeDriver): SealedTlogEvents {
  let events = sealedTlogEvents.get(driver);
  if (events === undefined) sealedTlogEvents.set(driver, (events = new Map()));
  return events;
}

const scrubPaceClusters = 64;

/** Sleeps after each scrubPaceClusters copied: for the busy pace if users touched the volume meanwhile. */
class ScrubPace {
  private lastActivity: number;

  constructor(
    private readonly driver: Pick<VolumeDriver, 'userActivity'>,
    private readonly clustersPerSecondMax = Number.POSITIVE_INFINITY,
    private readonly clustersPerSecondBusyMax: number,
  ) {
    this.lastActivity = driver.userActivity;
  }

  async wait(): Promise<void> {
    const activity = this.driver.userActivity;
    const busy = activity !== this.lastActivity;
    this.lastActivity = activity;
    const clustersPerSecond = busy ? Math.min(this.clustersPerSecondBusyMax, this.clustersPerSecondMax) : this.clustersPerSecondMax;
    if (Number.isFinite(clustersPerSecond)) await new Promise((resolve) => setTimeout(resolve, (scrubPaceClusters * 1000) / clustersPerSecond));
  }
}

/** SCO seq -> file bytes, for the SCO files in the directory. */
async function scoSizes(disk: Disk, scoDir: string): Promise<Map<number, number>> {
  const sizes = new Map<number, number>();
  for (const seq of await listSeqs(disk, scoDir, parseScoFileName)) {
    const file = await disk.open(path.join(scoDir, scoFileName(seq)), 'read').catch(() => undefined);
    if (file === undefined) continue; // deleted meanwhile
    try {
      sizes.set(seq, await file.sizeBytes());
    } finally {
      await file.close();
    }
  }
  return sizes;
}

/** Liveness of every sealed SCO in `sizes` (the open SCO is never a candidate). */
async function markLive(
  sizes: Map<number, number>,
  openScoSeq: number,
  driver: VolumeDriver,
  snapshots: VolumeSnapshots,
  disk: Disk,
  dir: string,
): Promise<Map<number, ScoLiveness>> {
  const liveness = new Map<number, ScoLiveness>();
  for (const [sco, sizeBytes] of sizes) {
    if (sco >= openScoSeq) continue;
    const clusterCount = Math.max(1, Math.floor((sizeBytes - scoTrailerBytes) / (clusterSizeBytes + scoChecksumBytes)));
    liveness.set(sco, { clusterCount, live: new Uint8Array(Math.ceil(clusterCount / 8) + 1), liveCount: 0, inSnapshot: false });
  }
  const mark = (location: number, inSnapshot: boolean) => {
    const entry = liveness.get(locationSco(location));
    if (entry === undefined) return;
    const slot = locationSlot(location);
    if (inSnapshot) entry.inSnapshot = true;
    const bit = 1 << (slot & 7);
    if ((entry.live[slot >>> 3] & bit) !== 0) return;
    entry.live[slot >>> 3] |= bit;
    entry.liveCount += 1;
  };
  driver.mapView().forEach((_lba, location) => mark(location, false));
  await markSnapshotLocations(disk, dir, new Set(snapshots.list().map((info) => info.id)), mark);
  return liveness;
}

function sum(values: Iterable<number>): number {
  let total = 0;
  for (const value of values) total += value;
  return total;
}
