/**
 * The scrubber on real volume drivers with 8-cluster SCOs: exactly which SCOs it deletes, that every
 * snapshot keeps its data (also one captured only by the newest snapshot), that deleting a snapshot gives
 * its space back, that mostly-garbage SCOs are rewritten, that a user write racing a rewrite wins, and
 * that a volume whose SCOs were scrubbed still recovers after a restart; and how the rewrite phase reads
 * (few requests per SCO) and orders (by LBA) the clusters it moves.
 */
import { mkdtemp, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DirectoryAsd } from '../../backend/asd-directory.ts';
import { ErasureObjectStore } from '../../backend/object-store.ts';
import { parsePreset } from '../../backend/preset.ts';
import { locationSco, locationSlot, packLocation } from '../../router/lba-map.ts';
import { ReadCache } from '../../router/read-cache.ts';
import { scoFileName } from '../../router/sco-format.ts';
import { fragmentedExtents, moveGroups, spansOf } from '../../router/scrubber.ts';
import { limits } from '../../shared/limits.ts';
import { WriteBuffer } from '../../router/write-buffer.ts';
import { SnapshotHarness } from '../helpers/snapshot-harness.ts';
import { until } from '../helpers/until.ts';

const cluster = 4096;
const scoClusters = 8;
let root: string;
let harness: SnapshotHarness;

beforeEach(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'keel-scrub-'));
  harness = new SnapshotHarness(root, 64 * cluster, scoClusters * cluster);
});
afterEach(async () => {
  await harness.closeAll();
  await rm(root, { recursive: true, force: true });
});

/** Fills one whole SCO: clusters 0..7 with `byte`. */
async function fillSco(volume: string, byte: number): Promise<void> {
  await harness.get(volume).driver.write(0, Buffer.alloc(scoClusters * cluster, byte), false);
}

async function scoFiles(volume: string): Promise<number[]> {
  await harness.get(volume).driver.flush(); // a full SCO rolls after its writes are acknowledged
  return (await readdir(path.join(harness.dir(volume), 'scos'))).map((name) => Number(name.slice(0, 8))).sort((a, b) => a - b);
}

async function expectSnapshot(volume: string, snapshot: string, byte: number): Promise<void> {
  const target = await harness.openSnapshot(volume, snapshot);
  expect((await target.read(0, scoClusters * cluster)).every((b) => b === byte), `${volume}@${snapshot} reads ${byte}`).toBe(true);
}

