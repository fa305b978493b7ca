/**
 * Which SCOs of a volume the scrubber deleted, from the SCO_DELETED records of its TLogs
 * (docs/tlog-format.md, docs/snapshots.md "Scrubbing"). The record is durable before the SCO's files go,
 * and it travels with the TLogs to the backend, so recovery anywhere (also after a restore from the
 * backend) knows that WRITE records into those SCOs are dead rather than a sign of data loss.
 * The same scan tells in which TLog every SCO was closed (the backend deletes only settled SCOs).
 */
import path from 'node:path';
import type { Disk } from '../shared/disk.ts';
import { parseTlogFileName, tlogFileName } from './tlog-format.ts';
import { scanTlog } from './tlog-reader.ts';
import { listSeqs } from './volume-recovery.ts';

export interface ScoHistory {
  /** SCO -> the TLog holding its SCO_DELETED record. */
  deletedIn: Map<number, number>;
  /** SCO -> the TLog holding its SCO_CLOSED record. */
  closedIn: Map<number, number>;
}

export async function scanScoHistory(disk: Disk, volumeDir: string): Promise<ScoHistory> {
  const tlogDir = path.join(volumeDir, 'tlogs');
  const history: ScoHistory = { deletedIn: new Map(), closedIn: new Map() };
  for (const tlogSeq of await listSeqs(disk, tlogDir, parseTlogFileName)) {
    await scanTlog(disk, path.join(tlogDir, tlogFileName(tlogSeq)), tlogSeq, (record) => {
      if (record.type === 'scoDeleted') history.deletedIn.set(record.sco, tlogSeq);
      else if (record.type === 'scoClosed') history.closedIn.set(record.sco, tlogSeq);
    });
  }
  return history;
}

/** The deleted SCOs, for recovery. */
export async function loadScrubbedScos(disk: Disk, volumeDir: string): Promise<Set<number>> {
  if (!(await disk.exists(path.join(volumeDir, 'tlogs')))) return new Set();
  return new Set((await scanScoHistory(disk, volumeDir)).deletedIn.keys());
}
