/**
 * The erasure-coded backend's behaviour suite, run against real ASDs (s3rver buckets or local
 * directories): partial reads, degraded reads, corruption, repair, too many failures, transforms, k = 1.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Asd } from '../../backend/asd.ts';
import { FaultyAsd } from '../../backend/asd.ts';
import {
  computeBlockCrcTable,
  decodeFragmentHeader,
  encodeFragmentHeader,
  fragmentKey,
  fragmentLayout,
  tablesCrc,
} from '../../backend/fragment-format.ts';
import { ErasureObjectStore } from '../../backend/object-store.ts';
import { Placement } from '../../backend/placement.ts';
import { parsePreset, type Preset } from '../../backend/preset.ts';
import { crc32c } from '../../shared/checksum.ts';

export interface AsdFixture {
  asds: Asd[];
  cleanup(): Promise<void>;
}

const MiB = 1024 * 1024;
const objectBytes = 16 * MiB;
const keyHex = '5a'.repeat(32);

function bytesRead(store: ErasureObjectStore): number {
  return store.asdStats().reduce((sum, c) => sum + c.bytesRead, 0);
}

function requests(store: ErasureObjectStore): number {
  return store.asdStats().reduce((sum, c) => sum + c.requests, 0);
}

/** Data that lz4 compresses well (~6:1) but not trivially. */
function compressibleData(size: number): Buffer {
  const out = Buffer.alloc(size);
  const words = Array.from({ length: 64 }, () => randomBytes(16));
  for (let off = 0; off < size; off += 16) words[(off * 7919) % 61]!.copy(out, off);
  for (let off = 0; off < size; off += 64) out[off] = Math.floor(Math.random() * 256);
  return out;
}

function sampleRanges(size: number): [number, number][] {
  const ranges: [number, number][] = [
    [0, 4096],
    [size - 4096, 4096],
    [0, size],
    [65536 - 100, 200], // crosses a stripe-unit boundary: two fragments
    [4 * 65536 - 10, 20], // crosses a stripe boundary
    [123, 1],
    [size - 1, 1],
    [3 * MiB + 17, 300_000],
  ];
  // Whole 4 KiB blocks only: on a size that is not a multiple of 4096 the last block is partial (a ~1% flake when drawn).
  for (let i = 0; i < 40; i++) ranges.push([Math.floor((Math.random() * (size - 4096 + 1)) / 4096) * 4096, 4096]);
  for (let i = 0; i < 20; i++) {
    const offset = Math.floor(Math.random() * (size - 70_000));
    ranges.push([offset, 1 + Math.floor(Math.random() * 70_000)]);
  }
  return ranges;
}

async function expectReadsCorrect(store: ErasureObjectStore, name: string, data: Buffer, ranges: [number, number][]) {
  for (const [offset, length] of ranges) {
    const got = await store.readRange(name, offset, length);
    expect(got.equals(data.subarray(offset, offset + length)), `range [${offset}, +${length})`).toBe(true);
  }
}

/** Rewrites fragment `index` through `edit(body)` with valid crcs: corruption the block checksums cannot see. */
async function rewriteFragmentSilently(asd: Asd, name: string, index: number, edit: (body: Buffer) => void) {
  const key = fragmentKey(name, index);
  const buf = Buffer.from(await asd.get(key));
  const header = decodeFragmentHeader(buf);
  const layout = fragmentLayout(header);
  const body = buf.subarray(layout.bodyOffset);
  edit(body);
  const table = computeBlockCrcTable([body]);
  const indexBytes = buf.subarray(layout.indexOffset, layout.bodyOffset);
  const newHeader = encodeFragmentHeader({ ...header, tablesCrc: tablesCrc(table, indexBytes) });
  await asd.put(key, [newHeader, table, indexBytes, body]);
}

async function flipFragmentByte(asd: Asd, name: string, index: number, bodyOffset: number) {
  const key = fragmentKey(name, index);
  const buf = Buffer.from(await asd.get(key));
  const layout = fragmentLayout(decodeFragmentHeader(buf));
  buf[layout.bodyOffset + bodyOffset]! ^= 0x5a;
  await asd.put(key, [buf]);
}