describe('scrubber', () => {
  it('deletes exactly the SCOs no snapshot and no live cluster holds, keeping the newest snapshot`s too', async () => {
    const { driver, snapshots } = await harness.create('v');
    await fillSco('v', 0xa1); // SCO 1
    await snapshots.create(driver, 's1');
    await fillSco('v', 0xb1); // SCO 2
    await snapshots.create(driver, 's2');
    await fillSco('v', 0xc1); // SCO 3: garbage once overwritten
    await fillSco('v', 0xd1); // SCO 4: live
    expect(await scoFiles('v')).toEqual([1, 2, 3, 4, 5]);

    const report = await harness.scrub('v');
    expect(report).toMatchObject({ scosBefore: 5, scosDeleted: 1, scosAfter: 4, clustersRewritten: 0, scosPending: 0 });
    expect(report.bytesBefore - report.bytesAfter).toBe(scoClusters * (cluster + 4) + 32);
    expect(await scoFiles('v')).toEqual([1, 2, 4, 5]);
    await expectSnapshot('v', 's1', 0xa1);
    await expectSnapshot('v', 's2', 0xb1);

    // Deleting a snapshot gives its space back at the next scrub.
    await snapshots.delete(driver, 's2');
    expect((await harness.scrub('v')).scosDeleted).toBe(1);
    expect(await scoFiles('v')).toEqual([1, 4, 5]);
    await expectSnapshot('v', 's1', 0xa1);

    // The volume (whose TLogs point into deleted SCOs) recovers, after a clean restart and a crash.
    await harness.restart(false);
    await harness.restart(true);
    expect((await harness.get('v').driver.read(0, scoClusters * cluster)).every((b) => b === 0xd1)).toBe(true);
    await expectSnapshot('v', 's1', 0xa1);
  });

  it('keeps the files of the SCOs it deletes as spares for new SCOs; reads and restarts see only new data', async () => {
    const { driver } = await harness.create('v');
    for (const byte of [0x11, 0x22, 0x33]) await fillSco('v', byte); // SCOs 1 and 2 become garbage; 4 is open
    expect((await harness.scrub('v')).scosDeleted).toBe(2);
    const spares = () => harness.get('v').driver.stats().scoSpares;
    for (let tries = 0; spares().ready < 2 && tries < 100; tries++) await new Promise((resolve) => setTimeout(resolve, 10));
    expect(spares()).toMatchObject({ ready: 2, waitingForReaders: 0, retired: 2, reused: 0 });
    expect((await readdir(path.join(harness.dir('v'), 'sco-spares'))).sort()).toEqual(['spare-1', 'spare-2']);

    // SCO 4 fills up; SCO 5 is SCO 2's old file (8 clusters of 0x22), of which 3 are overwritten.
    await driver.write(8 * cluster, Buffer.alloc(8 * cluster, 0x44), false);
    await driver.write(16 * cluster, Buffer.alloc(3 * cluster, 0x55), false);
    await driver.flush();
    expect(spares()).toMatchObject({ ready: 1, reused: 1 });
    expect(await scoFiles('v')).toEqual([3, 4, 5]);

    const expectContent = async () => {
      const all = await harness.get('v').driver.read(0, 24 * cluster);
      const filled = (from: number, to: number, byte: number) => all.subarray(from * cluster, to * cluster).every((b) => b === byte);
      expect(filled(0, 8, 0x33) && filled(8, 16, 0x44) && filled(16, 19, 0x55) && filled(19, 24, 0)).toBe(true);
    };
    await expectContent();
    // A crash with the reused SCO open: recovery keeps its 3 logged clusters, not the old file's other 5.
    await harness.restart(true);
    await expectContent();
    expect(harness.get('v').driver.stats().scoSpares.ready).toBe(1); // the other spare, adopted again
    await harness.restart(false);
    await expectContent();
  });

  it('rewrites the live clusters of a mostly-garbage SCO and deletes it', async () => {
    const { driver } = await harness.create('v');
    await driver.write(0, Buffer.alloc(scoClusters * cluster, 0x11), false); // SCO 1: clusters 0..7
    await driver.write(0, Buffer.alloc(6 * cluster, 0x22), false); // 6 of SCO 1's 8 clusters become garbage
    await driver.write(32 * cluster, Buffer.alloc(4 * cluster, 0x33), false); // fills and seals SCO 2
    const report = await harness.scrub('v');
    expect(report.clustersRewritten).toBe(2);
    expect(report.scosDeleted).toBeGreaterThanOrEqual(1);
    expect(await scoFiles('v')).not.toContain(1);
    const data = await driver.read(0, scoClusters * cluster);
    expect(data.subarray(0, 6 * cluster).every((b) => b === 0x22)).toBe(true);
    expect(data.subarray(6 * cluster).every((b) => b === 0x11)).toBe(true);
    await harness.restart(true);
    expect((await harness.get('v').driver.read(6 * cluster, 2 * cluster)).every((b) => b === 0x11)).toBe(true);
  });

  it('counts user writes and trims as map changes, not flushes or its own rewrites and deletions', async () => {
    const { driver } = await harness.create('v');
    await driver.write(0, Buffer.alloc(scoClusters * cluster, 0x11), false);
    await driver.write(0, Buffer.alloc(6 * cluster, 0x22), false);
    await driver.write(32 * cluster, Buffer.alloc(4 * cluster, 0x33), false);
    await driver.trim(40 * cluster, cluster, false);
    const before = driver.stats().userMapChanges;
    expect(before).toBeGreaterThanOrEqual(4);
    await driver.flush();
    const report = await harness.scrub('v');
    expect([report.clustersRewritten, report.scosDeleted > 0]).toEqual([2, true]);
    expect(driver.stats().userMapChanges).toBe(before);
    await driver.write(cluster, Buffer.alloc(cluster, 0x44), false);
    expect(driver.stats().userMapChanges).toBe(before + 1);
  });

  it('lets a user write win over a racing rewrite of the same cluster', async () => {
    const { driver } = await harness.create('v');
    await driver.write(0, Buffer.alloc(cluster, 0x44), false);
    const old = driver.mapView().get(0);
    expect(old).toBe(packLocation(1, 0));
    // The user write is queued first: when the rewrite's batch forms, the LBA no longer maps to `old`.
    const user = driver.write(0, Buffer.alloc(cluster, 0x55), false);
    const moved = await driver.rewriteCluster(0, old, Buffer.alloc(cluster, 0x44));
    await user;
    expect((await driver.read(0, cluster)).every((b) => b === 0x55)).toBe(true);
    expect(moved).toBe(false); // the user's write moved the LBA first: the copy was dropped
    expect(driver.stats().appendedClusters).toBe(2);
    // A rewrite whose location is current goes through.
    const now = driver.mapView().get(0);
    expect(await driver.rewriteCluster(0, now, Buffer.alloc(cluster, 0x55))).toBe(true);
    expect(driver.mapView().get(0)).not.toBe(now);
    expect(driver.stats().appendedClusters).toBe(3);
  });

  it('slows its rewrites to the busy pace while users read the volume, and only then', async () => {
    const busyPace = { clustersPerSecondBusyMax: 64 }; // one second per 64 clusters moved
    const makeGarbage = async (volume: string) => {
      const { driver } = await harness.create(volume);
      await driver.write(0, Buffer.alloc(64 * scoClusters * cluster, 0x51), false); // 64 SCOs
      for (let sco = 0; sco < 64; sco++) await driver.write(sco * scoClusters * cluster, Buffer.alloc(5 * cluster, 0x52), false);
      return driver; // 3 live clusters in each of the 64 old SCOs: 192 to move
    };
    harness = new SnapshotHarness(root, 1024 * cluster, scoClusters * cluster);
    await makeGarbage('idle');
    const idleStartMs = performance.now();
    expect((await harness.scrub('idle', busyPace)).clustersRewritten).toBe(192);
    const idleMs = performance.now() - idleStartMs;

    const busy = await makeGarbage('busy');
    let scrubbing = true;
    const reader = (async () => {
      // A read per event-loop turn, as from a client over a socket (a bare loop of page-cache reads would
      // never leave the microtask queue).
      while (scrubbing) {
        await busy.read(0, cluster);
        await new Promise((resolve) => setImmediate(resolve));
      }
    })();
    const busyStartMs = performance.now();
    const report = await harness.scrub('busy', busyPace);
    const busyMs = performance.now() - busyStartMs;
    scrubbing = false;
    await reader;
    expect(report.clustersRewritten).toBe(192);
    expect(busyMs).toBeGreaterThanOrEqual(2900); // three pauses of a second each, after 64, 128 and 192
    expect(idleMs).toBeLessThan(busyMs - 1500);
    expect((await busy.read(5 * cluster, 3 * cluster)).every((b) => b === 0x51)).toBe(true);
  }, 20_000);
});

