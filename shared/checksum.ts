/**
 * CRC32C (Castagnoli), the checksum of every Keel format. Two native implementations, each used where it
 * is faster (measured on this host, 2026-11-22): sse4_crc32's crc32-instruction loop has the lower call
 * overhead (54 against 80 ns for 16 bytes, 77 against 111 ns for 256), and @node-rs/crc32's folding
 * (carry-less multiply) wins from about 1.5 KiB up (431-454 against 549-585 ns per 4 KiB, 4.5 against
 * 8.2 us per 64 KiB). Keel computes short crcs (frame and record headers) and 4 KiB ones (clusters)
 * several times per write. Where SSE4.2 is missing (ARM, old x86), sse4_crc32 would fall back to a table
 * loop, so @node-rs/crc32 does all of the work.
 */
import { createRequire } from 'node:module';
import { crc32c as nodeRsCrc32c } from '@node-rs/crc32';

interface Sse4Crc32 {
  hardware_support: boolean;
  sse42_crc(data: Uint8Array, initial?: number): number;
}

// sse4_crc32 ships no type declarations.
const sse4 = createRequire(import.meta.url)('sse4_crc32') as Sse4Crc32;

/** Below this many bytes sse4_crc32's lower call overhead beats @node-rs/crc32's faster loop. */
const shortInputBytes = 1024;

/** CRC32C of a buffer, optionally continuing from a previous value (crc32c(b, crc32c(a)) = crc32c(a ‖ b)). */
export const crc32c: (data: Uint8Array, initial?: number) => number = sse4.hardware_support
  ? (data, initial = 0) => (data.length < shortInputBytes ? sse4.sse42_crc(data, initial) : nodeRsCrc32c(data as Buffer, initial)) >>> 0
  : (data, initial = 0) => nodeRsCrc32c(data as Buffer, initial) >>> 0;

/** Built once per piece length (formats share the cluster size's). */
const appenders = new Map<number, (crcA: number, crcB: number) => number>();

/**
 * crc32c(a ‖ b) from crc32c(a) and crc32c(b), for pieces b of one fixed length: `crc32cAppender(n)(crcA,
 * crcB)`. Appending n bytes multiplies the crc register by x^(8n) mod P, a linear map on 32 bits, and the
 * crc's pre- and post-inversion cancel out of the sum, so crc32c(a ‖ b) = shift(crc32c(a)) ^ crc32c(b).
 * The map is built from the library itself (shift(x) = crc32c(zeros, x) ^ crc32c(zeros, 0) for n zero
 * bytes) as four 256-entry tables, one per byte of x: a shift then costs four lookups.
 *
 * Why: a read of a run of clusters can check all of them with one crc over the run (one native call,
 * the library's fast loop) against the clusters' stored crcs folded together, instead of one call per
 * 4 KiB cluster; and a DTL record's crc can be folded from its clusters' crcs instead of read over the
 * data again. Neither crc library offers the combine (zlib's crc32_combine, for CRC-32C).
 */
export function crc32cAppender(pieceBytes: number): (crcA: number, crcB: number) => number {
  let appender = appenders.get(pieceBytes);
  if (appender === undefined) appenders.set(pieceBytes, (appender = buildAppender(pieceBytes)));
  return appender;
}

function buildAppender(pieceBytes: number): (crcA: number, crcB: number) => number {
  const zeros = Buffer.alloc(pieceBytes);
  const ofZero = crc32c(zeros, 0);
  const tables = [0, 1, 2, 3].map(() => new Uint32Array(256));
  for (let byte = 0; byte < 4; byte++) {
    const table = tables[byte]!;
    for (let bit = 0; bit < 8; bit++) {
      const image = (crc32c(zeros, (1 << (byte * 8 + bit)) >>> 0) ^ ofZero) >>> 0;
      const step = 1 << bit;
      for (let value = step; value < 2 * step; value++) table[value] = (table[value - step]! ^ image) >>> 0;
    }
  }
  const [t0, t1, t2, t3] = tables as [Uint32Array, Uint32Array, Uint32Array, Uint32Array];
  return (crcA, crcB) => (t0[crcA & 0xff]! ^ t1[(crcA >>> 8) & 0xff]! ^ t2[(crcA >>> 16) & 0xff]! ^ t3[crcA >>> 24]! ^ crcB) >>> 0;
}
