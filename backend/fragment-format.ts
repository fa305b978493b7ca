/**
 * Fragment layout of an erasure-coded backend object: constants and a pure codec (no I/O).
 * The format is specified in docs/backend-format.md; keep the two in step.
 *
 *   fragment = header (80 B) | block crc table (4 B per 4 KiB body block) | chunk index (8 B per chunk) | body
 *
 * The object's stored stream (plain bytes, or transformed chunks back to back) is striped over the k data
 * fragments in stripe units of `stripeUnitBytes`: stripe s holds stored bytes [s*k*U, (s+1)*k*U), unit i of
 * it lives in data fragment i at body offset s*U. Parity fragment k+j holds parity unit j of every stripe.
 */
import { createHash } from 'node:crypto';
import { crc32c } from '../shared/checksum.ts';
import { KeelError } from '../shared/errors.ts';

export const fragmentMagic = Buffer.from('KEELFRG1', 'ascii');
export const fragmentFormatVersion = 1;
export const fragmentHeaderBytes = 80;
export const putIdBytes = 8;
/** Body bytes covered by one crc32c in the block table: the unit a partial read fetches and verifies. */
export const fragmentBlockBytes = 4096;
export const blockCrcEntryBytes = 4;
export const chunkIndexEntryBytes = 8;
export const nameHashBytes = 8;

export const fragmentFlagLz4 = 1 << 0;
export const fragmentFlagAesGcm = 1 << 1;
/** Top bit of a chunk index entry's stored length: the chunk was lz4-compressed. */
export const chunkCompressedBit = 0x8000_0000;

/** Header byte offsets (all little-endian). */
const at = {
  magic: 0,
  version: 8,
  flags: 10,
  k: 12,
  m: 13,
  fragmentIndex: 14,
  reserved: 15,
  nameHash: 16,
  objectSizeBytes: 24,
  storedSizeBytes: 32,
  stripeUnitBytes: 40,
  stripeCount: 44,
  chunkSizeBytes: 48,
  chunkCount: 52,
  putId: 56,
  tablesCrc: 64,
  reserved2: 68,
  headerCrc: 76,
} as const;

/** What every fragment of an object agrees on. */
export interface ObjectGeometry {
  k: number;
  m: number;
  flags: number;
  nameHash: Buffer;
  /** Plain size of the object. */
  objectSizeBytes: number;
  /** Size of the stored stream (== objectSizeBytes when chunks are not transformed). */
  storedSizeBytes: number;
  stripeUnitBytes: number;
  stripeCount: number;
  /** Plain chunk size when chunks are transformed, else 0. */
  chunkSizeBytes: number;
  /** Chunk index entries (0 when chunks are not transformed). */
  chunkCount: number;
  /** Random per putObject: fragments of different puts of the same name are never combined. */
  putId: Buffer;
}

export interface FragmentHeader extends ObjectGeometry {
  fragmentIndex: number;
  tablesCrc: number;
}

export interface FragmentLayout {
  tableOffset: number;
  tableBytes: number;
  indexOffset: number;
  indexBytes: number;
  bodyOffset: number;
  bodyBytes: number;
  blockCount: number;
  totalBytes: number;
}

/** Stored stream decoded from a chunk index: where each chunk's stored bytes start and how to undo them. */
export interface ChunkIndex {
  /** storedOffsets[c] .. storedOffsets[c+1] are chunk c's stored bytes (chunkCount + 1 entries). */
  storedOffsets: Float64Array;
  compressed: Uint8Array;
  plainCrcs: Uint32Array;
}

export interface ChunkIndexEntry {
  storedLength: number;
  compressed: boolean;
  plainCrc: number;
}

/** One contiguous run of a stored range inside one data fragment's body. */
export interface FragmentPiece {
  fragmentIndex: number;
  bodyOffset: number;
  length: number;
  /** Where the piece starts in the stored stream. */
  storedOffset: number;
}

export function objectNameHash(name: string): Buffer {
  return createHash('sha256').update(name, 'utf8').digest().subarray(0, nameHashBytes);
}

/** Key of fragment `index` of object `name` on its ASD. */
export function fragmentKey(name: string, index: number): string {
  return `${name}.frag${index}`;
}

function roundUp(value: number, multiple: number): number {
  return Math.ceil(value / multiple) * multiple;
}

/**
 * Stripe unit and stripe count for an object: the preset's unit, shrunk (to whole blocks) for objects too
 * small to fill one stripe, so a small TLog does not cost k+m full stripe units.
 */
export function stripeGeometry(storedSizeBytes: number, k: number, presetStripeUnitBytes: number) {
  const perFragment = roundUp(Math.max(1, Math.ceil(storedSizeBytes / k)), fragmentBlockBytes);
  const stripeUnitBytes = Math.min(presetStripeUnitBytes, perFragment);
  const stripeCount = Math.max(1, Math.ceil(storedSizeBytes / (k * stripeUnitBytes)));
  return { stripeUnitBytes, stripeCount };
}