describe('retiring a SCO file', () => {
  it('lets two retirements of one SCO race (a scrub and a dead SCO\'s eviction): the first wins, the second is a no-op', async () => {
    const { driver } = await harness.create('v');
    await fillSco('v', 0xa1); // SCO 1
    await fillSco('v', 0xb1); // SCO 2: SCO 1 holds nothing live
    expect(await scoFiles('v')).toContain(1);
    await Promise.all([driver.deleteScoFile(1), driver.deleteScoFile(1)]);
    await driver.deleteScoFile(1); // and once more, after both
    expect(await scoFiles('v')).not.toContain(1);
    expect(driver.stats().scoSpares.retired).toBe(1);
    expect((await driver.read(0, scoClusters * cluster)).every((b) => b === 0xb1)).toBe(true);
  });
});

/** Replaces the harness by one whose volumes have a 2+1 backend on directory ASDs and a write buffer of `scos` SCOs. */
async function useBackend(scos: number): Promise<{ writeBuffer: WriteBuffer; caches: ReadCache[] }> {
  await harness.closeAll();
  const asds = [0, 1, 2].map((i) => new DirectoryAsd(`asd-${i}`, path.join(root, `asd-${i}`)));
  const store = new ErasureObjectStore({ asds, preset: parsePreset({ k: 2, m: 1 }) });
  const writeBuffer = new WriteBuffer({ bytesMax: scos * scoClusters * cluster });
  const caches: ReadCache[] = [];
  harness = new SnapshotHarness(root, 64 * cluster, scoClusters * cluster, async (name) => {
    const readCache = await ReadCache.open(path.join(root, `cache-${name}-${caches.length}`), 256 * cluster);
    caches.push(readCache);
    return { store, asds, writeBuffer, readCache, volumeId: `id-${name}` };
  });
  return { writeBuffer, caches };
}

