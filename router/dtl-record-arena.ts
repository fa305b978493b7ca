/**
 * Memory for the DTL backlog's records. Records are carved one after another out of large slabs, so
 * the records of a batch are usually one contiguous range that goes to the peer without a copy, and the
 * backlog costs no per-record allocation. Records leave the backlog in order (oldest first), so a slab's
 * memory is released (by the garbage collector) soon after its last record is trimmed.
 */
import { limits } from '../shared/limits.ts';

export class DtlRecordArena {
  private slab: Buffer = Buffer.alloc(0);
  private used = 0;

  constructor(private readonly slabBytes = limits.dtlRecordSlabBytes) {}

  /** A region of `bytes` that no other record uses; the caller fills all of it. */
  take(bytes: number): Buffer {
    if (bytes > this.slabBytes / 4) return Buffer.allocUnsafeSlow(bytes); // large writes: no slab waste
    if (this.used + bytes > this.slab.length) {
      this.slab = Buffer.allocUnsafeSlow(this.slabBytes);
      this.used = 0;
    }
    const region = this.slab.subarray(this.used, this.used + bytes);
    this.used += bytes;
    return region;
  }
}

/** Joins records that lie back to back in one slab into single views (the batch goes out as few buffers). */
export function coalesceAdjacent(records: readonly Buffer[]): Buffer[] {
  const out: Buffer[] = [];
  for (const record of records) {
    const last = out[out.length - 1];
    if (last !== undefined && last.buffer === record.buffer && last.byteOffset + last.length === record.byteOffset) {
      out[out.length - 1] = Buffer.from(last.buffer, last.byteOffset, last.length + record.length);
    } else {
      out.push(record);
    }
  }
  return out;
}
