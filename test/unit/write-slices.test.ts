import { describe, expect, it } from 'vitest';
import { dropWrittenPrefix, firstWriteSlice, iovecsPerWriteMax, totalBytes } from '../../shared/write-slices.ts';

const bytes = (n: number, fill: number) => Buffer.alloc(n, fill);

describe('firstWriteSlice', () => {
  it('takes whole buffers while they fit and cuts the one that crosses the cap', () => {
    const buffers = [bytes(300, 1), bytes(500, 2), bytes(400, 3)];
    const slice = firstWriteSlice(buffers, 1000);
    expect(slice.map((b) => b.length)).toEqual([300, 500, 200]);
    expect(slice[2]!.buffer).toBe(buffers[2]!.buffer); // a view, not a copy
    expect(slice[2]!.every((b) => b === 3)).toBe(true);
  });

  it('returns everything when the list is under the cap, skipping empty buffers', () => {
    const slice = firstWriteSlice([bytes(10, 1), bytes(0, 0), bytes(20, 2)], 1 << 20);
    expect(slice.map((b) => b.length)).toEqual([10, 20]);
  });

  it('cuts a single buffer larger than the cap', () => {
    expect(firstWriteSlice([bytes(5000, 1)], 4096).map((b) => b.length)).toEqual([4096]);
  });

  it('never hands writev more than IOV_MAX buffers', () => {
    const buffers = Array.from({ length: iovecsPerWriteMax + 10 }, () => bytes(1, 7));
    expect(firstWriteSlice(buffers, 1 << 20)).toHaveLength(iovecsPerWriteMax);
  });
});

describe('dropWrittenPrefix', () => {
  it('drops whole buffers written and trims the partly written one', () => {
    const buffers = [bytes(100, 1), bytes(100, 2), bytes(100, 3)];
    const rest = dropWrittenPrefix(buffers, 150);
    expect(rest.map((b) => b.length)).toEqual([50, 100]);
    expect(rest[0]![0]).toBe(2);
    expect(totalBytes(rest)).toBe(150);
    expect(dropWrittenPrefix(buffers, 300)).toEqual([]);
  });

  it('walking a list slice by slice writes every byte once, in order', () => {
    const buffers = [bytes(3000, 1), bytes(7000, 2), bytes(1, 3), bytes(4096, 4)];
    const out = Buffer.alloc(totalBytes(buffers));
    let outBytes = 0;
    let pending: readonly Uint8Array[] = buffers;
    while (totalBytes(pending) > 0) {
      // Each write is short: it takes at most the slice's first 1000 bytes.
      const slice = Buffer.concat(firstWriteSlice(pending, 4096));
      const taken = Math.min(1000, slice.length);
      outBytes += slice.copy(out, outBytes, 0, taken);
      pending = dropWrittenPrefix(pending, taken);
    }
    expect(outBytes).toBe(out.length);
    expect(out.equals(Buffer.concat(buffers))).toBe(true);
  });
});
