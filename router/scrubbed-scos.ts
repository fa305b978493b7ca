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

/** What one TLog says about SCOs, in record order. */
interface TlogScoEvents {
  deleted: number[];
  closed: number[];
}

/**
 * A sealed TLog never changes (it ends with TLOG_CLOSED), so its SCO events can be kept between scans in
 * `sealedTlogs` (by TLog seq; one map per open volume driver, since a volume recreated under the same
 * name starts its TLogs over). Without it every scrub decoded every record of the volume's history twice.
 */
export async function scanScoHistory(disk: Disk, volumeDir: string, sealedTlogs?: Map<number, TlogScoEvents>): Promise<ScoHistory> {
  const tlogDir = path.join(volumeDir, 'tlogs');
  const history: ScoHistory = { deletedIn: new Map(), closedIn: new Map() };
  const tlogSeqs = await listSeqs(disk, tlogDir, parseTlogFileName);
  for (const tlogSeq of tlogSeqs) {
    let events = sealedTlogs?.get(tlogSeq);
    if (events === undefined) {
      const found: TlogScoEvents = { deleted: [], closed: [] };
      const scan = await scanTlog(disk, path.join(tlogDir, tlogFileName(tlogSeq)), tlogSeq, (record) => {
        if (record.type === 'scoDeleted') found.deleted.push(record.sco);
        else if (record.type === 'scoClosed') found.closed.push(record.sco);
      });
      if (scan.closed) sealedTlogs?.set(tlogSeq, found);
      events = found;
    }
    for (const sco of events.deleted) history.deletedIn.set(sco, tlogSeq);
    for (const sco of events.closed) history.closedIn.set(sco, tlogSeq);
  }
  if (sealedTlogs !== undefined) {
    // Forget TLogs that are gone from the directory, so the map stays as small as the history.
    const present = new Set(tlogSeqs);
    for (const tlogSeq of sealedTlogs.keys()) if (!present.has(tlogSeq)) sealedTlogs.delete(tlogSeq);
  }
  return history;
}

export type SealedTlogEvents = Map<number, TlogScoEvents>;

/** The deleted SCOs, for recovery. */
export async function loadScrubbedScos(disk: Disk, volumeDir: string): Promise<Set<number>> {
  if (!(await disk.exists(path.join(volumeDir, 'tlogs')))) return new Set();
  return new Set((await scanScoHistory(disk, volumeDir)).deletedIn.keys());
}
