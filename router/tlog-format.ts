/**
 * TLog record codec (pure, no I/O). Layout specified in docs/tlog-format.md; keep both in step.
 * A TLog is a sequence of fixed-size 32-byte records, each protected by its own crc32c.
 */
import { crc32c } from '../shared/checksum.ts';

export const tlogRecordBytes = 32;
export const tlogFormatVersion = 1;
/** 'KTLG' little-endian, in the header record. */
export const tlogMagic = 0x474c544b;

export const tlogRecordType = {
  header: 1,
  write: 2,
  trim: 3,
  sync: 4,
  scoClosed: 5,
  tlogClosed: 6,
  snapshot: 7,
  snapshotDeleted: 8,
  fallthrough: 9,
  scoDeleted: 10,
} as const;

export type TlogRecord =
  | { type: 'header'; tlogSeq: number }
  | { type: 'write'; lba: number; sco: number; slot: number; dataCrc: number }
  | { type: 'trim'; lba: number; count: number }
  | { type: 'sync' }
  | { type: 'scoClosed'; sco: number; clusterCount: number; tableCrc: number }
  | { type: 'tlogClosed'; tlogSeq: number; recordCount: number }
  /** A snapshot of the map as replayed up to here (docs/snapshots.md); nameCrc = crc32c of its name. */
  | { type: 'snapshot'; snapshotId: number; createdAtMs: number; nameCrc: number }
  | { type: 'snapshotDeleted'; snapshotId: number }
  /** A clone's rollback: unmap [lba, lba+count) AND let it fall through to the parent snapshot again. */
  | { type: 'fallthrough'; lba: number; count: number }
  /** The scrubber deleted this SCO: nothing live maps into it; earlier WRITE records into it are dead. */
  | { type: 'scoDeleted'; sco: number };

// Field offsets inside a record (docs/tlog-format.md).
const typeOffset = 0;
const versionOffset = 1;
const fieldAOffset = 4; // u48
const fieldBOffset = 12; // u48
const slotOffset = 18; // u16
const scoOffset = 20; // u32
const checksumOffset = 24; // u32
const recordCrcOffset = 28; // u32

function seal(target: Buffer, at: number): void {
  target.writeUInt32LE(crc32c(target.subarray(at, at + recordCrcOffset)), at + recordCrcOffset);
}

function writeFields(target: Buffer, at: number, type: number, a: number, b: number, slot: number, sco: number, checksum: number): void {
  target.fill(0, at, at + tlogRecordBytes);
  target[at + typeOffset] = type;
  target[at + versionOffset] = tlogFormatVersion;
  target.writeUIntLE(a, at + fieldAOffset, 6);
  target.writeUIntLE(b, at + fieldBOffset, 6);
  target.writeUInt16LE(slot, at + slotOffset);
  target.writeUInt32LE(sco, at + scoOffset);
  target.writeUInt32LE(checksum >>> 0, at + checksumOffset);
  seal(target, at);
}

/** The hot-path encoder: a WRITE record at target[at..at+32), no allocation. */
export function encodeWriteRecord(target: Buffer, at: number, lba: number, sco: number, slot: number, dataCrc: number): void {
  writeFields(target, at, tlogRecordType.write, lba, 0, slot, sco, dataCrc);
}

export function encodeTlogRecord(target: Buffer, at: number, record: TlogRecord): void {
  switch (record.type) {
    case 'header':
      return writeFields(target, at, tlogRecordType.header, record.tlogSeq, 0, 0, tlogFormatVersion, tlogMagic);
    case 'write':
      return encodeWriteRecord(target, at, record.lba, record.sco, record.slot, record.dataCrc);
    case 'trim':
      return writeFields(target, at, tlogRecordType.trim, record.lba, record.count, 0, 0, 0);
    case 'sync':
      return writeFields(target, at, tlogRecordType.sync, 0, 0, 0, 0, 0);
    case 'scoClosed':
      return writeFields(target, at, tlogRecordType.scoClosed, 0, record.clusterCount, 0, record.sco, record.tableCrc);
    case 'tlogClosed':
      return writeFields(target, at, tlogRecordType.tlogClosed, record.tlogSeq, record.recordCount, 0, 0, 0);
    case 'snapshot':
      return writeFields(target, at, tlogRecordType.snapshot, record.snapshotId, record.createdAtMs, 0, 0, record.nameCrc);
    case 'snapshotDeleted':
      return writeFields(target, at, tlogRecordType.snapshotDeleted, record.snapshotId, 0, 0, 0, 0);
    case 'fallthrough':
      return writeFields(target, at, tlogRecordType.fallthrough, record.lba, record.count, 0, 0, 0);
    case 'scoDeleted':
      return writeFields(target, at, tlogRecordType.scoDeleted, 0, 0, 0, record.sco, 0);
  }
}

/** One record as a new 32-byte buffer (tests, rare records). */
export function encodeTlogRecordToBuffer(record: TlogRecord): Buffer {
  const buffer = Buffer.alloc(tlogRecordBytes);
  encodeTlogRecord(buffer, 0, record);
  return buffer;
}

/** Undefined when the record is torn or corrupt (bad crc, unknown type or version, bad header). */
export function decodeTlogRecord(source: Buffer, at: number): TlogRecord | undefined {
  if (source.length < at + tlogRecordBytes) return undefined;
  if (source.readUInt32LE(at + recordCrcOffset) !== crc32c(source.subarray(at, at + recordCrcOffset))) return undefined;
  if (source[at + versionOffset] !== tlogFormatVersion) return undefined;
  const a = source.readUIntLE(at + fieldAOffset, 6);
  const b = source.readUIntLE(at + fieldBOffset, 6);
  const slot = source.readUInt16LE(at + slotOffset);
  const sco = source.readUInt32LE(at + scoOffset);
  const checksum = source.readUInt32LE(at + checksumOffset);
  switch (source[at + typeOffset]) {
    case tlogRecordType.header:
      if (checksum !== tlogMagic || sco !== tlogFormatVersion) return undefined;
      return { type: 'header', tlogSeq: a };
    case tlogRecordType.write:
      return { type: 'write', lba: a, sco, slot, dataCrc: checksum };
    case tlogRecordType.trim:
      return { type: 'trim', lba: a, count: b };
    case tlogRecordType.sync:
      return { type: 'sync' };
    case tlogRecordType.scoClosed:
      return { type: 'scoClosed', sco, clusterCount: b, tableCrc: checksum };
    case tlogRecordType.tlogClosed:
      return { type: 'tlogClosed', tlogSeq: a, recordCount: b };
    case tlogRecordType.snapshot:
      return { type: 'snapshot', snapshotId: a, createdAtMs: b, nameCrc: checksum };
    case tlogRecordType.snapshotDeleted:
      return { type: 'snapshotDeleted', snapshotId: a };
    case tlogRecordType.fallthrough:
      return { type: 'fallthrough', lba: a, count: b };
    case tlogRecordType.scoDeleted:
      return { type: 'scoDeleted', sco };
    default:
      return undefined;
  }
}

export function tlogFileName(tlogSeq: number): string {
  return `${String(tlogSeq).padStart(8, '0')}.tlog`;
}

export function parseTlogFileName(name: string): number | undefined {
  const match = /^(\d+)\.tlog$/.exec(name);
  return match === null ? undefined : Number(match[1]);
}
