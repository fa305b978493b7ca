import { afterEach, beforeEach, expect, it } from 'vitest';
import { DirectoryAsd } from '../../backend/asd-directory.ts';
import { decodeFragmentHeader, fragmentKey, fragmentLayout } from '../../backend/fragment-format.ts';
import { ErasureObjectStore } from '../../backend/object-store.ts';
import { describeStripes, planStripeRepair } from '../../backend/stripe-repair-plan.ts';
import { putTestObject, testStripeUnitBytes, type ErasureTestObject } from '../helpers/erasure-test-object.ts';

// Damage spread over more than m fragments, but never more than m units in one stripe: readable stripe by
// stripe, so repairable stripe by stripe.
const unit = testStripeUnitBytes;
const stripes = 8;
const name = 'vol-r/sco/00000001';
let object: ErasureTestObject<DirectoryAsd>;
let store: ErasureObjectStore;
let data: Buffer;
let asdOf: (fragment: number) => DirectoryAsd;
let original: Buffer[];

beforeEach(async () => {
  object = await putTestObject({ name, dataBytes: stripes * 4 * unit, store: { retryBackoffBaseMs: 5 } });
  ({ store, data, asdOf } = object);
  original = await Promise.all(Array.from({ length: 6 }, (_, f) => asdOf(f).get(fragmentKey(name, f))));
});
afterEach(() => object.cleanup());

/** Flips a byte of fragment `f`'s body in stripe `stripe`, crc table untouched: the block fails its crc. */
async function flip(f: number, stripe: number, within = 4096 + 7): Promise<void> {
  const key = fragmentKey(name, f);
  const buf = Buffer.from(await asdOf(f).get(key));
  buf[fragmentLayout(decodeFragmentHeader(buf)).bodyOffset + stripe * unit + within]! ^= 0x5a;
  await asdOf(f).put(key, [buf]);
}

const fragments = () => Promise.all(Array.from({ length: 6 }, (_, f) => asdOf(f).get(fragmentKey(name, f)).catch(() => undefined)));

it('bad blocks in 5 of 6 fragments, at most 2 per stripe: repair rebuilds each stripe and the fragments come back byte-identical', async () => {
  await flip(0, 1);
  await flip(1, 3);
  await flip(2, 5);
  await flip(3, 6);
  await flip(4, 6, 100); // two bad units in stripe 6: still k good ones
  let verification = await store.verifyObject(name);
  expect(verification.fragments.map((f) => f.state)).toEqual(['corrupt', 'corrupt', 'corrupt', 'corrupt', 'corrupt', 'ok']);
  expect(verification).toMatchObject({ healthy: false, readable: true, unrecoverableStripes: [] });
  expect(await store.repairObject(name)).toEqual({ repaired: [0, 1, 2, 3, 4] });
  verification = await store.verifyObject(name);
  expect(verification).toMatchObject({ healthy: true, readable: true, healthyFragments: 6 });
  const after = await fragments();
  for (let f = 0; f < 6; f++) expect(after[f]!.equals(original[f]!), `fragment ${f}`).toBe(true);
  store.clearCache();
  expect((await store.readRange(name, 0, data.length)).equals(data)).toBe(true);
});

it('a stripe with more than m bad units is refused by name; the other stripes are still repaired, and lost bytes never get a fresh crc', async () => {
  await asdOf(5).delete(fragmentKey(name, 5)); // missing: damaged in every stripe
  await flip(0, 2);
  await flip(1, 2); // stripe 2: fragments 0, 1, 5 bad, only 3 good units
  await flip(3, 4);
  const verification = await store.verifyObject(name);
  expect(verification).toMatchObject({ readable: false, unrecoverableStripes: [2] });
  await expect(store.repairObject(name)).rejects.toMatchObject({
    code: 'IO',
    message: expect.stringMatching(
      /repaired only in part \(fragments 3, 5 rewritten\): 1 of 8 stripes have fewer than k=4 good units: stripes 2 \(stripe 2: fragments 0, 1, 5 missing or bad\)/,
    ),
    details: expect.objectContaining({ unrecoverableStripes: [2], repaired: [3, 5] }),
  });
  const after = await store.verifyObject(name);
  // Fragment 3 is whole again; fragment 5 is back but its stripe-2 blocks fail their crcs (bytes unknown).
  expect(after.fragments.map((f) => f.state)).toEqual(['corrupt', 'corrupt', 'ok', 'ok', 'ok', 'corrupt']);
  expect(after.fragments[5]!.detail).toMatch(/block 32 \(16 bad blocks\)/); // stripe 2 = body blocks 32-47
  expect(after.unrecoverableStripes).toEqual([2]);
  const now = await fragments();
  expect(now[3]!.equals(original[3]!)).toBe(true);
  store.clearCache();
  // Every stripe but 2 reads right, even with two fragments still bad in it.
  for (let s = 0; s < stripes; s++) {
    if (s === 2) continue;
    expect((await store.readRange(name, s * 4 * unit, 4 * unit)).equals(data.subarray(s * 4 * unit, (s + 1) * 4 * unit)), `stripe ${s}`).toBe(true);
  }
  await expect(store.readRange(name, 2 * 4 * unit + 4096, 4096)).rejects.toMatchObject({ code: 'IO' }); // the bad block of fragment 0
});

it('planStripeRepair judges each stripe by its own units; describeStripes keeps long lists short', () => {
  const g = { k: 2, m: 1, stripeUnitBytes: 8192, stripeCount: 4 };
  const plan = planStripeRepair(g, [
    { usable: true, badBlocks: [1] }, // stripe 0
    { usable: true, badBlocks: [2, 6] }, // stripes 1, 3
    { usable: false, badBlocks: [] }, // missing
  ]);
  expect(plan.damagedStripes).toEqual([
    { stripe: 0, good: [1], damaged: [0, 2] },
    { stripe: 1, good: [0], damaged: [1, 2] },
    { stripe: 2, good: [0, 1], damaged: [2] },
    { stripe: 3, good: [0], damaged: [1, 2] },
  ]);
  expect(plan.unrecoverable).toEqual([0, 1, 3]);
  expect(describeStripes([0, 1, 3, 5, 6, 7])).toBe('0-1, 3, 5-7');
  expect(describeStripes([1, 3, 5], 2)).toBe('1, 3, … (3 stripes)');
});
