/**
 * The DTL record: one acknowledged write (or trim) of a volume that may not be on the backend yet, as the
 * owner sends it to its DTL peer (dtl-append payloads, dtl-fetch replies) and as the peer stores it in its
 * segment files — the same bytes in all three places. Layout and rules: docs/dtl.md. Pure codec, no I/O.
 *
 *   offset size  field
 *   0      4     magic       'KDTL' (0x4b44544c)
 *   4      4     crc32c      of bytes 8 .. end of data
 *   8      8     seq         u64 BE, grows by one per record of one stream (first record: 1)
 *   16     8     offset      u64 BE, byte offset in the volume
 *   24     8     length      u64 BE, bytes written (write: the data that follows) or trimmed
 *   32     1     op          1 = write, 2 = trim (also write-zeroes)
 *   33     7     reserved    zero
 *   40     n     data        write only: `length` bytes
 */
import assert from 'node:assert';
import { crc32c, crc32cAppender } from '../shared/checksum.ts';
import { clusterSizeBytes } from '../shared/limits.ts';
import { KeelError } from '../shared/errors.ts';

export const dtlRecordMagic = 0x4b44544c;
export const dtlHeaderBytes = 40;
export type DtlOp = 'write' | 'trim';
const opCodes: Record<DtlOp, number> = { write: 1, trim: 2 };

export interface DtlRecord {
  seq: number;
  op: DtlOp;
  offset: number;
  length: number;
  /** write: the data (a view into the decoded buffer); trim: undefined. */
  data: Buffer | undefined;
}

function writeU64(target: Buffer, at: number, value: number): void {
  target.writeUInt32BE(Math.floor(value / 2 ** 32), at);
  target.writeUInt32BE(value >>> 0, at + 4);
}

function readU64(source: Buffer, at: number): number {
  return source.readUInt32BE(at) * 2 ** 32 + source.readUInt32BE(at + 4);
}

const appendClusterCrc = crc32cAppender(clusterSizeBytes);

/**
 * Writes a record's header at `at` in `target`, whose bytes from `at + dtlHeaderBytes` must already hold
 * `data` (or be where the caller copies it: the checksum covers it, so it is computed from `data`).
 * `dataClusterCrcs`, when given, are the crc32c of data's 4 KiB clusters, which the volume driver computes
 * for its TLog anyway: the record's crc is then folded from them (checksum.ts, crc32cAppender) instead of
 * read over the data a second time.
 */
export function writeDtlHeader(target: Buffer, at: number, seq: number, op: DtlOp, offset: number, length: number, data: Buffer | undefined, dataClusterCrcs?: Uint32Array): void {
  target.writeUInt32BE(dtlRecordMagic, at);
  writeU64(target, at + 8, seq);
  writeU64(target, at + 16, offset);
  writeU64(target, at + 24, length);
  target[at + 32] = opCodes[op];
  target.fill(0, at + 33, at + dtlHeaderBytes);
  let crc = crc32c(target.subarray(at + 8, at + dtlHeaderBytes));
  if (dataClusterCrcs !== undefined) {
    assert(data !== undefined && data.length === dataClusterCrcs.length * clusterSizeBytes, 'one crc per cluster of data');
    for (let index = 0; index < dataClusterCrcs.length; index++) crc = appendClusterCrc(crc, dataClusterCrcs[index]!);
  } else if (data !== undefined) {
    crc = crc32c(data, crc);
  }
  target.writeUInt32BE(crc, at + 4);
}

/** Bytes a record takes: header plus data for a write. */
export function dtlRecordBytes(op: DtlOp, length: number): number {
  return dtlHeaderBytes + (op === 'write' ? length : 0);
}

/**
 * The records a segment file holds: those that follow one another from `firstSeq` (its file name). The
 * walk ends at the first record that is incomplete, invalid or out of sequence, and `validBytes` says
 * where. A reused segment file (see DtlStore) still holds older records of the same stream past the
 * live ones: their seqs are all below `firstSeq`, so they never pass for live records.
 */
export function decodeDtlSegment(buffer: Buffer, firstSeq: number): { records: DtlRecord[]; validBytes: number } {
  const records: DtlRecord[] = [];
  let at = 0;
  for (let expected = firstSeq; at < buffer.length; expected++) {
    const result = readRecordAt(buffer, at);
    if (result.kind !== 'record' || result.record.seq !== expected) break;
    records.push(result.record);
    at = result.end;
  }
  return { records, validBytes: at };
}

/**
 * Decodes the whole records in `buffer` from `start`. A record that is torn at the end stops the walk
 * (`tornAt` tells where; a file's torn tail is cut there); a bad magic, op, length or checksum is CORRUPT.
 */
export function decodeDtlRecords(buffer: Buffer, start = 0): { records: DtlRecord[]; tornAt: number | undefined } {
  const records: DtlRecord[] = [];
  let at = start;
  while (at < buffer.length) {
    const result = readRecordAt(buffer, at);
    if (result.kind === 'torn') return { records, tornAt: at };
    if (result.kind === 'bad') throw result.error;
    records.push(result.record);
    at = result.end;
  }
  return { records, tornAt: undefined };
}

type RecordAt = { kind: 'record'; record: DtlRecord; end: number } | { kind: 'torn' } | { kind: 'bad'; error: KeelError };

/** The record at `at`: whole and valid, torn by the end of the buffer, or bad (the error says why). */
function readRecordAt(buffer: Buffer, at: number): RecordAt {
  if (buffer.length - at < dtlHeaderBytes) return { kind: 'torn' };
  if (buffer.readUInt32BE(at) !== dtlRecordMagic) return { kind: 'bad', error: KeelError.corrupt('DTL record: bad magic', { at }) };
  const seq = readU64(buffer, at + 8);
  const offset = readU64(buffer, at + 16);
  const length = readU64(buffer, at + 24);
  const code = buffer[at + 32];
  const op: DtlOp | undefined = code === 1 ? 'write' : code === 2 ? 'trim' : undefined;
  if (op === undefined || !Number.isSafeInteger(seq) || seq < 1 || !Number.isSafeInteger(offset + length)) {
    return { kind: 'bad', error: KeelError.corrupt('DTL record: bad header', { at, code, seq }) };
  }
  const end = at + dtlRecordBytes(op, length);
  if (end > buffer.length) return { kind: 'torn' };
  if (crc32c(buffer.subarray(at + 8, end)) !== buffer.readUInt32BE(at + 4)) {
    return { kind: 'bad', error: KeelError.checksumMismatch(`DTL record ${seq}`, { seq }) };
  }
  const data = op === 'write' ? buffer.subarray(at + dtlHeaderBytes, end) : undefined;
  return { kind: 'record', record: { seq, op, offset, length, data }, end };
}
