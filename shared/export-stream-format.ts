/**
 * The export stream (`keel snapshot export` / `keel snapshot import`): a volume, or the changes between
 * two of its snapshots, as one self-checking byte stream (like `zfs send` or `rbd export-diff`). The
 * format is specified in docs/export-stream.md; keep both in step. Pure codec, no I/O.
 */
import { crc32c } from './checksum.ts';
import { KeelError } from './errors.ts';
import { clusterSizeBytes } from './limits.ts';

export const exportStreamMagic = 'KEELEXP1';
export const exportStreamVersion = 1;
/** magic 8 + version 4 + reserved 4 + volume size 8 + cluster size 4 + from-name length 2 + to-name length 2. */
export const exportHeaderFixedBytes = 32;
/** type 1 + reserved 3 + lba 8 + count 4. */
export const exportRecordHeaderBytes = 16;
export const exportChecksumBytes = 4;
export const exportNameBytesMax = 255;

export const exportRecordType = { data: 1, zero: 2, end: 3 } as const;

export interface ExportHeader {
  volumeSizeBytes: number;
  /** The base snapshot for an incremental stream; undefined for a full one. */
  fromSnapshot: string | undefined;
  toSnapshot: string;
}

export type ExportRecord =
  | { type: 'data'; lba: number; count: number; data: Buffer }
  | { type: 'zero'; lba: number; count: number }
  /** `count`: the number of data and zero records before it. */
  | { type: 'end'; count: number };

export function encodeExportHeader(header: ExportHeader): Buffer {
  const from = Buffer.from(header.fromSnapshot ?? '');
  const to = Buffer.from(header.toSnapshot);
  if (from.length > exportNameBytesMax || to.length > exportNameBytesMax) throw KeelError.badArgument('snapshot name too long for an export stream');
  const buffer = Buffer.alloc(exportHeaderFixedBytes + from.length + to.length + exportChecksumBytes);
  buffer.write(exportStreamMagic, 0, 'ascii');
  buffer.writeUInt32LE(exportStreamVersion, 8);
  buffer.writeUIntLE(header.volumeSizeBytes, 16, 6);
  buffer.writeUInt32LE(clusterSizeBytes, 24);
  buffer.writeUInt16LE(from.length, 28);
  buffer.writeUInt16LE(to.length, 30);
  from.copy(buffer, exportHeaderFixedBytes);
  to.copy(buffer, exportHeaderFixedBytes + from.length);
  const crcAt = buffer.length - exportChecksumBytes;
  buffer.writeUInt32LE(crc32c(buffer.subarray(0, crcAt)), crcAt);
  return buffer;
}

/** Bytes the header needs, once its fixed part is available (undefined: not a Keel export stream). */
export function exportHeaderBytes(fixed: Buffer): number {
  if (fixed.length < exportHeaderFixedBytes || fixed.toString('ascii', 0, 8) !== exportStreamMagic) {
    throw KeelError.corrupt('not a Keel export stream (bad magic)');
  }
  return exportHeaderFixedBytes + fixed.readUInt16LE(28) + fixed.readUInt16LE(30) + exportChecksumBytes;
}

export function decodeExportHeader(bytes: Buffer): ExportHeader {
  const total = exportHeaderBytes(bytes);
  if (bytes.length < total) throw KeelError.corrupt('export stream header truncated');
  if (bytes.readUInt32LE(8) !== exportStreamVersion) throw KeelError.corrupt(`export stream version ${bytes.readUInt32LE(8)} is not ${exportStreamVersion}`);
  if (bytes.readUInt32LE(total - exportChecksumBytes) !== crc32c(bytes.subarray(0, total - exportChecksumBytes))) {
    throw KeelError.checksumMismatch('export stream header');
  }
  if (bytes.readUInt32LE(24) !== clusterSizeBytes) throw KeelError.corrupt(`export stream cluster size ${bytes.readUInt32LE(24)} is not ${clusterSizeBytes}`);
  const fromLength = bytes.readUInt16LE(28);
  const from = bytes.toString('utf8', exportHeaderFixedBytes, exportHeaderFixedBytes + fromLength);
  const to = bytes.toString('utf8', exportHeaderFixedBytes + fromLength, total - exportChecksumBytes);
  return { volumeSizeBytes: bytes.readUIntLE(16, 6), fromSnapshot: fromLength === 0 ? undefined : from, toSnapshot: to };
}

/** A record as [header, data?, crc] buffers (data is not copied). */
export function encodeExportRecord(record: ExportRecord): Buffer[] {
  const head = Buffer.alloc(exportRecordHeaderBytes);
  head[0] = exportRecordType[record.type];
  head.writeUIntLE(record.type === 'end' ? 0 : record.lba, 4, 6);
  head.writeUInt32LE(record.count, 12);
  const crc = Buffer.alloc(exportChecksumBytes);
  let checksum = crc32c(head);
  if (record.type === 'data') checksum = crc32c(record.data, checksum);
  crc.writeUInt32LE(checksum);
  return record.type === 'data' ? [head, record.data, crc] : [head, crc];
}

/** Payload bytes that follow a record header (data records carry count clusters). */
export function exportRecordDataBytes(head: Buffer): number {
  return head[0] === exportRecordType.data ? head.readUInt32LE(12) * clusterSizeBytes : 0;
}

export function decodeExportRecord(head: Buffer, data: Buffer, crc: Buffer, countMax: number): ExportRecord {
  let checksum = crc32c(head);
  if (data.length > 0) checksum = crc32c(data, checksum);
  if (crc.readUInt32LE(0) !== checksum) throw KeelError.checksumMismatch('export stream record');
  const lba = head.readUIntLE(4, 6);
  const count = head.readUInt32LE(12);
  switch (head[0]) {
    case exportRecordType.data:
    case exportRecordType.zero:
      if (count === 0 || count > countMax) throw KeelError.corrupt(`export stream record of ${count} clusters`);
      return head[0] === exportRecordType.data ? { type: 'data', lba, count, data } : { type: 'zero', lba, count };
    case exportRecordType.end:
      return { type: 'end', count };
    default:
      throw KeelError.corrupt(`export stream record type ${head[0]}`);
  }
}
