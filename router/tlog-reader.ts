/**
 * Reads a TLog file record by record (format: docs/tlog-format.md), a bounded chunk at a time, and
 * reports where its valid prefix ends. Interpreting the records is volume-recovery.ts's job.
 */
import type { Disk } from '../shared/disk.ts';
import { limits } from '../shared/limits.ts';
import { decodeTlogRecord, tlogRecordBytes, type TlogRecord } from './tlog-format.ts';

export interface TlogScan {
  /** Records in the valid prefix (the HEADER included). */
  validRecords: number;
  /** Whole 32-byte records in the file (valid or not); a partial record at the end is not counted. */
  totalRecords: number;
  /** True when the file has bytes past the valid prefix (torn or corrupt records, a partial record). */
  hasInvalidTail: boolean;
  /** True when a valid SYNC record lies after the first invalid one: damage before a durable point. */
  syncAfterInvalid: boolean;
  /** Index of the last SYNC in the valid prefix, or -1. */
  lastSyncIndex: number;
  /** True when the valid prefix starts with a HEADER for this TLog. */
  headerValid: boolean;
  /** True when the valid prefix ends with TLOG_CLOSED. */
  closed: boolean;
}

/**
 * Scans a TLog; calls onRecord for every record of the valid prefix, in order (not the HEADER). The
 * callback may stop the scan early by returning false (that record and the rest are not counted). It may
 * return a promise when it must do I/O; it is awaited only then, so the common path stays synchronous.
 */
export async function scanTlog(
  disk: Disk,
  filePath: string,
  tlogSeq: number,
  onRecord?: (record: TlogRecord, index: number) => boolean | void | Promise<boolean | void>,
): Promise<TlogScan> {
  const file = await disk.open(filePath, 'read');
  try {
    const sizeBytes = await file.sizeBytes();
    const totalRecords = Math.floor(sizeBytes / tlogRecordBytes);
    const chunkRecords = Math.max(1, Math.floor(limits.tlogReadChunkBytes / tlogRecordBytes));
    const chunk = Buffer.alloc(chunkRecords * tlogRecordBytes);
    const scan: TlogScan = {
      validRecords: 0,
      totalRecords,
      hasInvalidTail: false,
      syncAfterInvalid: false,
      lastSyncIndex: -1,
      headerValid: false,
      closed: false,
    };
    let inValidPrefix = true;
    for (let first = 0; first < totalRecords; first += chunkRecords) {
      const count = Math.min(chunkRecords, totalRecords - first);
      const view = chunk.subarray(0, count * tlogRecordBytes);
      await file.read(view, first * tlogRecordBytes);
      for (let index = 0; index < count; index++) {
        const recordIndex = first + index;
        const record = decodeTlogRecord(view, index * tlogRecordBytes);
        if (!inValidPrefix) {
          if (record?.type === 'sync') scan.syncAfterInvalid = true;
          continue;
        }
        if (record === undefined || (recordIndex === 0) !== (record.type === 'header') || scan.closed) {
          inValidPrefix = false;
          continue;
        }
        if (record.type === 'header') {
          if (record.tlogSeq !== tlogSeq) {
            inValidPrefix = false;
            continue;
          }
          scan.headerValid = true;
        } else if (onRecord !== undefined) {
          let verdict = onRecord(record, recordIndex);
          if (verdict instanceof Promise) verdict = await verdict;
          if (verdict === false) {
            inValidPrefix = false;
            continue;
          }
        }
        if (record.type === 'sync') scan.lastSyncIndex = recordIndex;
        if (record.type === 'tlogClosed') scan.closed = true;
        scan.validRecords = recordIndex + 1;
      }
    }
    scan.hasInvalidTail = scan.validRecords * tlogRecordBytes !== sizeBytes;
    return scan;
  } finally {
    await file.close();
  }
}
