import { afterEach, beforeEach, expect, it } from 'vitest';
import { DirectoryAsd } from '../../backend/asd-directory.ts';
import type { Asd } from '../../backend/asd.ts';
import { fragmentKey } from '../../backend/fragment-format.ts';
import { kSubsets } from '../../backend/k-subsets.ts';
import { ErasureObjectStore, type ReadRangeOptions } from '../../backend/object-store.ts';
import { firstBadCluster } from '../../router/sco-format.ts';
import { crc32c } from '../../shared/checksum.ts';
import { corruptFragmentSilently, putTestObject, testStripeUnitBytes, type ErasureTestObject } from '../helpers/erasure-test-object.ts';

// Silently bad fragments: bytes rewritten together with their block crc table (a writer that corrupted a
// buffer before computing its crcs: the parity of an upload, any fragment of a transformed object), so only
// the caller's own check (the router's cluster crcs from ingest) sees them. With two such fragments in a
// 4+2 stripe, the one decode that skips both still gives the right bytes.
const unit = testStripeUnitBytes;
const name = 'vol-s/sco/00000001';
let object: ErasureTestObject<DirectoryAsd>;
let store: ErasureObjectStore;
let data: Buffer;
let asdOf: (fragment: number) => Asd;
/** What the router passes: each 4 KiB cluster's crc32c, taken at ingest. */
let routerCheck: (offset: number) => ReadRangeOptions;

beforeEach(async () => {
  object = await putTestObject({ name, dataBytes: 2 * 1024 * 1024 });
  ({ store, data, asdOf } = object);
  const table = Uint32Array.from({ length: data.length / 4096 }, (_, c) => crc32c(data.subarray(c * 4096, (c + 1) * 4096)));
  routerCheck = (offset) => ({
    verify: (got) => firstBadCluster(got, table, offset / 4096) < 0,
    verifyPart: (got, at) => firstBadCluster(got, table, at / 4096) < 0,
  });
});
afterEach(() => object.cleanup());

/** Flips bytes at `bodyOffsets` of fragment `index` and rewrites its crc table and header to match. */
async function corruptSilently(index: number, ...bodyOffsets: number[]): Promise<void> {
  await corruptFragmentSilently(asdOf(index), name, index, bodyOffsets);
}

const checksumErrors = (fragment: number) => store.asdStats().find((c) => c.asdId === asdOf(fragment).id)!.checksumErrors;
const stripe = 2;
const storedOffset = (unitIndex: number, within: number) => (stripe * 4 + unitIndex) * unit + within;

it('two silently bad fragments of a 4+2 stripe: the read tries other fragment sets and returns the right bytes', async () => {
  await corruptSilently(1, stripe * unit + 4096 + 10); // data unit 1, its second block
  await corruptSilently(4, stripe * unit + 4096 + 20); // parity unit 0, same block
  store.clearCache();
  const offset = storedOffset(1, 4096);
  // Without the caller's check the bad bytes would be served: only it can see them.
  expect((await store.readRange(name, offset, 4096)).equals(data.subarray(offset, offset + 4096))).toBe(false);
  const got = await store.readRange(name, offset, 4096, routerCheck(offset));
  expect(got.equals(data.subarray(offset, offset + 4096))).toBe(true);
  expect(store.stats().subsetDecodes).toBeGreaterThan(0);
  expect(checksumErrors(1)).toBeGreaterThan(0); // its direct bytes differ from the accepted decode
  expect(checksumErrors(4)).toBeGreaterThan(0); // its unit differs from the accepted decode
  // A range over several units of the stripe: each piece finds its own good fragment set (or its own bytes).
  const wide = storedOffset(0, 0);
  const all = await store.readRange(name, wide, 4 * unit, routerCheck(wide));
  expect(all.equals(data.subarray(wide, wide + 4 * unit))).toBe(true);
});

it('a lost fragment and a silently bad parity fragment: the decode that skips the parity is found', async () => {
  await asdOf(0).delete(fragmentKey(name, 0));
  await corruptSilently(4, stripe * unit + 100); // the first parity unit: in the decode without fragment 0
  store.clearCache();
  const offset = storedOffset(0, 0);
  const got = await store.readRange(name, offset, 8192, routerCheck(offset));
  expect(got.equals(data.subarray(offset, offset + 8192))).toBe(true);
  expect(checksumErrors(4)).toBeGreaterThan(0);
});

it('a caller check that passes nothing still fails the read clearly, after a bounded search', async () => {
  // Three silently bad, each all over its unit: more than m, nothing to recover. (The codec works on
  // sub-packets of a unit, so a single bad byte spoils only some packets of a decode: a few bytes of
  // damage can leave a range recoverable from sets that hold a bad fragment.)
  const everywhere = () => Array.from({ length: unit / 64 }, () => stripe * unit + Math.floor(Math.random() * unit));
  await corruptSilently(1, ...everywhere());
  await corruptSilently(2, ...everywhere());
  await corruptSilently(3, ...everywhere());
  store.clearCache();
  const offset = storedOffset(1, 0);
  await expect(store.readRange(name, offset, 4096, routerCheck(offset))).rejects.toMatchObject({ code: 'CHECKSUM_MISMATCH' });
  expect(store.stats().subsetDecodes).toBe(5); // C(5, 4) sets without fragment 1
});

it('kSubsets lists every k-subset once, in order', () => {
  expect([...kSubsets([1, 2, 3, 4], 2)]).toEqual([
    [1, 2],
    [1, 3],
    [1, 4],
    [2, 3],
    [2, 4],
    [3, 4],
  ]);
  expect([...kSubsets([0, 1, 2, 3, 4], 4)]).toHaveLength(5);
  expect([...kSubsets([1, 2], 3)]).toEqual([]);
  expect([...kSubsets([1, 2], 0)]).toEqual([[]]);
});
