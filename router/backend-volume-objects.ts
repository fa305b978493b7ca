/**
 * Whole-volume operations on a volume's objects in the backend (docs/backend-volumes.md): restoring its
 * TLogs into an empty volume directory (restart from the backend) and deleting everything of a deleted
 * volume. Both find the objects by listing the ASDs (backend/object-listing.ts).
 */
import path from 'node:path';
import { listObjectNames } from '../backend/object-listing.ts';
import { mapBounded } from '../backend/concurrency-gate.ts';
import type { Disk } from '../shared/disk.ts';
import { KeelError } from '../shared/errors.ts';
import { limits } from '../shared/limits.ts';
import type { Logger } from '../shared/logger.ts';
import { parseVolumeObjectName, volumeObjectName, volumeObjectPrefix } from './backend-object-names.ts';
import { tlogFileName } from './tlog-format.ts';
import type { VolumeBackend } from './volume-backend.ts';

export interface BackendRestore {
  /** TLogs downloaded (seq 1..n). */
  tlogCount: number;
  /**
   * New SCOs must start above this: the highest SCO number in the backend plus a fencing gap larger than
   * what an old owner may still hold locally and upload late (docs/high-availability.md). 0 when none.
   */
  scoSeqMax: number;
}

/** One TLog object found in the listing. */
interface TlogObject {
  seq: number;
  epoch: number;
  name: string;
}

/**
 * Picks the volume's TLog chain among the objects listed: a TLog of epoch e is valid unless a fencing
 * marker of a newer epoch E > e says its owner restored only TLogs up to P < seq (the TLog is a late
 * upload of a fenced owner). Per seq the valid TLog of the highest epoch wins. Pure.
 */
export function chooseTlogChain(tlogs: readonly TlogObject[], markers: ReadonlyMap<number, number>): TlogObject[] {
  const valid = tlogs.filter((t) => ![...markers].some(([epoch, restored]) => epoch > t.epoch && t.seq > restored));
  const bySeq = new Map<number, TlogObject>();
  for (const tlog of valid) {
    const chosen = bySeq.get(tlog.seq);
    if (chosen === undefined || tlog.epoch > chosen.epoch) bySeq.set(tlog.seq, tlog);
  }
  return [...bySeq.values()].sort((a, b) => a.seq - b.seq);
}

/**
 * Downloads every TLog of the volume in the backend into tlogDir (atomically, in sequence order), so
 * that local recovery replays them. TLogs are uploaded strictly in order, so they must be 1..n without
 * a gap; a gap is CORRUPT (an object lost beyond what the erasure code can rebuild). With an owner epoch,
 * a fencing marker for it is put before anything else is written (docs/high-availability.md).
 */
export async function restoreVolumeTlogs(backend: VolumeBackend, disk: Disk, tlogDir: string, logger: Logger): Promise<BackendRestore> {
  const startedMs = Date.now();
  const { names, unreachable } = await listObjectNames(backend.asds, volumeObjectPrefix(backend.volumeId));
  const tlogs: TlogObject[] = [];
  const markers = new Map<number, number>();
  let scoSeqMax = 0;
  for (const name of names) {
    const parsed = parseVolumeObjectName(backend.volumeId, name);
    if (parsed?.kind === 'tlog') tlogs.push({ seq: parsed.seq, epoch: parsed.epoch, name });
    else if (parsed?.kind === 'sco') scoSeqMax = Math.max(scoSeqMax, parsed.seq);
    else if (parsed?.kind === 'epoch') markers.set(parsed.epoch, await readMarker(backend, name));
  }
  const chain = chooseTlogChain(tlogs, markers);
  chain.forEach((tlog, index) => {
    if (tlog.seq !== index + 1) throw KeelError.corrupt(`volume ${backend.volumeId}: TLog ${index + 1} is missing from the backend (found ${tlog.seq})`);
  });
  let bytes = 0;
  await mapBounded(chain, limits.tlogDownloadsInFlightMax, async (tlog) => {
    const { sizeBytes } = await backend.store.statObject(tlog.name);
    const data = await backend.store.readRange(tlog.name, 0, sizeBytes);
    bytes += data.length;
    await disk.writeFileAtomic(path.join(tlogDir, tlogFileName(tlog.seq)), data);
  });
  if (backend.ownerEpoch !== undefined) {
    const marker = Buffer.from(JSON.stringify({ tlogsRestored: chain.length }));
    await backend.store.putObject(volumeObjectName(backend.volumeId, 'epoch', backend.ownerEpoch), marker);
  }
  const fencingGap = Math.ceil(backend.writeBuffer.bytesMax / limits.scoSizeBytesMin) + 2;
  logger.info(
    { volumeId: backend.volumeId, tlogs: chain.length, ignoredTlogs: tlogs.length - chain.length, bytes, scoSeqMax, ownerEpoch: backend.ownerEpoch, unreachableAsds: unreachable.map((u) => u.asdId), restoreMs: Date.now() - startedMs },
    'volume TLogs restored from the backend',
  );
  return { tlogCount: chain.length, scoSeqMax: scoSeqMax === 0 && chain.length === 0 ? 0 : scoSeqMax + fencingGap };
}

async function readMarker(backend: VolumeBackend, name: string): Promise<number> {
  const { sizeBytes } = await backend.store.statObject(name);
  const text = (await backend.store.readRange(name, 0, sizeBytes)).toString('utf8');
  try {
    const restored = (JSON.parse(text) as { tlogsRestored?: unknown }).tlogsRestored;
    if (typeof restored === 'number' && Number.isSafeInteger(restored) && restored >= 0) return restored;
  } catch {
    // fall through
  }
  throw KeelError.corrupt(`fencing marker ${name}`, { text: text.slice(0, 100) });
}

/** Deletes every object of a volume (bounded concurrency). Returns how many were deleted. */
export async function deleteVolumeObjects(backend: Pick<VolumeBackend, 'asds' | 'store' | 'volumeId'>, logger: Logger): Promise<number> {
  const { names } = await listObjectNames(backend.asds, volumeObjectPrefix(backend.volumeId));
  await mapBounded(names, limits.objectDeletesInFlightMax, (name) => backend.store.deleteObject(name));
  logger.info({ volumeId: backend.volumeId, objects: names.length }, 'volume objects deleted from the backend');
  return names.length;
}