export function fragmentLayout(g: ObjectGeometry): FragmentLayout {
  const bodyBytes = g.stripeUnitBytes * g.stripeCount;
  const blockCount = bodyBytes / fragmentBlockBytes;
  const tableOffset = fragmentHeaderBytes;
  const tableBytes = blockCount * blockCrcEntryBytes;
  const indexOffset = tableOffset + tableBytes;
  const indexBytes = g.chunkCount * chunkIndexEntryBytes;
  const bodyOffset = indexOffset + indexBytes;
  return { tableOffset, tableBytes, indexOffset, indexBytes, bodyOffset, bodyBytes, blockCount, totalBytes: bodyOffset + bodyBytes };
}

export function encodeFragmentHeader(h: FragmentHeader): Buffer {
  const buf = Buffer.alloc(fragmentHeaderBytes);
  fragmentMagic.copy(buf, at.magic);
  buf.writeUInt16LE(fragmentFormatVersion, at.version);
  buf.writeUInt16LE(h.flags, at.flags);
  buf.writeUInt8(h.k, at.k);
  buf.writeUInt8(h.m, at.m);
  buf.writeUInt8(h.fragmentIndex, at.fragmentIndex);
  h.nameHash.copy(buf, at.nameHash, 0, nameHashBytes);
  buf.writeBigUInt64LE(BigInt(h.objectSizeBytes), at.objectSizeBytes);
  buf.writeBigUInt64LE(BigInt(h.storedSizeBytes), at.storedSizeBytes);
  buf.writeUInt32LE(h.stripeUnitBytes, at.stripeUnitBytes);
  buf.writeUInt32LE(h.stripeCount, at.stripeCount);
  buf.writeUInt32LE(h.chunkSizeBytes, at.chunkSizeBytes);
  buf.writeUInt32LE(h.chunkCount, at.chunkCount);
  h.putId.copy(buf, at.putId, 0, putIdBytes);
  buf.writeUInt32LE(h.tablesCrc >>> 0, at.tablesCrc);
  buf.writeUInt32LE(crc32c(buf.subarray(0, at.headerCrc)), at.headerCrc);
  return buf;
}

/**
 * Parses and validates a fragment header. Throws CORRUPT (with `what` in the message) when the magic,
 * version, crc or the geometry's internal consistency is wrong, or when it belongs to another object.
 */
export function decodeFragmentHeader(buf: Buffer, expectedNameHash?: Buffer, what = 'fragment header'): FragmentHeader {
  const corrupt = (why: string) => KeelError.corrupt(`${what}: ${why}`, { why });
  if (buf.length < fragmentHeaderBytes) throw corrupt(`short: ${buf.length} bytes`);
  if (!buf.subarray(0, 8).equals(fragmentMagic)) throw corrupt('bad magic');
  if (crc32c(buf.subarray(0, at.headerCrc)) !== buf.readUInt32LE(at.headerCrc)) throw corrupt('header crc mismatch');
  const version = buf.readUInt16LE(at.version);
  if (version !== fragmentFormatVersion) throw corrupt(`unsupported version ${version}`);
  const h: FragmentHeader = {
    flags: buf.readUInt16LE(at.flags),
    k: buf.readUInt8(at.k),
    m: buf.readUInt8(at.m),
    fragmentIndex: buf.readUInt8(at.fragmentIndex),
    nameHash: Buffer.from(buf.subarray(at.nameHash, at.nameHash + nameHashBytes)),
    objectSizeBytes: Number(buf.readBigUInt64LE(at.objectSizeBytes)),
    storedSizeBytes: Number(buf.readBigUInt64LE(at.storedSizeBytes)),
    stripeUnitBytes: buf.readUInt32LE(at.stripeUnitBytes),
    stripeCount: buf.readUInt32LE(at.stripeCount),
    chunkSizeBytes: buf.readUInt32LE(at.chunkSizeBytes),
    chunkCount: buf.readUInt32LE(at.chunkCount),
    putId: Buffer.from(buf.subarray(at.putId, at.putId + putIdBytes)),
    tablesCrc: buf.readUInt32LE(at.tablesCrc),
  };
  if (expectedNameHash && !h.nameHash.equals(expectedNameHash)) throw corrupt('belongs to another object (name hash differs)');
  const why = geometryProblem(h);
  if (why) throw corrupt(why);
  return h;
}

