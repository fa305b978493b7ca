import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ErasureCodec } from '../../backend/erasure-codec.ts';

/** Every subset of `size` indices out of n (n is small). */
function subsets(n: number, size: number): number[][] {
  const out: number[][] = [];
  const walk = (start: number, acc: number[]) => {
    if (acc.length === size) return void out.push([...acc]);
    for (let i = start; i < n; i++) walk(i + 1, [...acc, i]);
  };
  walk(0, []);
  return out;
}

async function encodedStripe(codec: ErasureCodec, unitBytes: number): Promise<Buffer[]> {
  const data = randomBytes(codec.k * unitBytes);
  const parity = Buffer.alloc(codec.m * unitBytes);
  await codec.encodeStripe(data, 0, parity, 0, unitBytes);
  return [
    ...Array.from({ length: codec.k }, (_, i) => data.subarray(i * unitBytes, (i + 1) * unitBytes)),
    ...Array.from({ length: codec.m }, (_, j) => parity.subarray(j * unitBytes, (j + 1) * unitBytes)),
  ];
}

describe('ErasureCodec', () => {
  for (const [k, m] of [
    [1, 2],
    [2, 1],
    [3, 2],
    [4, 2],
    [6, 3],
    [8, 3],
  ] as const) {
    it(`${k}+${m}: any ${k} of ${k + m} units rebuild all the others`, async () => {
      const codec = new ErasureCodec(k, m);
      const unitBytes = 4096;
      const units = await encodedStripe(codec, unitBytes);
      for (const keep of subsets(k + m, k)) {
        const partial = units.map((u, i) => (keep.includes(i) ? Buffer.from(u) : undefined));
        const rebuilt = await codec.reconstructStripe(partial, unitBytes);
        rebuilt.forEach((u, i) => expect(u.equals(units[i]!), `${k}+${m} keep ${keep} unit ${i}`).toBe(true));
      }
    });
  }

  it('k = 1 is replication: parity units are copies of the data', async () => {
    const codec = new ErasureCodec(1, 3);
    const units = await encodedStripe(codec, 8192);
    for (const u of units) expect(u.equals(units[0]!)).toBe(true);
  });

  it('parity differs from data for k > 1 (it is not a copy)', async () => {
    const units = await encodedStripe(new ErasureCodec(4, 2), 4096);
    expect(units[4]!.equals(units[0]!)).toBe(false);
  });

  it('fails clearly with fewer than k units', async () => {
    const codec = new ErasureCodec(4, 2);
    const units = await encodedStripe(codec, 4096);
    const partial = units.map((u, i) => (i < 3 ? u : undefined));
    await expect(codec.reconstructStripe(partial, 4096)).rejects.toMatchObject({ code: 'IO', message: /only 3 of 6/ });
  });

  it('decoding with a different unit size than encoding gives different bytes (why units are fixed per object)', async () => {
    const codec = new ErasureCodec(4, 2);
    const data = randomBytes(4 * 65536);
    const whole = Buffer.alloc(2 * 65536);
    await codec.encodeStripe(data, 0, whole, 0, 65536);
    // The first 4 KiB of each unit as its own stripe: library sub-packets differ, so the second parity
    // unit differs (the first is a plain XOR in this library, which is position-independent).
    const small = Buffer.concat(Array.from({ length: 4 }, (_, i) => data.subarray(i * 65536, i * 65536 + 4096)));
    const smallParity = Buffer.alloc(2 * 4096);
    await codec.encodeStripe(small, 0, smallParity, 0, 4096);
    expect(smallParity.subarray(4096, 8192).equals(whole.subarray(65536, 65536 + 4096))).toBe(false);
  });
});