describe('dead SCOs with a backend', () => {
  it('evicts a SCO only a snapshot and a clone still hold; both read it from the backend, and the scrubber keeps it', async () => {
    const { writeBuffer, caches } = await useBackend(1024);
    try {
      const { driver, snapshots } = await harness.create('v');
      await fillSco('v', 0xa1); // SCO 1
      await snapshots.create(driver, 's1');
      await harness.clone('v', 's1', 'c');
      await fillSco('v', 0xb1); // SCO 2: SCO 1 is dead to v's map, not to s1 and c
      const tlog = await driver.closeCurrentTlog();
      await until(() => (driver.tlogsUploadedThrough ?? 0) >= tlog);
      await until(() => writeBuffer.stats().deadScosEvicted >= 1);
      expect(await scoFiles('v')).not.toContain(1);
      const fetchedBefore = driver.stats().backend!.remoteClustersFetched;
      await expectSnapshot('v', 's1', 0xa1);
      expect(driver.stats().backend!.remoteClustersFetched).toBeGreaterThan(fetchedBefore);
      expect((await harness.get('c').driver.read(0, scoClusters * cluster)).every((b) => b === 0xa1)).toBe(true);

      const report = await harness.scrub('v');
      expect(report.scosDeleted).toBe(0); // s1 holds SCO 1: its object stays on the backend
      await harness.restart(true);
      await expectSnapshot('v', 's1', 0xa1);
      expect((await harness.get('v').driver.read(0, scoClusters * cluster)).every((b) => b === 0xb1)).toBe(true);
      expect((await harness.get('c').driver.read(0, scoClusters * cluster)).every((b) => b === 0xa1)).toBe(true);
    } finally {
      await harness.closeAll();
      for (const cache of caches) await cache.close();
    }
  });
});

describe('a scrub that crashed while deleting a SCO from the backend', () => {
  it('leaves fragments behind that a restore from the backend does not read: the volume opens with its data', async () => {
    const { caches } = await useBackend(1024);
    try {
      const { driver } = await harness.create('v');
      await fillSco('v', 0xa1); // SCO 1: garbage once overwritten
      await fillSco('v', 0xb1);
      const tlog = await driver.closeCurrentTlog();
      await until(() => (driver.tlogsUploadedThrough ?? 0) >= tlog);
      const fragmentsOfSco1 = async () => (await listFiles(root)).filter((file) => file.includes('asd-') && file.includes('id-v') && /sco.00000001/.test(file));
      const kept = (await fragmentsOfSco1())[0]!;
      const keptBytes = await readFile(kept);
      expect((await harness.scrub('v')).scosDeleted).toBe(1);
      expect(await fragmentsOfSco1()).toEqual([]);
      await writeFile(kept, keptBytes); // as if the crash came before this fragment's delete
      await harness.closeAll();
      await rm(harness.dir('v'), { recursive: true }); // a new owner: restored from the backend
      await harness.restart(true);
      expect((await harness.get('v').driver.read(0, scoClusters * cluster)).every((b) => b === 0xb1)).toBe(true);
    } finally {
      await harness.closeAll();
      for (const cache of caches) await cache.close();
    }
  });
});