export function defineBackendSuite(label: string, makeFixture: () => Promise<AsdFixture>): void {
  describe(`erasure-coded backend on ${label}`, () => {
    let fixture: AsdFixture;
    let faulty: FaultyAsd[];
    const asdById = (id: string) => faulty.find((a) => a.id === id)!;
    const makeStore = (preset: Preset, extra: { requestTimeoutMs?: number; retriesMax?: number } = {}) =>
      new ErasureObjectStore({ asds: faulty, preset, requestTimeoutMs: 2_000, retriesMax: 2, retryBackoffBaseMs: 20, ...extra });

    beforeAll(async () => {
      fixture = await makeFixture();
      faulty = fixture.asds.map((a) => new FaultyAsd(a));
    });
    afterAll(async () => {
      await fixture?.cleanup();
    });

    it('4+2: partial reads fetch only the needed blocks; lost, corrupt and silently wrong fragments are survived and repaired', async () => {
      const store = makeStore(parsePreset({ k: 4, m: 2, stripeUnitBytes: 65536 }, {}));
      const name = 'vol-a/sco/00000001';
      const data = randomBytes(objectBytes);
      await store.putObject(name, [data.subarray(0, 5 * MiB + 3), data.subarray(5 * MiB + 3)]);
      const info = await store.statObject(name);
      expect(info).toMatchObject({ sizeBytes: objectBytes, k: 4, m: 2 });
      expect(new Set(info.asdIds).size).toBe(6);

      // Cold and warm 4 KiB reads: bytes and requests.
      store.clearCache();
      let before = bytesRead(store);
      let beforeRequests = requests(store);
      await store.readRange(name, 7 * MiB + 8192, 4096);
      const coldBytes = bytesRead(store) - before;
      const coldRequests = requests(store) - beforeRequests;
      before = bytesRead(store);
      beforeRequests = requests(store);
      await store.readRange(name, 7 * MiB + 65536 * 4 + 8192, 4096); // same fragment, next stripe
      const warmBytes = bytesRead(store) - before;
      const warmRequests = requests(store) - beforeRequests;
      console.log(
        `[${label}] 4+2 plain, 16 MiB object: cold 4 KiB read ${coldBytes} B in ${coldRequests} requests, warm ${warmBytes} B in ${warmRequests} request(s)`,
      );
      expect(warmBytes).toBe(4096);
      expect(warmRequests).toBe(1);
      expect(coldBytes).toBeLessThan(4096 + 4096 + 2 * 80 + 1); // data + the fragment's 4 KiB crc table (4 MiB fragment) + headers
      expect(coldRequests).toBe(3);

      // A caller that checks every byte itself (the router: each cluster's crc) gets no fragment crc table read.
      store.clearCache();
      before = bytesRead(store);
      beforeRequests = requests(store);
      const checked = data.subarray(7 * MiB + 8192, 7 * MiB + 8192 + 4096);
      expect((await store.readRange(name, 7 * MiB + 8192, 4096, { verify: (buf) => buf.equals(checked) })).equals(checked)).toBe(true);
      expect(requests(store) - beforeRequests).toBe(2); // the object's header, the data
      expect(bytesRead(store) - before).toBe(80 + 4096);

      // A 1 MiB range spans 4 stripes of 4 units: one request per data fragment, not one per unit.
      await store.readRange(name, 4 * MiB, MiB); // the fragments' crc tables come in once
      beforeRequests = requests(store);
      expect((await store.readRange(name, 4 * MiB + 65536, MiB)).equals(data.subarray(4 * MiB + 65536, 5 * MiB + 65536))).toBe(true);
      expect(requests(store) - beforeRequests).toBe(4);

      await expectReadsCorrect(store, name, data, sampleRanges(objectBytes));

      // Lose two fragments (data fragments 0 and 2): every read is still correct, by decoding.
      await asdById(info.asdIds[0]!).delete(fragmentKey(name, 0));
      await asdById(info.asdIds[2]!).delete(fragmentKey(name, 2));
      store.clearCache();
      const degradedBefore = store.stats().degradedReads;
      await expectReadsCorrect(store, name, data, sampleRanges(objectBytes));
      expect(store.stats().degradedReads).toBeGreaterThan(degradedBefore);
      let verification = await store.verifyObject(name);
      expect(verification.fragments.map((f) => f.state)).toEqual(['missing', 'ok', 'missing', 'ok', 'ok', 'ok']);
      expect(verification).toMatchObject({ healthy: false, readable: true, healthyFragments: 4 });
      expect(await store.repairObject(name)).toEqual({ repaired: [0, 2] });
      expect((await store.verifyObject(name)).healthy).toBe(true);
      await expectReadsCorrect(store, name, data, [[0, objectBytes]]);

      // Flip a byte in data fragment 1 (stripe 3): the read is right, the ASD is blamed, repair fixes it.
      const victim = info.asdIds[1]!;
      const checksumErrors = () => store.asdStats().find((c) => c.asdId === victim)!.checksumErrors;
      await flipFragmentByte(asdById(victim), name, 1, 3 * 65536 + 100);
      store.clearCache();
      const errorsBefore = checksumErrors();
      const stored = 3 * 4 * 65536 + 65536; // stripe 3, unit 1
      // Read first with the caller's check: the bad block is caught without the crc table, decoded, blamed.
      const expectedBlock = data.subarray(stored, stored + 4096);
      expect((await store.readRange(name, stored, 4096, { verify: (buf) => buf.equals(expectedBlock) })).equals(expectedBlock)).toBe(true);
      expect(checksumErrors()).toBe(errorsBefore + 1);
      store.clearCache();
      await expectReadsCorrect(store, name, data, [
        [stored, 4096],
        [stored + 50, 200],
      ]);
      expect(checksumErrors()).toBeGreaterThan(errorsBefore);
      verification = await store.verifyObject(name);
      expect(verification.fragments[1]).toMatchObject({ state: 'corrupt', asdId: victim });
      expect(await store.repairObject(name)).toEqual({ repaired: [1] });
      verification = await store.verifyObject(name);
      expect(verification.healthy).toBe(true);
      expect(verification.fragments.every((f) => f.state === 'ok')).toBe(true);

      // Wrong bytes with valid block crcs (e.g. a buggy writer): only the caller's check sees them.
      await rewriteFragmentSilently(asdById(info.asdIds[3]!), name, 3, (body) => {
        body[5 * 65536 + 10]! ^= 0xff;
      });
      store.clearCache();
      const silentOffset = 5 * 4 * 65536 + 3 * 65536;
      const expected = data.subarray(silentOffset, silentOffset + 4096);
      const blamedBefore = store.asdStats().find((c) => c.asdId === info.asdIds[3])!.checksumErrors;
      const got = await store.readRange(name, silentOffset, 4096, { verify: (buf) => crc32c(buf) === crc32c(expected) });
      expect(got.equals(expected)).toBe(true);
      expect(store.asdStats().find((c) => c.asdId === info.asdIds[3])!.checksumErrors).toBe(blamedBefore + 1);
      // Without the caller's check the bad bytes would have been returned: that is what verify is for.
      expect((await store.readRange(name, silentOffset, 4096)).equals(expected)).toBe(false);
      await expect(store.readRange(name, silentOffset, 4096, { verify: () => false })).rejects.toMatchObject({ code: 'CHECKSUM_MISMATCH' });
      await rewriteFragmentSilently(asdById(info.asdIds[3]!), name, 3, (body) => {
        body[5 * 65536 + 10]! ^= 0xff;
      });

      // Three lost fragments: more than m, reads of the lost data fail with a clear error.
      for (const f of [0, 1, 4]) await asdById(info.asdIds[f]!).delete(fragmentKey(name, f));
      store.clearCache();
      await expect(store.readRange(name, 0, 4096)).rejects.toMatchObject({
        code: 'IO',
        message: expect.stringMatching(/cannot be read: more than m=2 of its 6 fragments are missing or bad/),
      });
      // Data on a surviving data fragment is still served directly.
      await expectReadsCorrect(store, name, data, [[2 * 65536, 4096]]);
      verification = await store.verifyObject(name);
      expect(verification).toMatchObject({ readable: false, healthyFragments: 3 });
      await expect(store.repairObject(name)).rejects.toThrow(/cannot be repaired: 64 of 64 stripes have fewer than k=4 good units: stripes 0-63/);

      await store.deleteObject(name);
      for (const [i, id] of info.asdIds.entries()) expect(await asdById(id).list(fragmentKey(name, i))).toEqual([]);
      await expect(store.readRange(name, 0, 1)).rejects.toMatchObject({ code: 'OBJECT_NOT_FOUND' });
    });

    it('known block crcs fill the data fragments\' tables: the same tables as computed ones, over several stripes and a padded tail', async () => {
      const store = makeStore(parsePreset({ k: 4, m: 2, stripeUnitBytes: 16384 }, {}));
      const data = randomBytes(4 * MiB + 5000); // 65 stripes of 4 x 16 KiB, the last one padded
      const wholeBlocks = Math.floor(data.length / 4096);
      const knownBlockCrcs = Uint32Array.from({ length: wholeBlocks }, (_, b) => crc32c(data.subarray(b * 4096, (b + 1) * 4096)));
      await store.putObject('vol-k/sco/00000001', data);
      await store.putObject('vol-k/sco/00000002', data, { knownBlockCrcs });
      const tableOf = async (name: string, f: number) => {
        const info = await store.statObject(name);
        const fragment = Buffer.from(await asdById(info.asdIds[f]!).get(fragmentKey(name, f)));
        const layout = fragmentLayout(decodeFragmentHeader(fragment));
        return fragment.subarray(layout.tableOffset, layout.tableOffset + layout.tableBytes);
      };
      for (let f = 0; f < 6; f++) expect((await tableOf('vol-k/sco/00000002', f)).equals(await tableOf('vol-k/sco/00000001', f)), `fragment ${f}`).toBe(true);
      store.clearCache();
      await expectReadsCorrect(store, 'vol-k/sco/00000002', data, sampleRanges(data.length));
      // A transforming preset ignores them: its stored stream is not the plain bytes.
      const lz4 = makeStore(parsePreset({ k: 4, m: 2, compression: 'lz4' }, {}));
      await lz4.putObject('vol-k/sco/00000003', data, { knownBlockCrcs: new Uint32Array(wholeBlocks) });
      await expectReadsCorrect(lz4, 'vol-k/sco/00000003', data, sampleRanges(data.length));
    });

    it('lz4 + aes-256-gcm: partial reads stay correct and fetch far less than the object', async () => {
      const preset = parsePreset({ k: 4, m: 2, compression: 'lz4', encryption: 'aes-256-gcm', encryptionKeyHex: keyHex, chunkSizeBytes: 16384 }, {});
      const store = makeStore(preset);
      const name = 'vol-b/sco/00000007';
      const data = compressibleData(objectBytes);
      await store.putObject(name, data);
      const info = await store.statObject(name);
      console.log(`[${label}] lz4+aes 16 MiB object stored as ${info.storedSizeBytes} bytes (ratio ${(objectBytes / info.storedSizeBytes).toFixed(2)})`);
      expect(info.storedSizeBytes).toBeLessThan(objectBytes * 0.8);

      store.clearCache();
      let before = bytesRead(store);
      let beforeRequests = requests(store);
      await store.readRange(name, 9 * MiB + 4096, 4096);
      const coldBytes = bytesRead(store) - before;
      const coldRequests = requests(store) - beforeRequests;
      before = bytesRead(store);
      beforeRequests = requests(store);
      await store.readRange(name, 9 * MiB + 40960, 4096);
      const warmBytes = bytesRead(store) - before;
      console.log(
        `[${label}] lz4+aes, 16 KiB chunks: cold 4 KiB read ${coldBytes} B in ${coldRequests} requests, warm ${warmBytes} B in ${requests(store) - beforeRequests}`,
      );
      expect(coldBytes).toBeLessThan(objectBytes / 100);
      expect(warmBytes).toBeLessThanOrEqual(3 * 4096 + 16384);

      await expectReadsCorrect(store, name, data, sampleRanges(objectBytes));
      // Degraded: a lost data fragment is decoded through the stored (encrypted) bytes.
      await asdById(info.asdIds[2]!).delete(fragmentKey(name, 2));
      store.clearCache();
      await expectReadsCorrect(store, name, data, sampleRanges(objectBytes).slice(0, 30));
      expect((await store.repairObject(name)).repaired).toEqual([2]);

      // A store with another key cannot read it, and says why.
      const otherKey = makeStore({ ...preset, encryptionKey: Buffer.from('a5'.repeat(32), 'hex') });
      await expect(otherKey.readRange(name, 0, 4096)).rejects.toMatchObject({ code: 'CHECKSUM_MISMATCH' });
      await store.deleteObject(name);
    });

    it('k = 1 is replication: reads go to the next replica, and small objects stay small', async () => {
      const store = makeStore(parsePreset({ k: 1, m: 2 }, {}));
      const name = 'vol-c/tlog/00000001';
      const data = randomBytes(10_000);
      await store.putObject(name, data);
      const info = await store.statObject(name);
      const fragment = await asdById(info.asdIds[1]!).get(fragmentKey(name, 1));
      expect(fragment.length).toBeLessThan(10_000 + 4096 + 200);
      await asdById(info.asdIds[0]!).delete(fragmentKey(name, 0));
      await expectReadsCorrect(store, name, data, [
        [0, 10_000],
        [5000, 1],
      ]);
      await store.deleteObject(name);
    });

    it('a hung ASD costs one timeout, then the read is decoded; all hung fails with a clear error', async () => {
      const store = makeStore(parsePreset({ k: 4, m: 2 }, {}), { requestTimeoutMs: 300 });
      const name = 'vol-d/sco/00000002';
      const data = randomBytes(2 * MiB);
      await store.putObject(name, data);
      const info = await store.statObject(name);
      asdById(info.asdIds[0]!).setFaults({ hang: ['getRange'] });
      try {
        const started = Date.now();
        await expectReadsCorrect(store, name, data, [[100, 5000]]);
        expect(Date.now() - started).toBeLessThan(1500);
        expect(store.asdStats().find((c) => c.asdId === info.asdIds[0])!.timeouts).toBeGreaterThan(0);
        for (const a of faulty) a.setFaults({ hang: ['getRange', 'get'] });
        store.clearCache();
        const t0 = Date.now();
        await expect(store.readRange(name, 0, 4096)).rejects.toThrow(/timed out after 300 ms/);
        expect(Date.now() - t0).toBeLessThan(5000);
      } finally {
        for (const a of faulty) a.clearFaults();
      }
      await store.deleteObject(name);
    });

    it('with m fragments lost, a survivor failing in passing is retried, not turned into an EIO', async () => {
      const store = makeStore(parsePreset({ k: 4, m: 2, stripeUnitBytes: 65536 }, {}), { retriesMax: 2 });
      const name = 'vol-r/sco/00000001';
      const data = randomBytes(2 * MiB);
      await store.putObject(name, data);
      const info = await store.statObject(name);
      await asdById(info.asdIds[0]!).delete(fragmentKey(name, 0));
      await asdById(info.asdIds[2]!).delete(fragmentKey(name, 2));
      await expectReadsCorrect(store, name, data, [[0, 2 * MiB]]); // loads every survivor's crc table
      const inFragment1 = 2 * 4 * 65536 + 65536 + 100; // stripe 2, unit 1
      const inFragment0 = 3 * 4 * 65536 + 100; // stripe 3, unit 0 (lost)
      try {
        // Fragment 1's own read and a survivor's unit read each fail once (a reset connection, say).
        asdById(info.asdIds[1]!).setFaults({ failNextCalls: 1 });
        asdById(info.asdIds[3]!).setFaults({ failNextCalls: 1 });
        const retriesBefore = store.stats().readRetries;
        await expectReadsCorrect(store, name, data, [[inFragment1, 4096]]);
        asdById(info.asdIds[4]!).setFaults({ failNextCalls: 1 });
        await expectReadsCorrect(store, name, data, [[inFragment0, 4096]]);
        expect(store.stats().readRetries).toBe(retriesBefore + 2);
        // A survivor that keeps failing: the retries are bounded and the read fails clearly.
        asdById(info.asdIds[3]!).setFaults({ fail: ['getRange'] });
        await expect(store.readRange(name, inFragment0, 4096)).rejects.toMatchObject({
          code: 'IO',
          message: expect.stringMatching(/stripe 3 cannot be read: more than m=2 .*injected failure/),
        });
      } finally {
        for (const a of faulty) a.clearFaults();
      }
      await store.deleteObject(name);
    });

    it('parity buffers are reused between puts, but not after a write that timed out (it may still read them)', async () => {
      const store = makeStore(parsePreset({ k: 4, m: 2 }, {}), { requestTimeoutMs: 300, retriesMax: 2 });
      const first = randomBytes(MiB);
      expect(await store.putObject('vol-p/sco/00000001', first)).toEqual({ abandonedWrites: 0 });
      expect(await store.putObject('vol-p/sco/00000002', randomBytes(MiB))).toEqual({ abandonedWrites: 0 });
      expect(store.stats()).toMatchObject({ parityBuffersAcquired: 2, parityBuffersAllocated: 1 });
      // One ASD hangs its next put: that write times out and is retried elsewhere in time.
      const name = 'vol-p/sco/00000003';
      const slow = faulty[new Placement(faulty.map((a) => a.id)).place(name, 6)[0]!]!;
      slow.setFaults({ hang: ['put'] });
      const hung = store.putObject(name, randomBytes(MiB));
      await new Promise((resolve) => setTimeout(resolve, 350));
      slow.clearFaults();
      const result = await hung;
      expect(result.abandonedWrites).toBeGreaterThan(0);
      await store.putObject('vol-p/sco/00000004', randomBytes(MiB));
      expect(store.stats()).toMatchObject({ parityBuffersAcquired: 4, parityBuffersAllocated: 2 }); // the third put's parity was not reused
      await expectReadsCorrect(store, 'vol-p/sco/00000001', first, [[0, MiB]]);
      for (const n of [1, 2, 3, 4]) await store.deleteObject(`vol-p/sco/0000000${n}`);
    });

    it('a failing PUT is retried; one that keeps failing fails the put clearly', async () => {
      const store = makeStore(parsePreset({ k: 2, m: 1 }, {}), { retriesMax: 3 });
      const name = 'vol-e/sco/00000003';
      const data = randomBytes(300_000);
      const target = faulty[0]!;
      target.setFaults({ failNextCalls: 2 });
      await store.putObject(name, data); // two failures, then success within 3 retries
      expect((await store.verifyObject(name)).healthy).toBe(true);
      target.setFaults({ fail: ['put'] });
      // A name with a fragment on the failing ASD (3 of 6 ASDs are used per object).
      const placement = new Placement(faulty.map((a) => a.id));
      const victimName = Array.from({ length: 100 }, (_, i) => `vol-e/sco/x${i}`).find((n) => placement.place(n, 3).includes(0))!;
      await expect(store.putObject(victimName, data)).rejects.toThrow(/put of object .* failed: 1 of 3 fragments not stored/);
      target.clearFaults();
      await store.deleteObject(name);
      await store.deleteObject(victimName);
    });
  });
}
