/**
 * The upload pipeline of a volume with a real erasure-coded backend (directory ASDs behind FaultyAsd):
 * a TLog goes up only after every SCO it references; a SCO is evicted only after its TLog is up; evicted
 * SCOs read back from the backend; an empty volume directory is restored from the backend.
 */
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DirectoryAsd } from '../../backend/asd-directory.ts';
import { FaultyAsd } from '../../backend/asd.ts';
import { decodeFragmentHeader, fragmentBlockBytes, fragmentKey, fragmentLayout, storedBlockOfDataBlock } from '../../backend/fragment-format.ts';
import { ErasureObjectStore } from '../../backend/object-store.ts';
import { parsePreset } from '../../backend/preset.ts';
import { ReadCache } from '../../router/read-cache.ts';
import { scoUploadBufferStats } from '../../router/sco-uploader.ts';
import { VolumeDriver } from '../../router/volume-driver.ts';
import type { VolumeBackend } from '../../router/volume-backend.ts';
import { WriteBuffer } from '../../router/write-buffer.ts';
import { crc32c } from '../../shared/checksum.ts';
import { NodeDisk, type Disk } from '../../shared/disk.ts';
import { limits } from '../../shared/limits.ts';
import { HeldObjectStore } from '../helpers/held-object-store.ts';
import { until } from '../helpers/until.ts';

const KiB = 1024;
const scoSizeBytes = 64 * KiB; // 16 clusters: SCOs roll quickly
const volumeSizeBytes = 4 * 1024 * KiB;

let work: string;
let asds: FaultyAsd[];
let store: ErasureObjectStore;
let held: HeldObjectStore;
let drivers: VolumeDriver[];
let caches: ReadCache[];

function pattern(seq: number): Buffer {
  const data = Buffer.alloc(scoSizeBytes);
  for (let i = 0; i < data.length; i += 4) data.writeUInt32LE((seq * 2654435761 + i) >>> 0, i);
  return data;
}

async function backendFor(writeBufferBytes: number, cacheName: string): Promise<VolumeBackend> {
  const readCache = await ReadCache.open(path.join(work, cacheName), 512 * KiB);
  caches.push(readCache);
  return {
    store: held,
    asds,
    writeBuffer: new WriteBuffer({ bytesMax: writeBufferBytes }),
    readCache,
    volumeId: 'vol-0001',
  };
}

async function openDriver(backend: VolumeBackend, disk?: Disk): Promise<VolumeDriver> {
  const driver = await VolumeDriver.open({
    disk,
    dir: path.join(work, 'volume'),
    volumeName: 'v',
    sizeBytes: volumeSizeBytes,
    scoSizeBytes,
    scoSizeBytesMinOverride: scoSizeBytes,
    backend,
  });
  drivers.push(driver);
  return driver;
}


const scoName = (seq: number) => `vol/vol-0001/sco/${String(seq).padStart(8, '0')}`;
const tlogName = (seq: number) => `vol/vol-0001/tlog/${String(seq).padStart(8, '0')}`;
const localScos = async () => (await readdir(path.join(work, 'volume', 'scos'))).sort();

beforeEach(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'keel-uploader-'));
  asds = [0, 1, 2].map((i) => new FaultyAsd(new DirectoryAsd(`asd-${i}`, path.join(work, `asd-${i}`))));
  store = new ErasureObjectStore({ asds, preset: parsePreset({ k: 2, m: 1 }), retriesMax: 1, retryBackoffBaseMs: 1 });
  held = new HeldObjectStore(store);
  drivers = [];
  caches = [];
});

afterEach(async () => {
  held.release(/./);
  for (const driver of drivers) await driver.close().catch(() => undefined);
  for (const cache of caches) await cache.close();
  await rm(work, { recursive: true, force: true });
});

