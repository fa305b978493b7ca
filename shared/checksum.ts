/**
 * CRC32C (Castagnoli), the checksum of every Keel format. On x86-64 with SSE4.2, sse4_crc32's crc32
 * instruction loop: 0.49 us per 4 KiB here against 0.78 us for @node-rs/crc32 (the call overhead is
 * lower too: 85 against 115 ns for 32 bytes), and Keel computes it several times per 4 KiB write and once
 * per read. Elsewhere (ARM, old x86) sse4_crc32 would fall back to a table loop, so @node-rs/crc32's
 * native code does the work.
 */
import { createRequire } from 'node:module';
import { crc32c as nodeRsCrc32c } from '@node-rs/crc32';

interface Sse4Crc32 {
  hardware_support: boolean;
  sse42_crc(data: Uint8Array, initial?: number): number;
}

// sse4_crc32 ships no type declarations.
const sse4 = createRequire(import.meta.url)('sse4_crc32') as Sse4Crc32;

/** CRC32C of a buffer, optionally continuing from a previous value (crc32c(b, crc32c(a)) = crc32c(a ‖ b)). */
export const crc32c: (data: Uint8Array, initial?: number) => number = sse4.hardware_support
  ? (data, initial = 0) => sse4.sse42_crc(data, initial) >>> 0
  : (data, initial = 0) => nodeRsCrc32c(data as Buffer, initial) >>> 0;