function geometryProblem(h: FragmentHeader): string | undefined {
  if (h.k < 1 || h.fragmentIndex >= h.k + h.m) return `fragment index ${h.fragmentIndex} outside ${h.k}+${h.m}`;
  if ((h.flags & ~(fragmentFlagLz4 | fragmentFlagAesGcm)) !== 0) return `unknown flags ${h.flags}`;
  if (h.stripeUnitBytes === 0 || h.stripeUnitBytes % fragmentBlockBytes !== 0) return `stripe unit ${h.stripeUnitBytes}`;
  if (h.storedSizeBytes > h.k * h.stripeUnitBytes * h.stripeCount) return 'stored size exceeds the stripes';
  const transformed = h.flags !== 0;
  if (!transformed && (h.chunkCount !== 0 || h.storedSizeBytes !== h.objectSizeBytes)) return 'untransformed object with a chunk index';
  if (transformed) {
    if (h.chunkSizeBytes === 0 || h.chunkCount !== Math.ceil(h.objectSizeBytes / h.chunkSizeBytes)) return 'chunk count does not match';
  }
  return undefined;
}

export function geometryOf(h: FragmentHeader): ObjectGeometry {
  const { fragmentIndex: _f, tablesCrc: _t, ...g } = h;
  return g;
}

/** True when two fragments' headers describe the same put of the same object. */
export function sameGeometry(a: ObjectGeometry, b: ObjectGeometry): boolean {
  return (
    a.k === b.k &&
    a.m === b.m &&
    a.flags === b.flags &&
    a.nameHash.equals(b.nameHash) &&
    a.putId.equals(b.putId) &&
    a.objectSizeBytes === b.objectSizeBytes &&
    a.storedSizeBytes === b.storedSizeBytes &&
    a.stripeUnitBytes === b.stripeUnitBytes &&
    a.stripeCount === b.stripeCount &&
    a.chunkSizeBytes === b.chunkSizeBytes &&
    a.chunkCount === b.chunkCount
  );
}

export function encodeChunkIndex(entries: readonly ChunkIndexEntry[]): Buffer {
  const buf = Buffer.alloc(entries.length * chunkIndexEntryBytes);
  entries.forEach((e, i) => {
    buf.writeUInt32LE((e.storedLength | (e.compressed ? chunkCompressedBit : 0)) >>> 0, i * chunkIndexEntryBytes);
    buf.writeUInt32LE(e.plainCrc >>> 0, i * chunkIndexEntryBytes + 4);
  });
  return buf;
}

export function decodeChunkIndex(buf: Buffer, g: ObjectGeometry): ChunkIndex {
  const count = g.chunkCount;
  const storedOffsets = new Float64Array(count + 1);
  const compressed = new Uint8Array(count);
  const plainCrcs = new Uint32Array(count);
  for (let c = 0; c < count; c++) {
    const word = buf.readUInt32LE(c * chunkIndexEntryBytes);
    compressed[c] = word & chunkCompressedBit ? 1 : 0;
    storedOffsets[c + 1] = storedOffsets[c]! + (word & ~chunkCompressedBit);
    plainCrcs[c] = buf.readUInt32LE(c * chunkIndexEntryBytes + 4);
  }
  if (storedOffsets[count] !== g.storedSizeBytes) throw KeelError.corrupt('chunk index: stored lengths do not add up');
  return { storedOffsets, compressed, plainCrcs };
}

/** crc32c of every 4 KiB block of a fragment body given as consecutive pieces of whole blocks. */
export function computeBlockCrcTable(bodyPieces: readonly Buffer[]): Buffer {
  let blocks = 0;
  for (const p of bodyPieces) blocks += p.length / fragmentBlockBytes;
  const table = Buffer.alloc(blocks * blockCrcEntryBytes);
  let b = 0;
  for (const piece of bodyPieces) {
    for (let off = 0; off < piece.length; off += fragmentBlockBytes, b++)
      table.writeUInt32LE(crc32c(piece.subarray(off, off + fragmentBlockBytes)), b * blockCrcEntryBytes);
  }
  return table;
}

/**
 * The stored stream's 4 KiB block that body block `bodyBlock` of data fragment `fragment` holds (the
 * striping in the header comment). Lets a writer that knows the crc32c of its stored blocks fill a data
 * fragment's block table from them (docs/backend-format.md, "Block crc table").
 */
export function storedBlockOfDataBlock(g: Pick<ObjectGeometry, 'k' | 'stripeUnitBytes'>, fragment: number, bodyBlock: number): number {
  const unitBlocks = g.stripeUnitBytes / fragmentBlockBytes;
  const stripe = Math.floor(bodyBlock / unitBlocks);
  return (stripe * g.k + fragment) * unitBlocks + (bodyBlock % unitBlocks);
}

/** crc32c covering the block table and chunk index of one fragment (stored in its header). */
export function tablesCrc(table: Buffer, index: Buffer): number {
  return crc32c(index, crc32c(table));
}

/**
 * Checks body bytes fetched from `bodyOffset` (block-aligned) against the fragment's block crc table.
 * Returns the index of the first bad block, or -1 when every block matches.
 */
