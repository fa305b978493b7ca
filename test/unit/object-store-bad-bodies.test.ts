import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FaultyAsd } from '../../backend/asd.ts';
import { fragmentKey } from '../../backend/fragment-format.ts';
import { ErasureObjectStore } from '../../backend/object-store.ts';
import { putTestObject, testStripeUnitBytes, type ErasureTestObject } from '../helpers/erasure-test-object.ts';

// A transient bad GET body (truncated by a proxy, a byte flipped in transit) on a survivor of a stripe that
// already lost m fragments: the stripe is still readable, so the read must not fail.
const unit = testStripeUnitBytes;
const name = 'vol-t/sco/00000001';
let object: ErasureTestObject<FaultyAsd>;
let store: ErasureObjectStore;
let data: Buffer;
let asdOf: (fragment: number) => FaultyAsd;

beforeEach(async () => {
  object = await putTestObject({ name, dataBytes: 2 * 1024 * 1024, wrap: (asd) => new FaultyAsd(asd), store: { retriesMax: 2, retryBackoffBaseMs: 5 } });
  ({ store, data, asdOf } = object);
  // m = 2 fragments lost: every stripe has exactly k = 4 survivors left.
  await asdOf(0).delete(fragmentKey(name, 0));
  await asdOf(2).delete(fragmentKey(name, 2));
  expect((await store.readRange(name, 0, data.length)).equals(data)).toBe(true); // loads the survivors' crc tables
});
afterEach(() => object.cleanup());

const inFragment1 = 2 * 4 * unit + unit + 4096; // stripe 2, unit 1: a survivor
const inFragment0 = 3 * 4 * unit + 8192; // stripe 3, unit 0: lost, decoded from 1, 3, 4, 5
const expected = (offset: number) => data.subarray(offset, offset + 4096);

describe('with m fragments lost, a survivor serving one bad body is re-read, not turned into an EIO', () => {
  it('a truncated body of the range\'s own fragment (with and without the caller\'s check)', async () => {
    const before = store.stats();
    asdOf(1).setFaults({ truncateNextReads: 1 });
    expect((await store.readRange(name, inFragment1, 4096)).equals(expected(inFragment1))).toBe(true);
    asdOf(1).setFaults({ truncateNextReads: 1 });
    const got = await store.readRange(name, inFragment1, 4096, { verify: (buf) => buf.equals(expected(inFragment1)) });
    expect(got.equals(expected(inFragment1))).toBe(true);
    expect(store.stats().readRetries).toBe(before.readRetries + 2);
    expect(store.stats().badBodyRereads).toBe(before.badBodyRereads + 2);
    expect(store.asdStats().find((c) => c.asdId === asdOf(1).id)!.readErrors).toBe(2);
  });

  it('a truncated body of a survivor feeding the decode of a lost fragment', async () => {
    asdOf(3).setFaults({ truncateNextReads: 1 });
    expect((await store.readRange(name, inFragment0, 4096)).equals(expected(inFragment0))).toBe(true);
  });

  it('a body failing its block crc once, on the range\'s own fragment and on a survivor of a decode', async () => {
    const crcErrors = (f: number) => store.asdStats().find((c) => c.asdId === asdOf(f).id)!.checksumErrors;
    asdOf(1).setFaults({ corruptNextReads: 1 });
    expect((await store.readRange(name, inFragment1, 4096)).equals(expected(inFragment1))).toBe(true);
    expect(crcErrors(1)).toBe(1);
    asdOf(4).setFaults({ corruptNextReads: 1 });
    expect((await store.readRange(name, inFragment0, 4096)).equals(expected(inFragment0))).toBe(true);
    expect(crcErrors(4)).toBe(1);
  });

  it('bytes that keep failing their crc are re-read once only, then the read fails clearly', async () => {
    asdOf(3).setFaults({ corruptReads: true });
    const callsBefore = asdOf(3).calls.getRange;
    await expect(store.readRange(name, inFragment0, 4096)).rejects.toMatchObject({
      code: 'IO',
      message: expect.stringMatching(/stripe 3 cannot be read: more than m=2 .*checksum mismatch/),
    });
    expect(asdOf(3).calls.getRange - callsBefore).toBe(2); // the first read and one re-read (backendBadBlockRereadsMax)
  });
});
