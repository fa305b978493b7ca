/**
 * On-disk layout of a SCO file (Storage Container Object). Specified in docs/sco-format.md; keep both in
 * step. A SCO is `scos/<seq>.sco`: clusters at slot * 4096 with no header, and once closed a footer:
 * the per-cluster crc32c table followed by a fixed trailer.
 */
import { clusterSizeBytes } from '../shared/limits.ts';
import { crc32c, crc32cAppender } from '../shared/checksum.ts';

export const scoClusterBytes = clusterSizeBytes;
/** 'KEELSCO1' as a little-endian u64 is not needed; the magic is compared as bytes. */
export const scoTrailerMagic = Buffer.from('KEELSCO1', 'latin1');
export const scoFormatVersion = 1;
export const scoTrailerBytes = 32;
export const scoChecksumBytes = 4;

const appendClusterCrc = crc32cAppender(scoClusterBytes);

/** crc32c of each cluster of `data` (whole clusters) into table[at...]; returns table. */
export function clusterChecksums(data: Buffer, table: Uint32Array, at = 0): Uint32Array {
  const count = data.length / scoClusterBytes;
  for (let index = 0; index < count; index++) table[at + index] = crc32c(data.subarray(index * scoClusterBytes, (index + 1) * scoClusterBytes));
  return table;
}

/**
 * Index of the first cluster of `data` (whole clusters) whose crc32c is not table[firstSlot + index], or
 * -1 when all match. A run is checked with one crc over all of it against the table's crcs folded
 * together (checksum.ts, crc32cAppender): one native call in place of one per cluster, and CRC-32C keeps
 * the same Hamming distance (4) over a run of up to 256 MiB as over 4 KiB. Only a mismatch walks the
 * clusters, to name the bad one.
 */
export function firstBadCluster(data: Buffer, table: Uint32Array, firstSlot: number): number {
  const count = data.length / scoClusterBytes;
  if (count > 1) {
    let expected = table[firstSlot]!;
    for (let index = 1; index < count; index++) expected = appendClusterCrc(expected, table[firstSlot + index]!);
    if (crc32c(data) === expected) return -1;
  }
  for (let index = 0; index < count; index++) {
    if (crc32c(data.subarray(index * scoClusterBytes, (index + 1) * scoClusterBytes)) !== table[firstSlot + index]) return index;
  }
  return -1;
}

export interface ScoTrailer {
  scoSeq: number;
  clusterCount: number;
  tableCrc: number;
}

/** Trailer: magic[8] | version u32 | sco seq u32 | cluster count u32 | table crc u32 | reserved u32 | trailer crc u32. */
export function encodeScoTrailer(trailer: ScoTrailer): Buffer {
  const buffer = Buffer.alloc(scoTrailerBytes);
  scoTrailerMagic.copy(buffer, 0);
  buffer.writeUInt32LE(scoFormatVersion, 8);
  buffer.writeUInt32LE(trailer.scoSeq, 12);
  buffer.writeUInt32LE(trailer.clusterCount, 16);
  buffer.writeUInt32LE(trailer.tableCrc, 20);
  buffer.writeUInt32LE(crc32c(buffer.subarray(0, 28)), 28);
  return buffer;
}

/** Undefined when the bytes are not a valid trailer (missing, torn or corrupt). */
export function decodeScoTrailer(buffer: Buffer): ScoTrailer | undefined {
  if (buffer.length !== scoTrailerBytes) return undefined;
  if (!buffer.subarray(0, 8).equals(scoTrailerMagic)) return undefined;
  if (buffer.readUInt32LE(28) !== crc32c(buffer.subarray(0, 28))) return undefined;
  if (buffer.readUInt32LE(8) !== scoFormatVersion) return undefined;
  return { scoSeq: buffer.readUInt32LE(12), clusterCount: buffer.readUInt32LE(16), tableCrc: buffer.readUInt32LE(20) };
}

/** The crc table as stored: clusterCount little-endian u32s. */
export function encodeScoChecksumTable(table: Uint32Array, clusterCount: number): Buffer {
  const buffer = Buffer.alloc(clusterCount * scoChecksumBytes);
  for (let slot = 0; slot < clusterCount; slot++) buffer.writeUInt32LE(table[slot], slot * scoChecksumBytes);
  return buffer;
}

export function decodeScoChecksumTable(buffer: Buffer, clusterCount: number): Uint32Array {
  const table = new Uint32Array(clusterCount);
  for (let slot = 0; slot < clusterCount; slot++) table[slot] = buffer.readUInt32LE(slot * scoChecksumBytes);
  return table;
}

/** The footer starts right after the last cluster. */
export function scoFooterOffset(clusterCount: number): number {
  return clusterCount * scoClusterBytes;
}

/** The trailer of a SCO file of `fileBytes` bytes, when it is valid, names `scoSeq` and fits the file's size. */
export function checkScoTrailer(trailerBytes: Buffer, fileBytes: number, scoSeq: number): ScoTrailer | undefined {
  const trailer = decodeScoTrailer(trailerBytes);
  if (trailer === undefined || trailer.scoSeq !== scoSeq || scoFileBytes(trailer.clusterCount) !== fileBytes) return undefined;
  return trailer;
}

/** The crc table, when its bytes match the trailer's table crc. */
export function checkScoChecksumTable(tableBytes: Buffer, trailer: ScoTrailer): Uint32Array | undefined {
  if (crc32c(tableBytes) !== trailer.tableCrc) return undefined;
  return decodeScoChecksumTable(tableBytes, trailer.clusterCount);
}

/**
 * The cluster crc table of a whole sealed SCO file held in memory (the uploader reads it whole), or
 * undefined when its footer is missing, torn, corrupt or names another SCO.
 */
export function decodeScoFileChecksums(file: Buffer, scoSeq: number): Uint32Array | undefined {
  if (file.length < scoTrailerBytes) return undefined;
  const trailer = checkScoTrailer(file.subarray(file.length - scoTrailerBytes), file.length, scoSeq);
  if (trailer === undefined) return undefined;
  const footerOffset = scoFooterOffset(trailer.clusterCount);
  return checkScoChecksumTable(file.subarray(footerOffset, footerOffset + trailer.clusterCount * scoChecksumBytes), trailer);
}

export function scoFileBytes(clusterCount: number): number {
  return scoFooterOffset(clusterCount) + clusterCount * scoChecksumBytes + scoTrailerBytes;
}

export function scoFileName(scoSeq: number): string {
  return `${String(scoSeq).padStart(8, '0')}.sco`;
}

/** The SCO number of a file name, or undefined for other files. */
export function parseScoFileName(name: string): number | undefined {
  const match = /^(\d+)\.sco$/.exec(name);
  return match === null ? undefined : Number(match[1]);
}