async function listFiles(dir: string): Promise<string[]> {
  return (await readdir(dir, { recursive: true, withFileTypes: true })).filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name));
}

describe('scrubbing SCOs that live only on the backend', () => {
  it('reads each mostly-garbage SCO with one request, rewrites its live clusters in LBA order, and keeps the data', async () => {
    const { caches } = await useBackend(2); // room for two SCOs: older ones leave once on the backend
    try {
      const { driver } = await harness.create('v');
      // SCOs 1-4 hold LBAs 0-31 (byte = LBA); then every even LBA is overwritten, so each of those SCOs
      // keeps its odd slots only: half garbage, live clusters one slot apart.
      const original = Buffer.alloc(32 * cluster);
      for (let lba = 0; lba < 32; lba++) original.fill(lba, lba * cluster, (lba + 1) * cluster);
      await driver.write(0, original, false);
      for (let lba = 0; lba < 32; lba += 2) await driver.write(lba * cluster, Buffer.alloc(cluster, 0xe0), false);
      await driver.write(40 * cluster, Buffer.alloc(8 * cluster, 0xf0), false); // more SCOs, so 1-4 can leave
      const tlog = await driver.closeCurrentTlog();
      await until(() => (driver.tlogsUploadedThrough ?? 0) >= tlog);
      await until(async () => {
        const files = await scoFiles('v');
        return [1, 2, 3, 4].every((sco) => !files.includes(sco));
      });
      const readsBefore = driver.stats().backend!.remoteReads;

      const report = await harness.scrub('v');
      expect(report.clustersRewritten).toBe(16);
      // One backend read per SCO (its slots 1, 3, 5, 7 in one span), not one per cluster.
      expect(driver.stats().backend!.remoteReads - readsBefore).toBe(4);
      const moved = Array.from({ length: 16 }, (_, index) => driver.mapView().get(2 * index + 1)!);
      expect(moved.every((location) => locationSco(location) > 4)).toBe(true);
      expect(moved).toEqual([...moved].sort((a, b) => a - b)); // in LBA order
      const expectData = async (reader: { read(offset: number, length: number): Promise<Buffer> }) => {
        const data = await reader.read(0, 32 * cluster);
        for (let lba = 0; lba < 32; lba++) {
          const byte = lba % 2 === 0 ? 0xe0 : lba;
          expect(data.subarray(lba * cluster, (lba + 1) * cluster).every((b) => b === byte), `LBA ${lba}`).toBe(true);
        }
      };
      await expectData(driver);
      await harness.restart(true);
      await expectData(harness.get('v').driver);
    } finally {
      await harness.closeAll();
      for (const cache of caches) await cache.close();
    }
  });
});

describe('defragmenting', () => {
  it('rewrites a fragmented extent in LBA order, leaves the data as it was, and survives a restart', async () => {
    const { driver } = await harness.create('v');
    const original = Buffer.alloc(32 * cluster);
    for (let lba = 0; lba < 32; lba++) original.fill(lba, lba * cluster, (lba + 1) * cluster);
    await driver.write(0, original, false); // SCOs 1-4, in order
    for (let lba = 1; lba < 32; lba += 4) await driver.write(lba * cluster, Buffer.alloc(cluster, 0xd0 + lba), false);
    const expected = (lba: number) => (lba % 4 === 1 ? 0xd0 + lba : lba);
    const runs = () => {
      let count = 0;
      for (let lba = 0; lba < 32; lba++) if (lba === 0 || driver.mapView().get(lba)! !== driver.mapView().get(lba - 1)! + 1) count += 1;
      return count;
    };
    expect(runs()).toBeGreaterThanOrEqual(limits.defragRunsPerExtentMin);

    const plain = await harness.scrub('v');
    expect(plain.extentsDefragmented).toBeUndefined(); // only when asked
    const report = await harness.scrub('v', { defrag: true });
    expect([report.extentsDefragmented, report.extentsFragmentedLeft]).toEqual([1, 0]);
    expect(report.clustersDefragmented).toBe(32);
    expect(runs()).toBeLessThanOrEqual(32 / scoClusters); // one run per new SCO at most
    const check = async (reader: { read(offset: number, length: number): Promise<Buffer> }) => {
      const data = await reader.read(0, 32 * cluster);
      for (let lba = 0; lba < 32; lba++) expect(data.subarray(lba * cluster, (lba + 1) * cluster).every((b) => b === expected(lba)), `LBA ${lba}`).toBe(true);
    };
    await check(driver);
    const again = await harness.scrub('v', { defrag: true });
    expect(again.extentsDefragmented).toBe(0); // nothing fragmented any more
    await harness.restart(true);
    await check(harness.get('v').driver);
  });
});

