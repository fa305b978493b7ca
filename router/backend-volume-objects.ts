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
  /** Highest SCO number of the volume in the backend (new SCOs must start above it), 0 when none. */
  scoSeqMax: number;
}

/**
 * Downloads every TLog of the volume in the backend into tlogDir (atomically, in sequence order), so
 * that local recovery replays them. TLogs are uploaded strictly in order, so they must be 1..n without
 * a gap; a gap is CORRUPT (an object lost beyond what the erasure code can rebuild).
 */
export async function restoreVolumeTlogs(backend: VolumeBackend, disk: Disk, tlogDir: string, logger: Logger): Promise<BackendRestore> {
  const startedMs = Date.now();
  const { names, unreachable } = await listObjectNames(backend.asds, volumeObjectPrefix(backend.volumeId));
  const tlogSeqs: number[] = [];
  let scoSeqMax = 0;
  for (const name of names) {
    const parsed = parseVolumeObjectName(backend.volumeId, name);
    if (parsed?.kind === 'tlog') tlogSeqs.push(parsed.seq);
    else if (parsed?.kind === 'sco') scoSeqMax = Math.max(scoSeqMax, parsed.seq);
  }
  tlogSeqs.sort((a, b) => a - b);
  tlogSeqs.forEach((seq, index) => {
    if (seq !== index + 1) throw KeelError.corrupt(`volume ${backend.volumeId}: TLog ${index + 1} is missing from the backend (found ${seq})`);
  });
  let bytes = 0;
  await mapBounded(tlogSeqs, limits.tlogDownloadsInFlightMax, async (seq) => {
    const name = volumeObjectName(backend.volumeId, 'tlog', seq);
    const { sizeBytes } = await backend.store.statObject(name);
    const data = await backend.store.readRange(name, 0, sizeBytes);
    bytes += data.length;
    await disk.writeFileAtomic(path.join(tlogDir, tlogFileName(seq)), data);
  });
  logger.info(
    { volumeId: backend.volumeId, tlogs: tlogSeqs.length, bytes, scoSeqMax, unreachableAsds: unreachable.map((u) => u.asdId), restoreMs: Date.now() - startedMs },
    'volume TLogs restored from the backend',
  );
  return { tlogCount: tlogSeqs.length, scoSeqMax };
}

/** Deletes every object of a volume (bounded concurrency). Returns how many were deleted. */
export async function deleteVolumeObjects(backend: Pick<VolumeBackend, 'asds' | 'store' | 'volumeId'>, logger: Logger): Promise<number> {
  const { names } = await listObjectNames(backend.asds, volumeObjectPrefix(backend.volumeId));
  await mapBounded(names, limits.objectDeletesInFlightMax, (name) => backend.store.deleteObject(name));
  logger.info({ volumeId: backend.volumeId, objects: names.length }, 'volume objects deleted from the backend');
  return names.length;
}
