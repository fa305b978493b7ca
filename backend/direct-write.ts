/**
 * Writes a new file with O_DIRECT from page-aligned staging buffers, so a directory ASD's fragments do not
 * go through the page cache (docs/backend-format.md, "Directory ASD writes").
 *
 * Why: a router writes 1.5x every byte it ingests as 4+2 fragments. Through the page cache each of those
 * bytes lands in a freshly allocated page, and on the reference VM (Firecracker, 2 cores) a fresh page
 * costs 3-5 us of CPU (host-side faults: touching 4 GiB of new memory costs that per 4 KiB page every
 * time), so the copy into the page cache was 28-30% of the owner router's CPU under 4k random writes.
 * The fragment is fsynced anyway, and reads come from the router's own SCO cache, so caching it here
 * buys little. Storage daemons that own their data do the same (Ceph BlueStore writes with O_DIRECT).
 *
 * O_DIRECT needs the memory address, the file offset and the length aligned to the device's logical
 * block. Staging buffers are slices of one WebAssembly.Memory, which V8 maps on page boundaries, taken
 * at multiples of directWriteChunkBytes; every write is a whole chunk at a chunk-aligned offset except
 * the last, which is padded with zeros to directWriteAlignBytes and then truncated to the real length.
 * A file system without O_DIRECT (tmpfs) fails the open with EINVAL: the caller falls back to buffered
 * writes for good.
 */
import assert from 'node:assert';
import { constants as fsConstants, promises as fs } from 'node:fs';
import { limits } from '../shared/limits.ts';

/** Alignment of every O_DIRECT address, offset and length: a page, which covers 512 B and 4 KiB sectors. */
export const directWriteAlignBytes = 4096;
const wasmPageBytes = 64 * 1024;

/** Bytes staged and written per O_DIRECT call (one staging buffer). */
export const directWriteChunkBytes = limits.fileWriteBytesMax;

/**
 * A fixed set of page-aligned staging buffers, allocated on first use and reused forever (fresh memory is
 * what costs here). `take` returns undefined when all are in use: that write goes buffered instead of
 * waiting, so staging never holds a put up.
 */
export class DirectWriteStaging {
  private memory: Buffer | undefined;
  private readonly free: number[] = [];
  private readonly counters = { taken: 0, exhausted: 0 };

  constructor(private readonly buffersMax: number = limits.directWriteStagingBuffersMax) {
    assert(buffersMax >= 1, 'at least one staging buffer');
  }

  take(): Buffer | undefined {
    if (this.memory === undefined) this.allocate();
    const index = this.free.pop();
    if (index === undefined) {
      this.counters.exhausted += 1;
      return undefined;
    }
    this.counters.taken += 1;
    return this.memory!.subarray(index * directWriteChunkBytes, (index + 1) * directWriteChunkBytes);
  }

  give(buffer: Buffer): void {
    assert(this.memory !== undefined && buffer.buffer === this.memory.buffer, 'not a staging buffer');
    const index = buffer.byteOffset / directWriteChunkBytes;
    assert(Number.isInteger(index) && !this.free.includes(index), 'staging buffer given back twice');
    this.free.push(index);
  }

  stats(): { buffersMax: number; free: number; taken: number; exhausted: number } {
    return { buffersMax: this.buffersMax, free: this.memory === undefined ? this.buffersMax : this.free.length, ...this.counters };
  }

  private allocate(): void {
    const bytes = this.buffersMax * directWriteChunkBytes;
    const pages = Math.ceil(bytes / wasmPageBytes);
    this.memory = Buffer.from(new WebAssembly.Memory({ initial: pages, maximum: pages }).buffer, 0, bytes);
    for (let index = this.buffersMax - 1; index >= 0; index--) this.free.push(index);
  }
}

/** The process's staging buffers, shared by every directory ASD in it (their puts share the object store's gate). */
export const processDirectWriteStaging = new DirectWriteStaging();

export const directOpenFlags = fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | (fsConstants.O_DIRECT ?? 0);

/** True when this platform has O_DIRECT at all (Linux); elsewhere directory ASDs write buffered. */
export const directWriteSupported = fsConstants.O_DIRECT !== undefined;

/**
 * Writes `buffers` back to back from offset 0 of `handle` (opened with directOpenFlags), staging them
 * through `staging`, and truncates the file to their total length. Throws what the writes throw.
 */
export async function writeAllDirect(handle: fs.FileHandle, buffers: readonly Uint8Array[], staging: Buffer): Promise<void> {
  // The memory address is the kernel's to check: a misaligned one fails with EINVAL, like a refusing file system.
  assert(staging.length === directWriteChunkBytes, 'a staging buffer is one chunk');
  let fileOffset = 0;
  let filled = 0;
  const flush = async (last: boolean) => {
    const length = last ? Math.ceil(filled / directWriteAlignBytes) * directWriteAlignBytes : filled;
    staging.fill(0, filled, length);
    let done = 0;
    while (done < length) {
      const { bytesWritten } = await handle.write(staging, done, length - done, fileOffset + done);
      assert(bytesWritten > 0 && bytesWritten % directWriteAlignBytes === 0, 'O_DIRECT wrote a partial block');
      done += bytesWritten;
    }
    fileOffset += filled;
    filled = 0;
  };
  for (const buffer of buffers) {
    let taken = 0;
    while (taken < buffer.length) {
      const copied = Math.min(buffer.length - taken, staging.length - filled);
      staging.set(buffer.subarray(taken, taken + copied), filled);
      filled += copied;
      taken += copied;
      if (filled === staging.length) await flush(false);
    }
  }
  const total = fileOffset + filled;
  if (filled > 0) await flush(true);
  if (total % directWriteAlignBytes !== 0) await handle.truncate(total);
}
