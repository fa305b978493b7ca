import { randomBytes } from 'node:crypto';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { DirectoryAsd } from '../../backend/asd-directory.ts';
import { ErasureCodec } from '../../backend/erasure-codec.ts';
import { fragmentKey } from '../../backend/fragment-format.ts';
import { ErasureObjectStore } from '../../backend/object-store.ts';
import { checkStripeParity } from '../../backend/parity-check.ts';
import { corruptFragmentSilently, putTestObject, testStripeUnitBytes, type ErasureTestObject } from '../helpers/erasure-test-object.ts';

// verify --deep: units whose bytes and crcs were written wrong together pass every block check; only the
// stripe's parity shows them.
const unit = testStripeUnitBytes;
const name = 'vol-d/sco/00000001';
let object: ErasureTestObject<DirectoryAsd>;
let store: ErasureObjectStore;
let data: Buffer;
let asdOf: (fragment: number) => DirectoryAsd;
let original: Buffer[];

beforeEach(async () => {
  object = await putTestObject({ name, dataBytes: 8 * 4 * unit });
  ({ store, data, asdOf } = object);
  original = await Promise.all(Array.from({ length: 6 }, (_, f) => asdOf(f).get(fragmentKey(name, f))));
});
afterEach(() => object.cleanup());

/** Flips a byte of fragment `f` in stripe `stripe` and rewrites its crc table and header to match. */
async function corruptSilently(f: number, stripe: number, within = 1000): Promise<void> {
  await corruptFragmentSilently(asdOf(f), name, f, [stripe * unit + within]);
}

it('deep verify finds and locates silently bad units that plain verify passes; deep repair rebuilds them byte-identical', async () => {
  await corruptSilently(4, 3); // a parity unit
  await corruptSilently(1, 5); // a data unit
  expect(await store.verifyObject(name)).toMatchObject({ healthy: true }); // block crcs cannot see them
  const deep = await store.verifyObject(name, { deep: true });
  expect(deep).toMatchObject({ healthy: false, readable: true, parityMismatchStripes: [3, 5], unlocatedParityMismatches: [] });
  expect(deep.fragments.map((f) => f.state)).toEqual(['ok', 'corrupt', 'ok', 'ok', 'corrupt', 'ok']);
  expect(deep.fragments[4]!.detail).toMatch(/stripe 3 disagrees with the other units/);
  expect(await store.repairObject(name)).toEqual({ repaired: [] }); // a plain repair sees nothing to do
  expect(await store.repairObject(name, { deep: true })).toEqual({ repaired: [1, 4] });
  for (let f = 0; f < 6; f++) expect((await asdOf(f).get(fragmentKey(name, f))).equals(original[f]!), `fragment ${f}`).toBe(true);
  expect(await store.verifyObject(name, { deep: true })).toMatchObject({ healthy: true, parityMismatchStripes: [] });
  store.clearCache();
  expect((await store.readRange(name, 0, data.length)).equals(data)).toBe(true);
});

it('two bad units in one stripe cannot be located: deep verify reports the stripe, and repair refuses it by name', async () => {
  await corruptSilently(0, 2);
  await corruptSilently(5, 2, 3000);
  const deep = await store.verifyObject(name, { deep: true });
  expect(deep).toMatchObject({ healthy: false, parityMismatchStripes: [2], unlocatedParityMismatches: [2] });
  expect(deep.fragments.every((f) => f.state === 'ok')).toBe(true);
  await expect(store.repairObject(name, { deep: true })).rejects.toThrow(
    /cannot be repaired: stripes 2 have parity that disagrees with their data, and which unit is bad cannot be told/,
  );
});

it('checkStripeParity: consistent stripes pass; one bad unit is located with m = 2, not with m = 1', async () => {
  for (const [k, m] of [
    [4, 2],
    [3, 1],
    [1, 2],
  ] as const) {
    const codec = new ErasureCodec(k, m);
    const unitBytes = 4096;
    const dataUnits = randomBytes(k * unitBytes);
    const parity = Buffer.alloc(m * unitBytes);
    await codec.encodeStripe(dataUnits, 0, parity, 0, unitBytes);
    const units = [...Array.from({ length: k }, (_, i) => dataUnits.subarray(i * unitBytes, (i + 1) * unitBytes)), ...Array.from({ length: m }, (_, j) => parity.subarray(j * unitBytes, (j + 1) * unitBytes))];
    expect(await checkStripeParity(codec, units, unitBytes), `${k}+${m}`).toEqual({ consistent: true });
    const bad = units.map((u) => Buffer.from(u));
    bad[k - 1]![17]! ^= 1;
    expect(await checkStripeParity(codec, bad, unitBytes), `${k}+${m}`).toEqual(m >= 2 ? { consistent: false, badUnit: k - 1 } : { consistent: false });
  }
});
