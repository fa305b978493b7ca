import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  computeBlockCrcTable,
  decodeChunkIndex,
  decodeFragmentHeader,
  encodeChunkIndex,
  encodeFragmentHeader,
  firstBadBlock,
  fragmentHeaderBytes,
  fragmentLayout,
  fragmentRuns,
  mapStoredRange,
  objectNameHash,
  storedBlockOfDataBlock,
  stripeGeometry,
  type FragmentHeader,
} from '../../backend/fragment-format.ts';

function header(overrides: Partial<FragmentHeader> = {}): FragmentHeader {
  return {
    k: 4,
    m: 2,
    flags: 0,
    nameHash: objectNameHash('vol/sco/1'),
    objectSizeBytes: 16 * 1024 * 1024,
    storedSizeBytes: 16 * 1024 * 1024,
    stripeUnitBytes: 65536,
    stripeCount: 64,
    chunkSizeBytes: 0,
    chunkCount: 0,
    putId: randomBytes(8),
    fragmentIndex: 5,
    tablesCrc: 0x1234_5678,
    ...overrides,
  };
}

describe('fragment header', () => {
  it('round-trips', () => {
    const h = header();
    const buf = encodeFragmentHeader(h);
    expect(buf.length).toBe(fragmentHeaderBytes);
    expect(decodeFragmentHeader(buf, h.nameHash)).toEqual(h);
  });

  it('detects every single flipped byte', () => {
    const buf = encodeFragmentHeader(header());
    for (let i = 0; i < buf.length; i++) {
      const bad = Buffer.from(buf);
      bad[i]! ^= 0x01;
      expect(() => decodeFragmentHeader(bad), `byte ${i}`).toThrow(expect.objectContaining({ code: 'CORRUPT' }));
    }
  });

  it('rejects a header of another object, a short buffer, inconsistent geometry', () => {
    const h = header();
    expect(() => decodeFragmentHeader(encodeFragmentHeader(h), objectNameHash('other'))).toThrow(/another object/);
    expect(() => decodeFragmentHeader(encodeFragmentHeader(h).subarray(0, 40))).toThrow(/short/);
    expect(() => decodeFragmentHeader(encodeFragmentHeader(header({ fragmentIndex: 6 })))).toThrow(/outside/);
    expect(() => decodeFragmentHeader(encodeFragmentHeader(header({ storedSizeBytes: 1e9, objectSizeBytes: 1e9 })))).toThrow(/exceeds/);
  });

  it('layout puts header, table, index, body back to back', () => {
    const l = fragmentLayout(header({ flags: 1, chunkSizeBytes: 65536, chunkCount: 256, storedSizeBytes: 1e6 }));
    expect(l.bodyBytes).toBe(64 * 65536);
    expect(l.tableBytes).toBe((l.bodyBytes / 4096) * 4);
    expect(l.indexOffset).toBe(fragmentHeaderBytes + l.tableBytes);
    expect(l.bodyOffset).toBe(l.indexOffset + 256 * 8);
    expect(l.totalBytes).toBe(l.bodyOffset + l.bodyBytes);
  });
});

describe('block crc table', () => {
  it('finds the corrupted block of a ranged read', () => {
    const body = [randomBytes(65536), randomBytes(65536)];
    const table = computeBlockCrcTable(body);
    expect(table.length).toBe(32 * 4);
    const window = Buffer.from(body[1]!.subarray(8192, 16384)); // body blocks 18, 19
    expect(firstBadBlock(table, 65536 + 8192, window)).toBe(-1);
    window[5000]! ^= 0xff;
    expect(firstBadBlock(table, 65536 + 8192, window)).toBe(19);
  });
});

describe('stored block of a data fragment block', () => {
  it('follows the striping over several stripes, so known crcs of the stored blocks fill the data tables', () => {
    const k = 3;
    const stripeUnitBytes = 8192;
    const stored = randomBytes(k * stripeUnitBytes * 4); // 4 stripes of 2-block units
    const storedCrcs = computeBlockCrcTable([stored]);
    for (let fragment = 0; fragment < k; fragment++) {
      const body: Buffer[] = [];
      for (let s = 0; s < 4; s++) body.push(stored.subarray((s * k + fragment) * stripeUnitBytes, (s * k + fragment + 1) * stripeUnitBytes));
      const table = computeBlockCrcTable(body);
      for (let block = 0; block < 8; block++) {
        const storedBlock = storedBlockOfDataBlock({ k, stripeUnitBytes }, fragment, block);
        expect(table.readUInt32LE(block * 4), `fragment ${fragment} block ${block}`).toBe(storedCrcs.readUInt32LE(storedBlock * 4));
      }
    }
    expect(storedBlockOfDataBlock({ k, stripeUnitBytes }, 1, 3)).toBe(9); // stripe 1, unit 1, its second block
  });
});

