import { cp, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FaultyDisk, type DiskFault } from '../../shared/disk.ts';
import { isKeelError } from '../../shared/errors.ts';
import { VolumeDriver, type VolumeDriverOptions } from '../../router/volume-driver.ts';
import { expectBytes } from '../helpers/expect-bytes.ts';
import { until } from '../helpers/until.ts';

const MiB = 1024 * 1024;
let dir: string;
let driver: VolumeDriver | undefined;

function options(extra: Partial<VolumeDriverOptions> = {}): VolumeDriverOptions {
  return { dir, volumeName: 'vol', sizeBytes: 64 * MiB, scoSizeBytes: 4 * MiB, ...extra };
}

function pattern(length: number, seed: number): Buffer {
  const buffer = Buffer.alloc(length);
  for (let index = 0; index < length; index++) buffer[index] = (index * 7 + seed * 13 + (index >> 12)) & 0xff;
  return buffer;
}

/** A byte-level model of the volume to compare against. */
class Model {
  readonly bytes: Buffer;
  constructor(sizeBytes: number) {
    this.bytes = Buffer.alloc(sizeBytes);
  }
  write(offset: number, data: Buffer): void {
    data.copy(this.bytes, offset);
  }
  zero(offset: number, length: number): void {
    this.bytes.fill(0, offset, offset + length);
  }
}

/** Writes pattern(4 clusters, 3) into SCO 1, closes the volume and flips a byte of cluster 2 in the file. */
async function writeFourClustersThenFlipAByteOfTheThird(): Promise<void> {
  const writer = await VolumeDriver.open(options());
  await writer.write(0, pattern(4 * 4096, 3), false);
  await writer.close();
  const scoPath = path.join(dir, 'scos', '00000001.sco');
  const bytes = await readFile(scoPath);
  bytes[2 * 4096 + 17] ^= 0x01;
  await writeFile(scoPath, bytes);
}

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'keel-volume-'));
});
afterEach(async () => {
  await driver?.close().catch(() => undefined);
  driver = undefined;
  await rm(dir, { recursive: true, force: true });
});

