/**
 * Splits a gather list into the pieces one write syscall takes. Pure: no I/O.
 *
 * Why a cap per syscall (limits.fileWriteBytesMax): the kernel sizes the page-cache folios it allocates
 * by the length of the write. On the 2-core Firecracker VM this project is measured on, one 16 MiB
 * writev of a fragment into a fresh file made the kernel allocate large folios, and copying into them
 * cost about 2 us per KiB (copy_folio_from_iter_atomic was 30% of the owner router's CPU under 4k random
 * writes, in libuv's workers); the same bytes in 1 MiB writes cost 3% (perf record -e cpu-clock, 4+2
 * local-directory ASDs). A write of 1 MiB instead of 16 MiB adds 15 syscalls per 16 MiB, which is noise.
 */
import assert from 'node:assert';

/** IOV_MAX on Linux: writev refuses longer gather lists. */
export const iovecsPerWriteMax = 1024;

/** The leading part of `buffers` that one write may take: at most bytesMax bytes and iovecsPerWriteMax buffers. */
export function firstWriteSlice(buffers: readonly Uint8Array[], bytesMax: number): Uint8Array[] {
  assert(bytesMax > 0, 'a write slice must allow some bytes');
  const slice: Uint8Array[] = [];
  let room = bytesMax;
  for (const buffer of buffers) {
    if (room === 0 || slice.length === iovecsPerWriteMax) break;
    if (buffer.length === 0) continue;
    const piece = buffer.length <= room ? buffer : buffer.subarray(0, room);
    slice.push(piece);
    room -= piece.length;
  }
  return slice;
}

/** After a write of `bytesWritten` bytes: the buffers still to write (a partly written one as a subarray). */
export function dropWrittenPrefix(buffers: readonly Uint8Array[], bytesWritten: number): Uint8Array[] {
  let skip = bytesWritten;
  let index = 0;
  while (index < buffers.length && skip >= buffers[index]!.length) {
    skip -= buffers[index]!.length;
    index += 1;
  }
  const rest = buffers.slice(index);
  if (skip > 0) rest[0] = rest[0]!.subarray(skip);
  return rest;
}

export function totalBytes(buffers: readonly Uint8Array[]): number {
  let total = 0;
  for (const buffer of buffers) total += buffer.length;
  return total;
}
