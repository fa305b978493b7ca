/**
 * The scrubber's mark phase in one pass over a volume's TLogs (docs/snapshots.md, "Scrubbing"), whatever
 * the number of snapshots: a location is held by some snapshot iff a live snapshot's SNAPSHOT record lies
 * between the record that mapped it and the one that replaced (or trimmed) it. So the replay counts the
 * live SNAPSHOT records it has passed (the epoch), remembers per LBA the epoch at which its current
 * location was mapped, and reports a replaced location as held by a snapshot when the epoch moved since.
 * Locations still mapped at the end are live (the current map), and held by a snapshot when mapped before
 * the last live one. Building every snapshot's map instead would cost one replay per snapshot — a volume
 * snapshotted every 10 ms has thousands. Transient memory: 4 bytes per cluster of the volume.
 */
import path from 'node:path';
import type { Disk } from '../shared/disk.ts';
import { LbaMap, packLocation } from './lba-map.ts';
import { parseTlogFileName, tlogFileName } from './tlog-format.ts';
import { scanTlog } from './tlog-reader.ts';
import { listSeqs } from './volume-recovery.ts';

export type LiveLocationSink = (location: number, inSnapshot: boolean) => void;

export async function markSnapshotLocations(disk: Disk, volumeDir: string, liveSnapshotIds: ReadonlySet<number>, onLive: LiveLocationSink): Promise<void> {
  const tlogDir = path.join(volumeDir, 'tlogs');
  const map = new LbaMap();
  let mappedAtEpoch: Uint32Array = new Uint32Array(1024);
  let epoch = 0;
  const replaced = (lba: number) => {
    const old = map.get(lba);
    if (old !== 0 && mappedAtEpoch[lba] < epoch) onLive(old, true);
  };
  for (const tlogSeq of await listSeqs(disk, tlogDir, parseTlogFileName)) {
    await scanTlog(disk, path.join(tlogDir, tlogFileName(tlogSeq)), tlogSeq, (record) => {
      if (record.type === 'write') {
        if (record.lba >= mappedAtEpoch.length) mappedAtEpoch = grow(mappedAtEpoch, record.lba + 1);
        replaced(record.lba);
        map.set(record.lba, packLocation(record.sco, record.slot));
        mappedAtEpoch[record.lba] = epoch;
      } else if (record.type === 'trim' || record.type === 'fallthrough') {
        if (map.mappedCount > 0) {
          const end = Math.min(record.lba + record.count, mappedAtEpoch.length);
          for (let lba = record.lba; lba < end; lba++) replaced(lba);
        }
        map.deleteRange(record.lba, record.count);
      } else if (record.type === 'snapshot' && liveSnapshotIds.has(record.snapshotId)) {
        epoch += 1;
      }
    });
  }
  map.forEach((lba, location) => onLive(location, mappedAtEpoch[lba] < epoch));
}

function grow(array: Uint32Array, length: number): Uint32Array {
  const grown = new Uint32Array(Math.max(length, array.length * 2));
  grown.set(array);
  return grown;
}