export function firstBadBlock(table: Buffer, bodyOffset: number, data: Buffer): number {
  const first = bodyOffset / fragmentBlockBytes;
  for (let off = 0, b = first; off < data.length; off += fragmentBlockBytes, b++) {
    if (crc32c(data.subarray(off, off + fragmentBlockBytes)) !== table.readUInt32LE(b * blockCrcEntryBytes)) return b;
  }
  return -1;
}

/** Every body block of `data` (fetched from block-aligned `bodyOffset`) whose crc32c does not match the table. */
export function badBlocks(table: Buffer, bodyOffset: number, data: Buffer): number[] {
  const bad: number[] = [];
  const first = bodyOffset / fragmentBlockBytes;
  for (let off = 0, b = first; off < data.length; off += fragmentBlockBytes, b++) {
    if (crc32c(data.subarray(off, off + fragmentBlockBytes)) !== table.readUInt32LE(b * blockCrcEntryBytes)) bad.push(b);
  }
  return bad;
}

/**
 * Splits stored range [storedOffset, +length) into runs per data fragment. Runs adjacent both in the stored
 * stream and in one fragment's body are merged (k = 1: the whole range is one run).
 */
export function mapStoredRange(g: Pick<ObjectGeometry, 'k' | 'stripeUnitBytes'>, storedOffset: number, length: number): FragmentPiece[] {
  const unit = g.stripeUnitBytes;
  const pieces: FragmentPiece[] = [];
  const lastByFragment = new Map<number, FragmentPiece>();
  let pos = storedOffset;
  const end = storedOffset + length;
  while (pos < end) {
    const stripe = Math.floor(pos / (g.k * unit));
    const inStripe = pos - stripe * g.k * unit;
    const fragmentIndex = Math.floor(inStripe / unit);
    const inUnit = inStripe - fragmentIndex * unit;
    const run = Math.min(unit - inUnit, end - pos);
    const bodyOffset = stripe * unit + inUnit;
    const last = lastByFragment.get(fragmentIndex);
    // With k = 1 consecutive stripes are adjacent in the one fragment; with k > 1 never within one stripe.
    if (last && last.bodyOffset + last.length === bodyOffset && last.storedOffset + last.length === pos) last.length += run;
    else {
      const piece = { fragmentIndex, bodyOffset, length: run, storedOffset: pos };
      pieces.push(piece);
      lastByFragment.set(fragmentIndex, piece);
    }
    pos += run;
  }
  return pieces;
}

/** One ranged read of a data fragment that serves several pieces: they lie back to back in its body. */
export interface FragmentRun {
  fragmentIndex: number;
  bodyOffset: number;
  length: number;
  /** The pieces it serves, as indexes into the pieces array, in body order. */
  pieceIndexes: number[];
}

/**
 * Groups a range's pieces into one read per run of adjacent body bytes in each fragment. Unit i of
 * consecutive stripes lies back to back in fragment i, so a range over many stripes costs k reads instead
 * of one per stripe unit (a 1 MiB range at 4+2 with 64 KiB units: 4 requests, not 16; on an S3 ASD each
 * request costs the router 1.4-1.9 ms of CPU in the SDK). Pieces are merged up to `readBytesMax` per read;
 * a single larger piece (k = 1) stays one read.
 */
export function fragmentRuns(pieces: readonly FragmentPiece[], readBytesMax: number): FragmentRun[] {
  const reads: FragmentRun[] = [];
  const lastByFragment = new Map<number, FragmentRun>();
  pieces.forEach((piece, index) => {
    const last = lastByFragment.get(piece.fragmentIndex);
    if (last && last.bodyOffset + last.length === piece.bodyOffset && last.length + piece.length <= readBytesMax) {
      last.length += piece.length;
      last.pieceIndexes.push(index);
      return;
    }
    const read = { fragmentIndex: piece.fragmentIndex, bodyOffset: piece.bodyOffset, length: piece.length, pieceIndexes: [index] };
    reads.push(read);
    lastByFragment.set(piece.fragmentIndex, read);
  });
  return reads;
}

/** Stored bytes of unit `i` of stripe `s` lie at stored offset (s*k + i) * unit. */
export function unitStoredOffset(g: Pick<ObjectGeometry, 'k' | 'stripeUnitBytes'>, stripe: number, unitIndex: number): number {
  return (stripe * g.k + unitIndex) * g.stripeUnitBytes;
}

/** Block-aligned body window that covers [bodyOffset, +length). */
export function blockAlignedWindow(bodyOffset: number, length: number): { start: number; end: number } {
  const start = Math.floor(bodyOffset / fragmentBlockBytes) * fragmentBlockBytes;
  const end = roundUp(bodyOffset + length, fragmentBlockBytes);
  return { start, end };
}
