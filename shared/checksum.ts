import { crc32c as nativeCrc32c } from '@node-rs/crc32';

/** CRC32C (Castagnoli) of a buffer, optionally continuing from a previous value. Native, ~6 GiB/s. */
export function crc32c(data: Uint8Array, initial = 0): number {
  return nativeCrc32c(data as Buffer, initial) >>> 0;
}
