import { randomBytes } from 'node:crypto';
import { crc32c as nodeRsCrc32c } from '@node-rs/crc32';
import { describe, expect, it } from 'vitest';
import { crc32c } from '../../shared/checksum.ts';

describe('crc32c', () => {
  it('matches the CRC-32C check value and continues across pieces', () => {
    expect(crc32c(Buffer.from('123456789'))).toBe(0xe3069283);
    expect(crc32c(Buffer.alloc(0))).toBe(0);
    const data = randomBytes(10_000);
    expect(crc32c(data.subarray(3000), crc32c(data.subarray(0, 3000)))).toBe(crc32c(data));
  });

  it('agrees with @node-rs/crc32 on views at any offset and length', () => {
    const data = randomBytes(200_000);
    for (let i = 0; i < 300; i++) {
      const offset = (i * 7919) % 5000;
      const length = (i * 104_729) % 150_000;
      const view = data.subarray(offset, offset + length);
      const initial = i % 2 === 0 ? 0 : (i * 2_654_435_761) >>> 0;
      expect(crc32c(view, initial)).toBe(nodeRsCrc32c(view, initial) >>> 0);
    }
  });
});