describe('chunk index', () => {
  it('round-trips and checks the stored lengths add up', () => {
    const entries = [
      { storedLength: 100, compressed: true, plainCrc: 1 },
      { storedLength: 65536, compressed: false, plainCrc: 0xffff_ffff },
      { storedLength: 7, compressed: true, plainCrc: 3 },
    ];
    const g = { ...header(), chunkCount: 3, storedSizeBytes: 100 + 65536 + 7 };
    const index = decodeChunkIndex(encodeChunkIndex(entries), g);
    expect([...index.storedOffsets]).toEqual([0, 100, 65636, 65643]);
    expect([...index.compressed]).toEqual([1, 0, 1]);
    expect([...index.plainCrcs]).toEqual([1, 0xffff_ffff, 3]);
    expect(() => decodeChunkIndex(encodeChunkIndex(entries), { ...g, storedSizeBytes: 5 })).toThrow(/add up/);
  });
});

describe('striping', () => {
  const g = { k: 4, stripeUnitBytes: 65536 };
  it('maps a 4 KiB read to one data fragment at the striped offset', () => {
    // stored offset 5*256 KiB + 2*64 KiB + 4096 -> stripe 5, unit 2, body 5*64 KiB + 4096
    expect(mapStoredRange(g, 5 * 262144 + 2 * 65536 + 4096, 4096)).toEqual([
      { fragmentIndex: 2, bodyOffset: 5 * 65536 + 4096, length: 4096, storedOffset: 5 * 262144 + 2 * 65536 + 4096 },
    ]);
  });
  it('splits a read across a unit boundary into two fragments', () => {
    const pieces = mapStoredRange(g, 65536 - 2048, 4096);
    expect(pieces.map((p) => [p.fragmentIndex, p.bodyOffset, p.length])).toEqual([
      [0, 65536 - 2048, 2048],
      [1, 0, 2048],
    ]);
  });
  it('k = 1 keeps a long range in one run', () => {
    expect(mapStoredRange({ k: 1, stripeUnitBytes: 4096 }, 1000, 100_000)).toHaveLength(1);
  });
  it('a range over many stripes costs one read per data fragment, each serving its units in order', () => {
    const pieces = mapStoredRange(g, 0, 1 << 20); // 4 stripes of 4 units
    expect(pieces).toHaveLength(16);
    const runs = fragmentRuns(pieces, 4 << 20);
    expect(runs.map((r) => [r.fragmentIndex, r.bodyOffset, r.length])).toEqual([
      [0, 0, 262144],
      [1, 0, 262144],
      [2, 0, 262144],
      [3, 0, 262144],
    ]);
    for (const run of runs) {
      // Every piece of the run lies where the run says, back to back.
      let at = run.bodyOffset;
      for (const index of run.pieceIndexes) {
        expect(pieces[index]!.fragmentIndex).toBe(run.fragmentIndex);
        expect(pieces[index]!.bodyOffset).toBe(at);
        at += pieces[index]!.length;
      }
      expect(at).toBe(run.bodyOffset + run.length);
    }
    expect(runs.flatMap((r) => r.pieceIndexes).sort((a, b) => a - b)).toEqual(pieces.map((_, i) => i));
  });
  it('an unaligned range starts and ends with partial units; runs stop at readBytesMax', () => {
    const pieces = mapStoredRange(g, 65536 - 4096, 2 * 262144);
    const runs = fragmentRuns(pieces, 4 << 20);
    // Fragment 0 holds the tail of stripe 0's unit, stripe 1's and the head of stripe 2's: back to back.
    expect(runs.map((r) => [r.fragmentIndex, r.bodyOffset, r.length])).toEqual([
      [0, 65536 - 4096, 4096 + 65536 + 61440],
      [1, 0, 2 * 65536],
      [2, 0, 2 * 65536],
      [3, 0, 2 * 65536],
    ]);
    const capped = fragmentRuns(mapStoredRange(g, 0, 1 << 20), 65536 * 2);
    expect(capped).toHaveLength(8); // two units per read at most
    expect(fragmentRuns(mapStoredRange({ k: 1, stripeUnitBytes: 4096 }, 0, 1 << 20), 65536)).toHaveLength(1); // one piece: one read
  });
  it('shrinks the stripe unit for small objects', () => {
    expect(stripeGeometry(10_000, 4, 65536)).toEqual({ stripeUnitBytes: 4096, stripeCount: 1 });
    expect(stripeGeometry(64 << 20, 4, 65536)).toEqual({ stripeUnitBytes: 65536, stripeCount: 256 });
    expect(stripeGeometry(0, 4, 65536)).toEqual({ stripeUnitBytes: 4096, stripeCount: 1 });
  });
});