describe('upload ordering', () => {
  it('puts a TLog only after every SCO it references is on the backend', async () => {
    expect(limits.tlogScosMax).toBe(4);
    held.hold(/\/sco\//);
    const driver = await openDriver(await backendFor(64 * scoSizeBytes, 'cache'));
    for (let seq = 1; seq <= 5; seq++) await driver.write((seq - 1) * scoSizeBytes, pattern(seq), false);
    // SCOs 1..5 sealed, TLog 1 (SCO_CLOSED of 1..4) closed; SCO puts are held.
    await until(() => held.heldNames().length >= 2);
    await until(() => {
      held.release(/sco\/0000000[123]$/); // at most scoUploadsInFlightMax are in flight: release as they come
      return held.completed.includes(scoName(3));
    });
    await new Promise((r) => setTimeout(r, 100));
    expect(held.started).not.toContain(tlogName(1)); // SCO 4 is still missing
    held.release(/\/sco\//);
    await until(() => held.completed.includes(tlogName(1)));
    const tlogAt = held.completed.indexOf(tlogName(1));
    for (const seq of [1, 2, 3, 4]) expect(held.completed.indexOf(scoName(seq))).toBeLessThan(tlogAt);
    expect(held.started.indexOf(tlogName(1))).toBeGreaterThan(held.completed.indexOf(scoName(4)));
  });

  it('reads SCOs for upload into pooled buffers: uploads after the first ones allocate none', async () => {
    const before = scoUploadBufferStats();
    const driver = await openDriver(await backendFor(64 * scoSizeBytes, 'cache'));
    for (let seq = 1; seq <= 6; seq++) await driver.write((seq - 1) * scoSizeBytes, pattern(seq), false);
    await until(() => [1, 2, 3, 4, 5, 6].every((seq) => held.completed.includes(scoName(seq))));
    const after = scoUploadBufferStats();
    expect(after.acquired - before.acquired).toBeGreaterThanOrEqual(6);
    // At most scoUploadsInFlightMax buffers are in use at once, so at most that many were ever new.
    expect(after.allocated - before.allocated).toBeLessThanOrEqual(limits.scoUploadsInFlightMax);
    for (let seq = 1; seq <= 6; seq++) expect((await held.readRange(scoName(seq), 0, scoSizeBytes)).equals(pattern(seq))).toBe(true);
  });

  it('evicts a SCO only once its TLog is up, then reads it back from the backend', async () => {
    held.hold(/\/tlog\//);
    const bufferBytes = (limits.tlogScosMax + 2) * scoSizeBytes;
    const backend = await backendFor(bufferBytes, 'cache');
    const driver = await openDriver(backend);
    for (let seq = 1; seq <= 5; seq++) await driver.write((seq - 1) * scoSizeBytes, pattern(seq), false);
    await until(() => held.completed.includes(scoName(5)));
    await until(() => held.heldNames().includes(tlogName(1)));
    // Every SCO is uploaded, but its TLog is not: nothing is evictable, every file stays.
    expect(backend.writeBuffer.stats().evictableBytes).toBe(0);
    expect(await localScos()).toHaveLength(6);

    held.release(/\/tlog\//);
    await until(() => backend.writeBuffer.stats().evictableBytes > 0 || backend.writeBuffer.stats().evictedScos > 0);
    // More writes push the local total past the bound: the oldest evictable SCOs go.
    for (let seq = 6; seq <= 9; seq++) await driver.write((seq - 1) * scoSizeBytes, pattern(seq), false);
    await until(() => backend.writeBuffer.stats().evictedScos >= 2);
    expect(await localScos()).not.toContain('00000001.sco');
    for (let seq = 1; seq <= 9; seq++) expect((await driver.read((seq - 1) * scoSizeBytes, scoSizeBytes)).equals(pattern(seq))).toBe(true);
    expect(driver.stats().backend!.remoteClustersFetched).toBeGreaterThan(0);
    // Read again: served by the read cache, no more backend reads.
    const fetched = driver.stats().backend!.remoteBytesFetched;
    expect((await driver.read(0, scoSizeBytes)).equals(pattern(1))).toBe(true);
    expect(driver.stats().backend!.remoteBytesFetched).toBe(fetched);

    // The evicted SCOs' files became spares (docs/volume-driver.md), and later SCOs are written into them.
    for (let seq = 10; seq <= 12; seq++) await driver.write((seq - 1) * scoSizeBytes, pattern(seq), false);
    await driver.flush();
    expect(driver.stats().scoSpares.retired).toBeGreaterThanOrEqual(2);
    expect(driver.stats().scoSpares.reused).toBeGreaterThanOrEqual(1);
    for (let seq = 1; seq <= 12; seq++) expect((await driver.read((seq - 1) * scoSizeBytes, scoSizeBytes)).equals(pattern(seq))).toBe(true);
  });

  it('evicts a SCO the volume no longer maps as soon as it is on the backend, far below the bound, and reads stay right', async () => {
    const backend = await backendFor(64 * scoSizeBytes, 'cache');
    const driver = await openDriver(backend);
    for (let seq = 1; seq <= 4; seq++) await driver.write((seq - 1) * scoSizeBytes, pattern(seq), false);
    // SCO 1 overwritten whole, SCO 2 all but its last cluster, SCO 3 trimmed, SCO 4 untouched: all
    // before their TLog is up, so SCOs 1 and 3 are dead when they become evictable.
    const lastCluster = scoSizeBytes - 4 * KiB;
    await driver.write(0, pattern(11), false);
    await driver.write(scoSizeBytes, pattern(12).subarray(0, lastCluster), false);
    await driver.trim(2 * scoSizeBytes, scoSizeBytes, false);
    const tlog = await driver.closeCurrentTlog();
    await until(() => (driver.tlogsUploadedThrough ?? 0) >= tlog);
    await until(() => backend.writeBuffer.stats().deadScosEvicted >= 2);
    expect(await localScos()).not.toContain('00000001.sco');
    expect(await localScos()).not.toContain('00000003.sco');
    expect(await localScos()).toContain('00000002.sco'); // its last cluster is still mapped
    expect(await localScos()).toContain('00000004.sco');
    expect(backend.writeBuffer.stats().evictedScos).toBe(2); // nothing else: the bound is far away

    // SCO 2 is evictable now; its last cluster overwritten, it goes at once.
    await driver.write(scoSizeBytes + lastCluster, pattern(13).subarray(0, 4 * KiB), false);
    await until(() => backend.writeBuffer.stats().deadScosEvicted >= 3);
    expect(await localScos()).not.toContain('00000002.sco');
    expect(await localScos()).toContain('00000004.sco');

    const expectVolume = async (target: VolumeDriver) => {
      expect((await target.read(0, scoSizeBytes)).equals(pattern(11))).toBe(true);
      const second = Buffer.concat([pattern(12).subarray(0, lastCluster), pattern(13).subarray(0, 4 * KiB)]);
      expect((await target.read(scoSizeBytes, scoSizeBytes)).equals(second)).toBe(true);
      expect((await target.read(2 * scoSizeBytes, scoSizeBytes)).equals(Buffer.alloc(scoSizeBytes))).toBe(true);
      expect((await target.read(3 * scoSizeBytes, scoSizeBytes)).equals(pattern(4))).toBe(true);
    };
    await expectVolume(driver);
    expect(driver.stats().backend!.remoteClustersFetched).toBe(0); // no read needed a dead SCO
    expect(driver.stats().scoSpares.retired).toBe(3);

    // Reopened, the counts are taken from the recovered map: SCO 4, live, is not evicted.
    await driver.close();
    drivers.pop();
    const reopenedBackend = await backendFor(64 * scoSizeBytes, 'cache-2');
    const reopened = await openDriver(reopenedBackend);
    await expectVolume(reopened);
    await new Promise((r) => setTimeout(r, 100));
    expect(reopenedBackend.writeBuffer.stats().deadScosEvicted).toBe(0);
    expect(await localScos()).toContain('00000004.sco');
  });

  it('restores a volume whose directory is gone from the TLogs in the backend', async () => {
    const driver = await openDriver(await backendFor(64 * scoSizeBytes, 'cache'));
    for (let seq = 1; seq <= 6; seq++) await driver.write((seq - 1) * scoSizeBytes + 4096, pattern(seq).subarray(0, scoSizeBytes - 4096), false);
    await driver.trim(2 * scoSizeBytes, 8192, false);
    await driver.close(); // closes the TLog and waits for the uploads
    await rm(path.join(work, 'volume'), { recursive: true });

    const restored = await openDriver(await backendFor(64 * scoSizeBytes, 'cache-2'));
    for (let seq = 1; seq <= 6; seq++) {
      const expected = Buffer.concat([Buffer.alloc(4096), pattern(seq).subarray(0, scoSizeBytes - 4096)]);
      if (seq === 3) expected.fill(0, 0, 8192);
      expect((await restored.read((seq - 1) * scoSizeBytes, scoSizeBytes)).equals(expected)).toBe(true);
    }
    // New SCOs never reuse a number that exists in the backend.
    await restored.write(0, pattern(42), true);
    expect(restored.stats().openScoSeq).toBeGreaterThan(7);
    expect((await restored.read(0, scoSizeBytes)).equals(pattern(42))).toBe(true);
  });

  it('restores a volume one of whose SCOs lost more than m fragments: it opens, and only that SCO fails reads', async () => {
    const driver = await openDriver(await backendFor(64 * scoSizeBytes, 'cache'));
    for (let seq = 1; seq <= 6; seq++) await driver.write((seq - 1) * scoSizeBytes, pattern(seq), false);
    await driver.close();
    await rm(path.join(work, 'volume'), { recursive: true });
    for (const index of [0, 1]) for (const asd of asds) await asd.delete(fragmentKey(scoName(3), index)).catch(() => undefined); // k = 2: beyond repair

    const restored = await openDriver(await backendFor(64 * scoSizeBytes, 'cache-2'));
    for (const seq of [1, 2, 4, 5, 6]) expect((await restored.read((seq - 1) * scoSizeBytes, scoSizeBytes)).equals(pattern(seq))).toBe(true);
    await expect(restored.read(2 * scoSizeBytes, 4096)).rejects.toMatchObject({ code: 'IO' });
    await restored.write(2 * scoSizeBytes, pattern(33).subarray(0, 4096), true); // an overwrite heals the cluster
    expect((await restored.read(2 * scoSizeBytes, 4096)).equals(pattern(33).subarray(0, 4096))).toBe(true);
  });

  it('retries uploads while the backend fails, without losing or evicting anything', async () => {
    const backend = await backendFor(64 * scoSizeBytes, 'cache');
    for (const asd of asds) asd.setFaults({ fail: ['put'] });
    const driver = await openDriver(backend);
    for (let seq = 1; seq <= 5; seq++) await driver.write((seq - 1) * scoSizeBytes, pattern(seq), false);
    await new Promise((r) => setTimeout(r, 300));
    expect(driver.stats().backend!.uploadFailures).toBeGreaterThan(0);
    expect(driver.stats().backend!.tlogsUploaded).toBe(0);
    for (const asd of asds) asd.clearFaults();
    await until(() => driver.stats().backend!.tlogsUploaded === 1, 10_000);
    for (let seq = 1; seq <= 5; seq++) expect((await driver.read((seq - 1) * scoSizeBytes, scoSizeBytes)).equals(pattern(seq))).toBe(true);
  });
});

describe('end-to-end checksums', () => {
  it("puts the cluster crcs taken at ingest in the data fragments' block tables: a cluster that rots on the local disk before its upload is not stored under a fresh crc", async () => {
    const rottenCluster = 5;
    // The bytes the uploader reads back differ from those written: rot on the local disk after ingest.
    class RottingDisk extends NodeDisk {
      override async readFileInto(filePath: string, allocate: (sizeBytes: number) => Buffer): Promise<Buffer | undefined> {
        const bytes = await super.readFileInto(filePath, allocate);
        if (bytes !== undefined && filePath.endsWith('00000001.sco')) bytes[rottenCluster * 4096 + 100] ^= 0x5a;
        return bytes;
      }
    }
    const driver = await openDriver(await backendFor(64 * scoSizeBytes, 'cache'), new RottingDisk());
    const data = pattern(1);
    await driver.write(0, data, false); // fills SCO 1, which is sealed and uploaded
    await until(() => held.completed.includes(scoName(1)));

    let blocksChecked = 0;
    for (let f = 0; f < 2; f++) {
      const fragment = await fragmentOf(scoName(1), f);
      const header = decodeFragmentHeader(fragment);
      const layout = fragmentLayout(header);
      for (let block = 0; block < layout.blockCount; block++) {
        const cluster = storedBlockOfDataBlock(header, f, block);
        if (cluster >= scoSizeBytes / 4096) continue; // the footer's blocks: computed at upload
        const tableCrc = fragment.readUInt32LE(layout.tableOffset + block * 4);
        expect(tableCrc, `cluster ${cluster}`).toBe(crc32c(data.subarray(cluster * 4096, (cluster + 1) * 4096)));
        const bodyBlock = fragment.subarray(layout.bodyOffset + block * fragmentBlockBytes, layout.bodyOffset + (block + 1) * fragmentBlockBytes);
        expect(crc32c(bodyBlock) === tableCrc, `cluster ${cluster} stored as ingested`).toBe(cluster !== rottenCluster);
        blocksChecked += 1;
      }
    }
    expect(blocksChecked).toBe(scoSizeBytes / 4096);
    // The backend's own scrub now sees that bad bytes went up (a fresh crc would have hidden them) ...
    const verification = await store.verifyObject(scoName(1));
    expect(verification.fragments.filter((f) => f.state !== 'ok').map((f) => f.fragmentIndex)).toEqual([0]);
    // ... and a read with the router's cluster check fails instead of returning the rotten bytes.
    const ingestCrc = crc32c(data.subarray(rottenCluster * 4096, (rottenCluster + 1) * 4096));
    await expect(held.readRange(scoName(1), rottenCluster * 4096, 4096, { verify: (bytes) => crc32c(bytes) === ingestCrc })).rejects.toThrow(/CHECKSUM|checksum|fail/);
  });
});

describe('a local SCO copy that fails a read', () => {
  /** Flips a byte of cluster `cluster` in the write buffer's file of SCO `seq` (its pages too: the driver reads them next). */
  async function rot(seq: number, cluster: number): Promise<void> {
    const file = path.join(work, 'volume', 'scos', `${String(seq).padStart(8, '0')}.sco`);
    const bytes = await readFile(file);
    bytes[cluster * 4096 + 7] ^= 0xff;
    await writeFile(file, bytes);
  }

  it('is read from the backend once its SCO is there, inline reads included, and leaves the write buffer; before that the mismatch is the answer', async () => {
    held.hold(/sco\/00000001$/);
    const backend = await backendFor(64 * scoSizeBytes, 'cache');
    const driver = await openDriver(backend);
    for (let seq = 1; seq <= 5; seq++) await driver.write((seq - 1) * scoSizeBytes, pattern(seq), false);
    await rot(1, 3);
    // Not on the backend yet: the local copy is the only one, and a read says so.
    await expect(driver.read(0, scoSizeBytes)).rejects.toMatchObject({ code: 'CHECKSUM_MISMATCH' });
    held.release(/./);
    await until(() => held.completed.includes(tlogName(1))); // SCOs 1..4 and their TLog are up
    const inline = Buffer.alloc(scoSizeBytes);
    expect(driver.readIntoInline(inline, 0)).toBe(false); // left to the async path, which can reach the backend
    expect((await driver.read(0, scoSizeBytes)).equals(pattern(1))).toBe(true);
    expect(driver.stats()).toMatchObject({ localCopyFailures: 1 });
    await until(async () => !(await localScos()).includes('00000001.sco')); // evicted: later reads go to the backend
    expect((await driver.read(0, scoSizeBytes)).equals(pattern(1))).toBe(true);
    for (let seq = 2; seq <= 5; seq++) expect((await driver.read((seq - 1) * scoSizeBytes, scoSizeBytes)).equals(pattern(seq))).toBe(true);
    expect(driver.stats().localCopyFailures).toBe(1);
  });
});

async function fragmentOf(name: string, index: number): Promise<Buffer> {
  for (const asd of asds) {
    const bytes = await asd.get(fragmentKey(name, index)).catch(() => undefined);
    if (bytes !== undefined) return Buffer.from(bytes);
  }
  throw new Error(`fragment ${index} of ${name} is on no ASD`);
}
