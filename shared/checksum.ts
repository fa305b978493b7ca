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
