import { describe, expect, it } from 'vitest';
import { checkPreset, defaultPreset, parsePreset } from '../../backend/preset.ts';

const key = 'ab'.repeat(32);

describe('parsePreset', () => {
  it('fills defaults', () => {
    expect(parsePreset({}, {})).toEqual(defaultPreset);
  });

  it('takes the encryption key from config or KEEL_BACKEND_KEY', () => {
    expect(parsePreset({ encryption: 'aes-256-gcm', encryptionKeyHex: key }, {}).encryptionKey).toEqual(Buffer.from(key, 'hex'));
    expect(parsePreset({ encryption: 'aes-256-gcm' }, { KEEL_BACKEND_KEY: key }).encryptionKey?.length).toBe(32);
  });

  const bad: [string, unknown, RegExp][] = [
    ['not an object', 'x', /must be an object/],
    ['k = 0', { k: 0 }, /k must be an integer in \[1, 24\]/],
    ['k too large', { k: 25 }, /k must be/],
    ['m negative', { m: -1 }, /m must be/],
    ['m too large', { m: 7 }, /m must be/],
    ['k not an integer', { k: 2.5 }, /k must be an integer/],
    ['chunk size not a power of two', { chunkSizeBytes: 5000 }, /chunkSizeBytes must be a power of two/],
    ['chunk size too small', { chunkSizeBytes: 1024 }, /chunkSizeBytes/],
    ['stripe unit too large', { stripeUnitBytes: 4 << 20 }, /stripeUnitBytes/],
    ['unknown compression', { compression: 'zstd' }, /compression must be one of none, lz4/],
    ['unknown checksum', { checksum: 'md5' }, /checksum must be one of crc32c/],
    ['unknown field', { kk: 1 }, /unknown field 'kk'/],
    ['encryption without key', { encryption: 'aes-256-gcm' }, /needs a key/],
    ['short key', { encryption: 'aes-256-gcm', encryptionKeyHex: 'abcd' }, /64 hex digits/],
    ['key without encryption', { encryptionKeyHex: key }, /encryption is none/],
  ];
  for (const [what, input, message] of bad) {
    it(`rejects ${what} with BAD_CONFIG`, () => {
      expect(() => parsePreset(input, {})).toThrow(expect.objectContaining({ code: 'BAD_CONFIG', message: expect.stringMatching(message) }));
    });
  }
});

describe('checkPreset', () => {
  it('rejects k+m larger than the number of ASDs', () => {
    expect(() => checkPreset({ ...defaultPreset, k: 4, m: 2 }, 5)).toThrow(
      expect.objectContaining({ code: 'BAD_CONFIG', message: expect.stringMatching(/k\+m = 6 .* only 5/) }),
    );
    expect(() => checkPreset({ ...defaultPreset, k: 4, m: 2 }, 6)).not.toThrow();
  });
});