describe('VolumeDriver', () => {
  it('creates a new volume that reads as zeros, with volume.json', async () => {
    driver = await VolumeDriver.open(options());
    expect(driver.sizeBytes).toBe(64 * MiB);
    expectBytes(await driver.read(0, 8192), Buffer.alloc(8192));
    const metadata = JSON.parse(await readFile(path.join(dir, 'volume.json'), 'utf8'));
    expect(metadata).toMatchObject({ name: 'vol', sizeBytes: 64 * MiB, scoSizeBytes: 4 * MiB, formatVersion: 1 });
    expect(driver.stats().mappedClusters).toBe(0);
  });

  it('handles unaligned writes (1000 bytes at offset 5000) and reads across mapped and unmapped', async () => {
    driver = await VolumeDriver.open(options());
    const model = new Model(64 * MiB);
    const writes: Array<[number, number]> = [
      [5000, 1000],
      [0, 4096],
      [4095, 2],
      [20000, 12345],
      [65536, 3 * 4096],
    ];
    for (const [offset, length] of writes) {
      const data = pattern(length, offset);
      await driver.write(offset, data, false);
      model.write(offset, data);
    }
    expectBytes(await driver.read(0, 100_000), model.bytes.subarray(0, 100_000));
    expectBytes(await driver.read(4999, 1002), model.bytes.subarray(4999, 6001));
    expectBytes(await driver.read(8 * MiB, 4096), Buffer.alloc(4096));
  });

  it('lands two concurrent 512-byte writes into different sectors of one cluster', async () => {
    driver = await VolumeDriver.open(options());
    const base = pattern(4096, 9);
    await driver.write(40960, base, false);
    const first = Buffer.alloc(512, 0x11);
    const second = Buffer.alloc(512, 0x22);
    const third = Buffer.alloc(512, 0x33);
    await Promise.all([driver.write(40960, first, false), driver.write(40960 + 1536, second, false), driver.write(40960 + 3584, third, false)]);
    const expected = Buffer.from(base);
    first.copy(expected, 0);
    second.copy(expected, 1536);
    third.copy(expected, 3584);
    expectBytes(await driver.read(40960, 4096), expected);
  });

  it('resolves overlapping concurrent writes in arrival order', async () => {
    driver = await VolumeDriver.open(options());
    const writes = [];
    for (let round = 0; round < 20; round++) writes.push(driver.write(0, Buffer.alloc(8192, round), false));
    writes.push(driver.write(100, Buffer.alloc(10, 0xee), false));
    writes.push(driver.write(0, Buffer.alloc(4096, 0x77), false));
    await Promise.all(writes);
    const expected = Buffer.alloc(8192, 19);
    expected.fill(0x77, 0, 4096);
    expectBytes(await driver.read(0, 8192), expected);
  });

  it('trims and zeroes with partial clusters at the edges', async () => {
    driver = await VolumeDriver.open(options());
    const model = new Model(64 * MiB);
    const data = pattern(10 * 4096, 5);
    await driver.write(0, data, false);
    model.write(0, data);
    await driver.trim(1000, 3 * 4096, false);
    model.zero(1000, 3 * 4096);
    await driver.writeZeroes(6 * 4096 + 10, 100, true);
    model.zero(6 * 4096 + 10, 100);
    expectBytes(await driver.read(0, 10 * 4096), model.bytes.subarray(0, 10 * 4096));
    expect(driver.stats().mappedClusters).toBe(8); // clusters 1 and 2 were unmapped whole
  });

  it('rejects requests outside the device', async () => {
    driver = await VolumeDriver.open(options());
    await expect(driver.read(64 * MiB - 10, 11)).rejects.toMatchObject({ code: 'OUT_OF_RANGE' });
    await expect(driver.write(64 * MiB, Buffer.alloc(1), false)).rejects.toMatchObject({ code: 'OUT_OF_RANGE' });
    await expect(driver.trim(-1, 10, false)).rejects.toMatchObject({ code: 'BAD_ARGUMENT' });
  });

  it('rolls SCOs over and TLogs too, and reopens after a clean close with identical data', async () => {
    const small = options({ scoSizeBytes: 64 * 1024, scoSizeBytesMinOverride: 4096 }); // 16 clusters per SCO
    driver = await VolumeDriver.open(small);
    const model = new Model(64 * MiB);
    for (let index = 0; index < 40; index++) {
      const offset = ((index * 37) % 200) * 4096;
      const data = pattern(3 * 4096, index);
      await driver.write(offset, data, false);
      model.write(offset, data);
    }
    const big = pattern(2 * MiB, 77); // one request spanning many SCOs
    await driver.write(4 * MiB, big, false);
    model.write(4 * MiB, big);
    await driver.flush();
    const stats = driver.stats();
    expect(stats.scoCount).toBeGreaterThan(30);
    expect(stats.tlogCount).toBeGreaterThan(5);
    expectBytes(await driver.read(0, 8 * MiB), model.bytes.subarray(0, 8 * MiB));
    await driver.close();

    driver = await VolumeDriver.open(small);
    expect(driver.stats().mappedClusters).toBe(stats.mappedClusters);
    expectBytes(await driver.read(0, 8 * MiB), model.bytes.subarray(0, 8 * MiB));
    // Closed SCOs are sealed: every SCO file ends with a valid trailer (reads of old SCOs worked above).
    expect((await readdir(path.join(dir, 'scos'))).length).toBe(driver.stats().scoCount);
  });

  it('keeps the stored geometry and supports resize (shrink unmaps beyond the end)', async () => {
    driver = await VolumeDriver.open(options());
    await driver.write(60 * MiB, pattern(MiB, 1), false);
    await driver.resize(60 * MiB + 512);
    expect(driver.sizeBytes).toBe(60 * MiB + 512);
    await driver.resize(64 * MiB);
    const back = await driver.read(60 * MiB, 4096);
    expectBytes(back.subarray(0, 512), pattern(MiB, 1).subarray(0, 512));
    expectBytes(back.subarray(512), Buffer.alloc(4096 - 512));
    expectBytes(await driver.read(61 * MiB, MiB), Buffer.alloc(MiB));
    await driver.close();
    driver = await VolumeDriver.open(options({ sizeBytes: 32 * MiB }));
    expect(driver.sizeBytes).toBe(64 * MiB);
  });

  it('detects a flipped SCO byte on read with CHECKSUM_MISMATCH', async () => {
    await writeFourClustersThenFlipAByteOfTheThird();
    driver = await VolumeDriver.open(options());
    expectBytes(await driver.read(0, 2 * 4096), pattern(4 * 4096, 3).subarray(0, 2 * 4096));
    const error = await driver.read(0, 4 * 4096).catch((err: unknown) => err);
    expect(isKeelError(error, 'CHECKSUM_MISMATCH')).toBe(true);
  });

  it('serves cache-hit reads inline: same bytes as readInto, from the open and closed SCOs and holes', async () => {
    driver = await VolumeDriver.open(options());
    await driver.write(0, pattern(4 * MiB, 1), false); // fills SCO 1, which closes
    await driver.write(4 * MiB, pattern(8 * 4096, 2), false); // into the open SCO 2
    const inline = (offset: number, length: number): Buffer | undefined => {
      const target = Buffer.alloc(length, 0xee);
      return driver!.readIntoInline(target, offset) ? target : undefined;
    };
    // SCO 1's file is opened by the first (async) read, after which reads of it run inline too.
    expectBytes(await driver.read(0, 4096), pattern(4 * MiB, 1).subarray(0, 4096));
    for (const [offset, length] of [[0, 4096], [4 * MiB - 8192, 4 * 4096], [4 * MiB + 4096, 4096], [8 * MiB, 3 * 4096]]) {
      const bytes = inline(offset!, length!);
      expect(bytes, `inline read at ${offset}`).toBeDefined();
      expectBytes(bytes!, await driver.read(offset!, length!));
    }
    expect(inline(512, 4096)).toBeUndefined(); // not whole clusters: the async path handles it
    expect(() => inline(64 * MiB, 4096)).toThrow(/outside|range/i);
  });

  it('checks checksums inline, and leaves reads to the async path while a read fault is injected', async () => {
    await writeFourClustersThenFlipAByteOfTheThird();
    const disk = new FaultyDisk();
    driver = await VolumeDriver.open(options({ disk }));
    expectBytes(await driver.read(0, 4096), pattern(4096, 3)); // opens SCO 1
    let error: unknown;
    try {
      driver.readIntoInline(Buffer.alloc(4 * 4096), 0);
    } catch (err) {
      error = err;
    }
    expect(isKeelError(error, 'CHECKSUM_MISMATCH')).toBe(true);
    disk.inject({ operation: 'read', pathIncludes: '.sco', times: 1 });
    expect(driver.readIntoInline(Buffer.alloc(4096), 0)).toBe(false);
    await expect(driver.read(0, 4096)).rejects.toMatchObject({ code: 'IO' });
  });

  it('fails writes (never acknowledges them) when the disk fails, and refuses further I/O', async () => {
    const disk = new FaultyDisk();
    driver = await VolumeDriver.open(options({ disk }));
    await driver.write(0, pattern(4096, 1), false);
    expect(driver.stats().failed).toBe(0);
    disk.inject({ operation: 'writev', pathIncludes: '.sco' });
    await expect(driver.write(4096, pattern(4096, 2), false)).rejects.toMatchObject({ code: 'IO' });
    await expect(driver.read(0, 4096)).rejects.toMatchObject({ code: 'IO' });
    expect(driver.stats().failed).toBe(1); // keel_volume_failed in /metrics
    disk.clearFaults();
    await driver.close();
    driver = await VolumeDriver.open(options());
    expectBytes(await driver.read(0, 4096), pattern(4096, 1));
  });

  describe('on a full disk', () => {
    const failedAt = 64 * 4096;
    const laterAt = 128 * 4096;

    /** A driver on a FaultyDisk (no fault yet) with pattern 1 in its first four clusters. */
    async function openWithFourClusters(): Promise<{ disk: FaultyDisk; volume: VolumeDriver }> {
      const disk = new FaultyDisk();
      const volume = await VolumeDriver.open(options({ disk }));
      driver = volume;
      await volume.write(0, pattern(4 * 4096, 1), false);
      return { disk, volume };
    }

    /** 32 one-cluster writes from one turn (one batch) at failedAt, each rejected with NO_SPACE. */
    async function writesFailWithNoSpace(volume: VolumeDriver): Promise<void> {
      const writes = [];
      for (let index = 0; index < 32; index++) writes.push(volume.write(failedAt + index * 4096, pattern(4096, 50 + index), false));
      const outcomes = await Promise.allSettled(writes);
      for (const outcome of outcomes) expect(outcome).toMatchObject({ status: 'rejected', reason: { code: 'NO_SPACE' } });
    }

    /** A crash now: recovery from a copy of the volume's files as they are (nothing sealed), reads `bytes` at 0. */
    async function expectAfterCrash(bytes: Buffer): Promise<void> {
      const crashImage = `${dir}-crash`;
      await cp(dir, crashImage, { recursive: true });
      try {
        const recovered = await VolumeDriver.open(options({ dir: crashImage }));
        expectBytes(await recovered.read(0, bytes.length), bytes);
        await recovered.close();
      } finally {
        await rm(crashImage, { recursive: true, force: true });
      }
    }

    /** What the open volume reads, it reads again after a crash and after a clean close. */
    async function expectSameAfterRecovery(): Promise<void> {
      const seen = await driver!.read(0, 256 * 4096);
      expectBytes(seen.subarray(0, 4 * 4096), pattern(4 * 4096, 1));
      expectBytes(seen.subarray(failedAt, failedAt + 32 * 4096), Buffer.alloc(32 * 4096)); // no failed write took effect
      expectBytes(seen.subarray(laterAt, laterAt + 4096), pattern(4096, 9));
      await expectAfterCrash(seen);
      await driver!.close();
      driver = await VolumeDriver.open(options());
      expectBytes(await driver.read(0, 256 * 4096), seen);
    }

    it('fails the writes of a batch whose SCO append ran out of space, keeps serving reads, and takes writes again once there is space', async () => {
      const { disk, volume } = await openWithFourClusters();
      disk.inject({ operation: 'writev', pathIncludes: '.sco', noSpace: true });
      await writesFailWithNoSpace(volume);
      await expect(volume.write(laterAt, pattern(4096, 9), false)).rejects.toMatchObject({ code: 'NO_SPACE' });
      expectBytes(await volume.read(0, 4 * 4096), pattern(4 * 4096, 1)); // reads go on
      expect(volume.stats()).toMatchObject({ failed: 0 }); // a full disk fails writes, not the volume
      expect(volume.stats().noSpaceBatches).toBeGreaterThanOrEqual(2);
      disk.clearFaults();
      // The TLog took the failed batch's records; they were cut off, or replay would map the failed
      // writes' clusters onto the slots this write now fills.
      await volume.write(laterAt, pattern(4096, 9), false);
      await volume.flush();
      await expectSameAfterRecovery();
    });

    it('cuts a TLog append that ran out of space halfway back off, so replay never finds its records', async () => {
      const { disk, volume } = await openWithFourClusters();
      disk.inject({ operation: 'write', pathIncludes: '.tlog', noSpace: true, times: 1 }); // writes 16 of the 32 records
      await writesFailWithNoSpace(volume);
      await volume.write(laterAt, pattern(4096, 9), false); // one record where the 32 began; a flush and the close add three
      await volume.flush();
      await expectSameAfterRecovery();
    });

    it('fails a flush whose SYNC record found no space, and the next flush succeeds', async () => {
      const { disk, volume } = await openWithFourClusters();
      disk.inject({ operation: 'write', pathIncludes: '.tlog', noSpace: true, times: 1 });
      await expect(volume.flush()).rejects.toMatchObject({ code: 'NO_SPACE' });
      await volume.write(laterAt, pattern(4096, 9), false);
      await volume.flush();
      await expectSameAfterRecovery();
    });

    /**
     * Appends `clustersBefore` clusters, injects `fault`, then writes the cluster after them, whose roll
     * meets the fault twice: that write succeeds (it was appended), the next fails with NO_SPACE, and the
     * one after it finishes the roll first. The volume reads the same after a crash and after a close.
     */
    async function rollMeetsAFullDisk(clustersBefore: number, fault: Omit<DiskFault, 'noSpace' | 'times'>): Promise<ReturnType<VolumeDriver['stats']>> {
      const disk = new FaultyDisk();
      driver = await VolumeDriver.open(options({ disk }));
      const bulk = pattern((clustersBefore - 4) * 4096, 3);
      const fillAt = laterAt + bulk.length;
      await driver.write(0, pattern(4 * 4096, 1), false);
      await driver.write(laterAt, bulk, false);
      disk.inject({ ...fault, noSpace: true, times: 2 });
      await driver.write(fillAt, pattern(4096, 4), false); // appended; the roll behind it fails
      await until(() => driver!.stats().noSpaceBatches === 1);
      await expectAfterCrash(await driver.read(0, fillAt + 4096)); // a crash in the middle of the roll loses nothing
      await expect(driver.write(laterAt + 4096, pattern(4096, 5), false)).rejects.toMatchObject({ code: 'NO_SPACE' });
      expectBytes(await driver.read(fillAt, 4096), pattern(4096, 4));
      await driver.write(laterAt, pattern(4096, 9), false); // the roll, then this write
      await driver.flush();
      expectBytes(await driver.read(laterAt + 4096, bulk.length - 4096), bulk.subarray(4096));
      expectBytes(await driver.read(fillAt, 4096), pattern(4096, 4));
      const rolled = driver.stats();
      await expectSameAfterRecovery();
      return rolled;
    }

    const scoClusters = (4 * MiB) / 4096;

    it('finishes a SCO roll whose footer found no space at the next write', async () => {
      const rolled = await rollMeetsAFullDisk(scoClusters - 1, { operation: 'writev', pathIncludes: '00000001.sco', skip: 1 });
      expect(rolled).toMatchObject({ openScoSeq: 2, noSpaceBatches: 2 });
    });

    it('finishes a SCO roll whose SCO_CLOSED record found no space at the next write', async () => {
      const rolled = await rollMeetsAFullDisk(scoClusters - 1, { operation: 'write', pathIncludes: '.tlog', skip: 1 });
      expect(rolled).toMatchObject({ openScoSeq: 2, noSpaceBatches: 2 });
    });

    it('finishes a TLog roll whose next TLog found no space at the next write', async () => {
      const rolled = await rollMeetsAFullDisk(4 * scoClusters - 1, { operation: 'write', pathIncludes: '00000002.tlog' }); // the 4th SCO closes TLog 1
      expect(rolled).toMatchObject({ tlogSeq: 2, openScoSeq: 5, noSpaceBatches: 2 });
    });
  });

  it('rolls to the next SCO without waiting for the directory fsync; a flush waits for it', async () => {
    const disk = new FaultyDisk();
    driver = await VolumeDriver.open(options({ disk }));
    const scoDirSyncMs = 1500;
    disk.inject({ operation: 'syncDir', pathIncludes: 'scos', delayMs: scoDirSyncMs, times: 1 });
    const rolledAt = performance.now();
    await driver.write(0, pattern(4 * MiB, 1), false); // fills SCO 1: the roll creates SCO 2
    await driver.write(4 * MiB, pattern(4096, 2), false); // into SCO 2
    expect(performance.now() - rolledAt).toBeLessThan(scoDirSyncMs - 500);
    await driver.flush();
    expect(performance.now() - rolledAt).toBeGreaterThanOrEqual(scoDirSyncMs - 50);
    expectBytes(await driver.read(4 * MiB - 4096, 8192), Buffer.concat([pattern(4 * MiB, 1).subarray(4 * MiB - 4096), pattern(4096, 2)]));
  });

  it('fails the next flush, and the volume, when the directory fsync of a new SCO fails', async () => {
    const disk = new FaultyDisk();
    driver = await VolumeDriver.open(options({ disk }));
    disk.inject({ operation: 'syncDir', pathIncludes: 'scos', times: 1 });
    await driver.write(0, pattern(4 * MiB, 1), false);
    await expect(driver.flush()).rejects.toMatchObject({ code: 'IO' });
    await expect(driver.write(4 * MiB, pattern(4096, 2), false)).rejects.toMatchObject({ code: 'IO' });
  });

  it('batches concurrent writes (group commit) and bounds the queue', async () => {
    const disk = new FaultyDisk();
    driver = await VolumeDriver.open(options({ disk }));
    disk.inject({ operation: 'writev', delayMs: 20, times: 1 });
    const writes = [];
    for (let index = 0; index < 200; index++) writes.push(driver.write(index * 4096, pattern(4096, index), false));
    await Promise.all(writes);
    expect(driver.stats().appendBatches).toBeLessThan(10);
    for (let index = 0; index < 200; index += 37) expectBytes(await driver.read(index * 4096, 4096), pattern(4096, index));
  });
});