describe('the scrubber`s reads and rewrites', () => {
  const move = (lba: number, sco: number, slot: number) => ({ lba, location: packLocation(sco, slot) });

  it('reads each SCO in spans of neighbouring slots, bridging small gaps only', () => {
    const gap = limits.scrubReadGapClustersMax;
    const bridged = 1 + 1 + gap; // gap dead slots after slot 1
    const apart = bridged + 1 + gap + 1; // one dead slot too many
    const moves = [move(0, 7, bridged), move(1, 3, 0), move(2, 7, 1), move(3, 7, apart), move(4, 3, 1)];
    const spans = spansOf(moves).map((span) => ({ ...span, members: span.members.map((index) => moves[index].lba) }));
    expect(spans).toEqual([
      { sco: 7, firstSlot: 1, endSlot: bridged + 1, members: [2, 0] },
      { sco: 7, firstSlot: apart, endSlot: apart + 1, members: [3] },
      { sco: 3, firstSlot: 0, endSlot: 2, members: [1, 4] },
    ]);
  });

  it('caps a span at scrubReadClustersMax slots', () => {
    const count = limits.scrubReadClustersMax + 3;
    const moves = Array.from({ length: count }, (_, slot) => move(slot, 2, slot));
    const spans = spansOf(moves);
    expect(spans.map((span) => [span.firstSlot, span.endSlot])).toEqual([
      [0, limits.scrubReadClustersMax],
      [limits.scrubReadClustersMax, count],
    ]);
    expect(spans.flatMap((span) => span.members).sort((a, b) => a - b)).toEqual(moves.map((_, index) => index));
  });

  it('scrubs a SCO whose dead cluster went bad: the span read fails its check, the live clusters are read alone', async () => {
    const { driver } = await harness.create('v');
    const original = Buffer.alloc(scoClusters * cluster);
    for (let lba = 0; lba < scoClusters; lba++) original.fill(0x10 + lba, lba * cluster, (lba + 1) * cluster);
    await driver.write(0, original, false); // SCO 1, sealed once full
    for (let lba = 0; lba < scoClusters; lba += 2) await driver.write(lba * cluster, Buffer.alloc(cluster, 0xe0), false);
    await driver.flush();
    const file = await open(path.join(harness.dir('v'), 'scos', scoFileName(1)), 'r+');
    await file.write(Buffer.from([0xff]), 0, 1, 2 * cluster + 100); // slot 2: dead, between live slots 1 and 3
    await file.close();

    const report = await harness.scrub('v');
    expect(report.clustersRewritten).toBe(scoClusters / 2);
    expect(await scoFiles('v')).not.toContain(1);
    const data = await driver.read(0, scoClusters * cluster);
    for (let lba = 0; lba < scoClusters; lba++) {
      const byte = lba % 2 === 0 ? 0xe0 : 0x10 + lba;
      expect(data.subarray(lba * cluster, (lba + 1) * cluster).every((b) => b === byte), `LBA ${lba}`).toBe(true);
    }
  });

  it('leaves a SCO whose live cluster cannot be read where it is, and still reclaims the others', async () => {
    const { driver } = await harness.create('v');
    await driver.write(0, Buffer.alloc(scoClusters * cluster, 0x11), false); // SCO 1: LBAs 0..7
    await driver.write(8 * cluster, Buffer.alloc(scoClusters * cluster, 0x44), false); // SCO 2: LBAs 8..15
    await driver.write(0, Buffer.alloc(6 * cluster, 0x22), false); // 6 of SCO 1's clusters become garbage
    await driver.write(8 * cluster, Buffer.alloc(6 * cluster, 0x22), false); // and 6 of SCO 2's
    await driver.flush();
    const file = await open(path.join(harness.dir('v'), 'scos', scoFileName(1)), 'r+');
    await file.write(Buffer.from([0xff]), 0, 1, 7 * cluster + 100); // slot 7 (LBA 7): live, and now bad
    await file.close();

    const report = await harness.scrub('v'); // failed with CHECKSUM_MISMATCH before, reclaiming nothing
    expect(report.scosUnreadable).toEqual([1]);
    expect(report.clustersRewritten).toBe(2); // SCO 2's LBAs 14 and 15
    const left = await scoFiles('v');
    expect(left).toContain(1);
    expect(left).not.toContain(2);
    expect((await driver.read(6 * cluster, cluster)).every((b) => b === 0x11)).toBe(true);
    await expect(driver.read(7 * cluster, cluster)).rejects.toMatchObject({ code: 'CHECKSUM_MISMATCH' });
    expect((await driver.read(14 * cluster, 2 * cluster)).every((b) => b === 0x44)).toBe(true);
  });

  it('finds the extents that lie in at least defragRunsPerExtentMin runs, and skips those a snapshot holds', () => {
    const extent = limits.defragExtentClusters;
    const runsMin = limits.defragRunsPerExtentMin;
    const entries: Array<[number, number]> = [];
    /** Extent `index` in `runs` runs: run r in SCO firstSco + r, slots following the LBAs. */
    const addExtent = (index: number, runs: number, firstSco: number) => {
      for (let i = 0; i < extent; i++) entries.push([index * extent + i, packLocation(firstSco + Math.floor((i * runs) / extent), i)]);
    };
    addExtent(0, 1, 10);
    addExtent(1, runsMin, 20);
    addExtent(2, runsMin - 1, 40);
    addExtent(3, runsMin, 9); // its first run is in SCO 9, which a snapshot holds
    const map = { forEach: (fn: (lba: number, location: number) => void) => entries.forEach(([lba, location]) => fn(lba, location)) };
    const { extents, left } = fragmentedExtents(map, (sco) => sco === 9);
    expect(extents.map((moves) => [moves[0].lba, moves.length])).toEqual([[extent, extent]]);
    expect(left).toBe(0);
    expect(fragmentedExtents(map, () => false).extents.map((moves) => moves[0].lba)).toEqual([extent, 3 * extent]);
  });

  it('takes at most defragClustersPerScrubMax clusters a scrub and counts the fragmented extents left', () => {
    const extent = limits.defragExtentClusters;
    const extentsMax = limits.defragClustersPerScrubMax / extent;
    // extentsMax + 2 extents, each cluster in a SCO of its own: all fragmented.
    const map = {
      forEach: (fn: (lba: number, location: number) => void) => {
        for (let lba = 0; lba < (extentsMax + 2) * extent; lba++) fn(lba, packLocation(1 + (lba % 7), lba % extent));
      },
    };
    const { extents, left } = fragmentedExtents(map, () => false);
    expect([extents.length, left]).toEqual([extentsMax, 2]);
  });

  it('groups the moves SCO after SCO, splitting a SCO with more than a group holds', () => {
    const bySco = new Map([
      [1, [move(0, 1, 0), move(5, 1, 3)]],
      [2, [move(1, 2, 0), move(2, 2, 1), move(3, 2, 2), move(9, 2, 7)]],
      [4, [move(4, 4, 0)]],
    ]);
    const groups = [...moveGroups(bySco.values(), 3)].map((group) => group.map((m) => `${locationSco(m.location)}:${locationSlot(m.location)}`));
    expect(groups).toEqual([['1:0', '1:3', '2:0'], ['2:1', '2:2', '2:7'], ['4:0']]);
    expect([...moveGroups([], 3)]).toEqual([]);
  });
});
