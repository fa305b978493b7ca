/**
 * Builds a snapshot's map by replaying the volume's TLogs up to its SNAPSHOT record (docs/snapshots.md,
 * "Snapshot maps"). No map is copied when a snapshot is taken; the cost is paid when one is opened, and
 * the result is cached (VolumeSnapshots). The TLogs were validated by recovery when the volume opened,
 * so this replay only interprets records; it stops at the first record it cannot decode (the current
 * TLog's tail being appended).
 */
import path from 'node:path';
import type { Disk } from '../shared/disk.ts';
import { KeelError } from '../shared/errors.ts';
import { ClusterMask } from './cluster-mask.ts';
import { LbaMap, packLocation } from './lba-map.ts';
import { parseTlogFileName, tlogFileName } from './tlog-format.ts';
import { scanTlog } from './tlog-reader.ts';
import { listSeqs } from './volume-recovery.ts';

/** A snapshot's view: its map, and (for clones) the clusters trimmed before it, which do not fall through. */
export interface SnapshotImage {
  map: LbaMap;
  trimmed: ClusterMask | undefined;
}

export async function replaySnapshotImage(disk: Disk, volumeDir: string, snapshotId: number, withTrimMask: boolean): Promise<SnapshotImage> {
  const tlogDir = path.join(volumeDir, 'tlogs');
  const map = new LbaMap();
  const trimmed = withTrimMask ? new ClusterMask() : undefined;
  let found = false;
  for (const tlogSeq of await listSeqs(disk, tlogDir, parseTlogFileName)) {
    await scanTlog(disk, path.join(tlogDir, tlogFileName(tlogSeq)), tlogSeq, (record) => {
      if (record.type === 'write') map.set(record.lba, packLocation(record.sco, record.slot));
      else if (record.type === 'trim') {
        map.deleteRange(record.lba, record.count);
        trimmed?.set(record.lba, record.count);
      } else if (record.type === 'fallthrough') {
        map.deleteRange(record.lba, record.count);
        trimmed?.clear(record.lba, record.count);
      } else if (record.type === 'snapshot' && record.snapshotId === snapshotId) {
        found = true;
        return false;
      }
      return true;
    });
    if (found) return { map, trimmed };
  }
  throw KeelError.corrupt(`${volumeDir}: no SNAPSHOT record for snapshot id ${snapshotId} in the TLogs`, { snapshotId });
}

/** Every TRIM the volume's TLogs hold, as a mask: a clone's live "never fall through" set at open. */
export async function replayTrimMask(disk: Disk, volumeDir: string): Promise<ClusterMask> {
  const tlogDir = path.join(volumeDir, 'tlogs');
  const mask = new ClusterMask();
  for (const tlogSeq of await listSeqs(disk, tlogDir, parseTlogFileName)) {
    await scanTlog(disk, path.join(tlogDir, tlogFileName(tlogSeq)), tlogSeq, (record) => {
      if (record.type === 'trim') mask.set(record.lba, record.count);
      else if (record.type === 'fallthrough') mask.clear(record.lba, record.count);
    });
  }
  return mask;
}

/** SNAPSHOT / SNAPSHOT_DELETED records in the TLogs: what reconciles the catalog with the TLogs. */
export async function scanSnapshotRecords(
  disk: Disk,
  volumeDir: string,
): Promise<{ created: Array<{ snapshotId: number; createdAtMs: number; nameCrc: number }>; deleted: Set<number> }> {
  const tlogDir = path.join(volumeDir, 'tlogs');
  const created: Array<{ snapshotId: number; createdAtMs: number; nameCrc: number }> = [];
  const deleted = new Set<number>();
  for (const tlogSeq of await listSeqs(disk, tlogDir, parseTlogFileName)) {
    await scanTlog(disk, path.join(tlogDir, tlogFileName(tlogSeq)), tlogSeq, (record) => {
      if (record.type === 'snapshot') created.push({ snapshotId: record.snapshotId, createdAtMs: record.createdAtMs, nameCrc: record.nameCrc });
      else if (record.type === 'snapshotDeleted') deleted.add(record.snapshotId);
    });
  }
  return { created, deleted };
}
