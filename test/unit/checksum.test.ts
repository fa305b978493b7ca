import { randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import { crc32c as nodeRsCrc32c } from '@node-rs/crc32';
import { describe, expect, it } from 'vitest';
import { crc32c, crc32cAppender } from '../../shared/checksum.ts';

const sse4 = createRequire(import.meta.url)('sse4_crc32') as { sse42_crc(data: Uint8Array, initial?: number): number };

describe('crc32c', () => {
  it('matches the CRC-32C check value and continues across pieces', () => {
    expect(crc32c(Buffer.from('123456789'))).toBe(0xe3069283);
    expect(crc32c(Buffer.alloc(0))).toBe(0);
    const data = randomBytes(10_000);
    expect(crc32c(data.subarray(3000), crc32c(data.subarray(0, 3000)))).toBe(crc32c(data));
    // Short pieces and long ones go to different libraries; a crc continued across them must not notice.
    expect(crc32c(data.subarray(40), crc32c(data.subarray(0, 40)))).toBe(crc32c(data));
    expect(crc32c(data.subarray(9990), crc32c(data.subarray(0, 9990)))).toBe(crc32c(data));
  });

  it('agrees with both native libraries on views at any offset and length, short and long', () => {
    const data = randomBytes(200_000);
    for (let i = 0; i < 600; i++) {
      const offset = (i * 7919) % 5000;
      const length = i % 2 === 0 ? (i * 104_729) % 150_000 : (i * 37) % 3000;
      const view = data.subarray(offset, offset + length);
      const initial = i % 4 < 2 ? 0 : (i * 2_654_435_761) >>> 0;
      expect(crc32c(view, initial)).toBe(nodeRsCrc32c(view, initial) >>> 0);
      expect(crc32c(view, initial)).toBe(sse4.sse42_crc(view, initial) >>> 0);
    }
  });

  it('combines the crcs of pieces of one length into the crc of the whole', () => {
    const data = randomBytes(4096 * 64 + 100);
    const append4k = crc32cAppender(4096);
    let folded = crc32c(data.subarray(0, 4096));
    for (let at = 4096; at + 4096 <= data.length; at += 4096) {
      folded = append4k(folded, crc32c(data.subarray(at, at + 4096)));
      expect(folded).toBe(crc32c(data.subarray(0, at + 4096)));
    }
    for (const pieceBytes of [1, 7, 16, 1000, 65_536]) {
      const append = crc32cAppender(pieceBytes);
      for (const headBytes of [0, 1, 13, 4096]) {
        const whole = data.subarray(0, headBytes + pieceBytes);
        expect(append(crc32c(whole.subarray(0, headBytes)), crc32c(whole.subarray(headBytes)))).toBe(crc32c(whole));
      }
    }
  });
});
