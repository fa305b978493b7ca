/**
 * The router's RAM tier of cluster data: the cache alone (hits, misses, the budget, CLOCK's second chance,
 * views kept apart and given back, copies forgotten and moved), then on a real volume driver, where reads
 * must see every write and trim (the cache is keyed by location, so a stale copy is never looked up), writes
 * leave no copies, dead locations give their slots back, and a scrubber move keeps its cluster's copy.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ClusterRamCache } from '../../router/cluster-ram-cache.ts';
import { VolumeDriver } from '../../router/volume-driver.ts';
import { clusterSizeBytes, limits } from '../../shared/limits.ts';
import { NodeDisk } from '../../shared/disk.ts';
import { InlineIoGate } from '../../shared/inline-io-gate.ts';
import { makeRandom } from '../helpers/seeded-random.ts';

const slabClusters = limits.ramCacheSlabBytes / clusterSizeBytes;

function cluster(seed: number): Buffer {
  return Buffer.alloc(clusterSizeBytes, seed & 0xff).fill(seed >> 8, 0, 4);
}

function readBack(view: ReturnType<ClusterRamCache['openView']>, location: number): Buffer | undefined {
  const target = Buffer.alloc(clusterSizeBytes);
  return view!.read(location, target, 0) ? target : undefined;
}

describe('ClusterRamCache', () => {
  it('is off below one slab', () => {
    expect(new ClusterRamCache(0).openView()).toBeUndefined();
    expect(new ClusterRamCache(limits.ramCacheSlabBytes - 1).openView()).toBeUndefined();
  });

  it('returns what was filled, at the offset asked for, and counts hits and misses', () => {
    const cache = new ClusterRamCache(limits.ramCacheSlabBytes);
    const view = cache.openView()!;
    expect(readBack(view, 70001)).toBeUndefined();
    const source = Buffer.concat([cluster(1), cluster(2)]);
    view.fill(70001, source, clusterSizeBytes);
    const target = Buffer.alloc(3 * clusterSizeBytes, 0xee);
    expect(view.read(70001, target, clusterSizeBytes)).toBe(true);
    expect(target.subarray(clusterSizeBytes, 2 * clusterSizeBytes).equals(cluster(2))).toBe(true);
    expect(target[0]).toBe(0xee);
    expect(target[2 * clusterSizeBytes]).toBe(0xee);
    expect(cache.stats()).toMatchObject({ hits: 1, misses: 1, fills: 1, evictions: 0, bytes: clusterSizeBytes });
  });

  it('keeps volumes apart: the same location in two views holds two clusters', () => {
    const cache = new ClusterRamCache(limits.ramCacheSlabBytes);
    const a = cache.openView()!;
    const b = cache.openView()!;
    a.fill(65537, cluster(10), 0);
    expect(readBack(b, 65537)).toBeUndefined();
    b.fill(65537, cluster(20), 0);
    expect(readBack(a, 65537)!.equals(cluster(10))).toBe(true);
    expect(readBack(b, 65537)!.equals(cluster(20))).toBe(true);
  });

  it('stays within its budget, and CLOCK spares a cluster hit since the hand passed', () => {
    const cache = new ClusterRamCache(limits.ramCacheSlabBytes);
    const view = cache.openView()!;
    for (let location = 1; location <= slabClusters; location++) view.fill(location, cluster(location), 0);
    expect(cache.stats().bytes).toBe(limits.ramCacheSlabBytes);
    expect(readBack(view, 1)!.equals(cluster(1))).toBe(true); // referenced: survives the next eviction
    view.fill(slabClusters + 1, cluster(slabClusters + 1), 0);
    expect(cache.stats()).toMatchObject({ evictions: 1, bytes: limits.ramCacheSlabBytes });
    expect(readBack(view, 1)).toBeDefined();
    expect(readBack(view, 2)).toBeUndefined(); // the first one not referenced went
    expect(readBack(view, slabClusters + 1)!.equals(cluster(slabClusters + 1))).toBe(true);
  });

  it('forgets a copy at once, and moves one to a new location without a second copy', () => {
    const cache = new ClusterRamCache(limits.ramCacheSlabBytes);
    const view = cache.openView()!;
    view.fill(5, Buffer.concat([cluster(5), cluster(6), cluster(7)]), 0, 3);
    view.forget(6);
    view.forget(99); // nothing there: nothing happens
    expect(readBack(view, 6)).toBeUndefined();
    expect(cache.stats().bytes).toBe(2 * clusterSizeBytes);
    view.move(5, 70000);
    expect(readBack(view, 5)).toBeUndefined();
    expect(readBack(view, 70000)!.equals(cluster(5))).toBe(true);
    expect(cache.stats()).toMatchObject({ bytes: 2 * clusterSizeBytes, fills: 3 });
    view.move(7, 70000); // the target holds a copy already: the moved one is dropped
    expect(readBack(view, 7)).toBeUndefined();
    expect(readBack(view, 70000)!.equals(cluster(5))).toBe(true);
    expect(cache.stats().bytes).toBe(clusterSizeBytes);
    for (let location = 1; location < slabClusters; location++) view.fill(100 + location, cluster(location), 0);
    expect(cache.stats()).toMatchObject({ evictions: 0, bytes: limits.ramCacheSlabBytes }); // the freed slots were used first
  });

  it('gives a closed view its memory back to the others', () => {
    const cache = new ClusterRamCache(limits.ramCacheSlabBytes);
    const closing = cache.openView()!;
    for (let location = 1; location <= 10; location++) closing.fill(location, cluster(location), 0);
    closing.close();
    expect(cache.stats().bytes).toBe(0);
    const next = cache.openView()!;
    expect(readBack(next, 1)).toBeUndefined();
    for (let location = 1; location <= slabClusters; location++) next.fill(location, cluster(location), 0);
    expect(cache.stats()).toMatchObject({ evictions: 0, bytes: limits.ramCacheSlabBytes });
  });
});

describe('VolumeDriver with a RAM cache', () => {
  let dir: string;
  let driver: VolumeDriver | undefined;
  const MiB = 1024 * 1024;

  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'keel-ram-cache-'));
  });
  afterEach(async () => {
    await driver?.close().catch(() => undefined);
    driver = undefined;
    await rm(dir, { recursive: true, force: true });
  });

  /** Inline reads that a loaded machine never pauses (a frozen clock): the process's gate pauses on slow calls, and a full suite is slow. */
  const steadyDisk = () => new NodeDisk(new InlineIoGate({ nowMs: () => 0 }));

  function readInline(volume: VolumeDriver, offset: number, length: number): Buffer {
    const target = Buffer.alloc(length);
    expect(volume.readIntoInline(target, offset)).toBe(true);
    return target;
  }

  it('serves repeated small reads from RAM, and reads see every later write and trim', async () => {
    const cache = new ClusterRamCache(limits.ramCacheSlabBytes);
    driver = await VolumeDriver.open({ dir, volumeName: 'vol', sizeBytes: 64 * MiB, scoSizeBytes: 4 * MiB, ramCache: cache, disk: steadyDisk() });
    await driver.write(0, Buffer.concat([cluster(1), cluster(2)]), false);
    expect(cache.stats()).toMatchObject({ fills: 0, bytes: 0 }); // writes leave no copies
    expect(readInline(driver, 0, clusterSizeBytes).equals(cluster(1))).toBe(true);
    expect(readInline(driver, 0, clusterSizeBytes).equals(cluster(1))).toBe(true);
    expect(cache.stats()).toMatchObject({ hits: 1, fills: 1 });

    expect(readInline(driver, 0, 2 * clusterSizeBytes).equals(Buffer.concat([cluster(1), cluster(2)]))).toBe(true);
    expect(cache.stats()).toMatchObject({ hits: 2, fills: 2, bytes: 2 * clusterSizeBytes });
    await driver.write(0, cluster(3), false); // a new location; the old one's copy goes at once
    expect(cache.stats().bytes).toBe(clusterSizeBytes);
    expect(readInline(driver, 0, 2 * clusterSizeBytes).equals(Buffer.concat([cluster(3), cluster(2)]))).toBe(true);
    await driver.trim(clusterSizeBytes, clusterSizeBytes, false);
    expect(cache.stats().bytes).toBe(clusterSizeBytes);
    expect(readInline(driver, clusterSizeBytes, clusterSizeBytes).equals(Buffer.alloc(clusterSizeBytes))).toBe(true);
    expect(readInline(driver, 0, clusterSizeBytes).equals(cluster(3))).toBe(true);
  });

  it('holds no more copies than live clusters while small writes and reads churn one region', async () => {
    const cache = new ClusterRamCache(limits.ramCacheSlabBytes);
    driver = await VolumeDriver.open({ dir, volumeName: 'vol', sizeBytes: 64 * MiB, scoSizeBytes: 4 * MiB, ramCache: cache, disk: steadyDisk() });
    const next = makeRandom(7);
    const regionClusters = 300; // well under the cache's 1024 slots: nothing needs evicting
    const live = new Set<number>();
    for (let step = 0; step < 3000; step++) {
      const lba = Math.floor(next() * regionClusters);
      if (step % 2 === 0) {
        await driver.write(lba * clusterSizeBytes, cluster(step), false);
        live.add(lba);
      } else if (live.has(lba)) {
        readInline(driver, lba * clusterSizeBytes, clusterSizeBytes);
      }
    }
    const stats = cache.stats();
    expect(stats.evictions).toBe(0);
    expect(stats.fills).toBeGreaterThan(live.size);
    expect(stats.bytes).toBeLessThanOrEqual(live.size * clusterSizeBytes);
    for (const lba of live) readInline(driver, lba * clusterSizeBytes, clusterSizeBytes);
    expect(cache.stats().bytes).toBe(live.size * clusterSizeBytes);
  });

  it("keeps a cluster's copy when the scrubber moves it, and drops the copy a racing user write replaced", async () => {
    const cache = new ClusterRamCache(limits.ramCacheSlabBytes);
    driver = await VolumeDriver.open({ dir, volumeName: 'vol', sizeBytes: 64 * MiB, scoSizeBytes: 4 * MiB, ramCache: cache, disk: steadyDisk() });
    await driver.write(0, cluster(1), false);
    readInline(driver, 0, clusterSizeBytes);
    const before = driver.mapView().get(0);
    expect(await driver.rewriteCluster(0, before, cluster(1))).toBe(true);
    expect(driver.mapView().get(0)).not.toBe(before);
    expect(cache.stats()).toMatchObject({ fills: 1, bytes: clusterSizeBytes });
    expect(readInline(driver, 0, clusterSizeBytes).equals(cluster(1))).toBe(true);
    expect(cache.stats()).toMatchObject({ hits: 1, misses: 1, fills: 1 });

    const moved = driver.mapView().get(0);
    const user = driver.write(0, cluster(2), false);
    expect(await driver.rewriteCluster(0, moved, cluster(1))).toBe(false);
    await user;
    expect(cache.stats().bytes).toBe(0);
    expect(readInline(driver, 0, clusterSizeBytes).equals(cluster(2))).toBe(true);
  });

  it('fills and hits on the asynchronous path too (unaligned reads, reads outside the turn)', async () => {
    const cache = new ClusterRamCache(limits.ramCacheSlabBytes);
    driver = await VolumeDriver.open({ dir, volumeName: 'vol', sizeBytes: 64 * MiB, scoSizeBytes: 4 * MiB, ramCache: cache, disk: steadyDisk() });
    const data = Buffer.concat([cluster(7), cluster(8)]);
    await driver.write(0, data, false);
    expect((await driver.read(100, clusterSizeBytes + 100)).equals(data.subarray(100, clusterSizeBytes + 200))).toBe(true);
    expect(cache.stats()).toMatchObject({ fills: 2, hits: 0 }); // both runs were read whole, neither covered whole
    expect((await driver.read(clusterSizeBytes, clusterSizeBytes)).equals(cluster(8))).toBe(true);
    expect(cache.stats().hits).toBe(1);
    await driver.write(clusterSizeBytes, cluster(9), false);
    expect((await driver.read(clusterSizeBytes, clusterSizeBytes)).equals(cluster(9))).toBe(true);
    expect((await driver.read(clusterSizeBytes - 10, 20)).equals(Buffer.concat([cluster(7).subarray(-10), cluster(9).subarray(0, 10)]))).toBe(true);
  });

  it('leaves large reads to the disk', async () => {
    const cache = new ClusterRamCache(limits.ramCacheSlabBytes);
    driver = await VolumeDriver.open({ dir, volumeName: 'vol', sizeBytes: 64 * MiB, scoSizeBytes: 4 * MiB, ramCache: cache, disk: steadyDisk() });
    const clusters = limits.ramCacheReadClustersMax + 1;
    const data = Buffer.concat(Array.from({ length: clusters }, (_, index) => cluster(index + 1)));
    await driver.write(0, data, false);
    expect(readInline(driver, 0, data.length).equals(data)).toBe(true);
    expect(cache.stats()).toMatchObject({ hits: 0, misses: 0, fills: 0 });
  });

  it('matches a byte model under random small writes, trims and reads with evictions, and frees its memory on close', async () => {
    const cache = new ClusterRamCache(limits.ramCacheSlabBytes);
    const sizeBytes = 16 * MiB; // 4096 clusters over a 1024-cluster cache
    driver = await VolumeDriver.open({ dir, volumeName: 'vol', sizeBytes, scoSizeBytes: 4 * MiB, ramCache: cache, disk: steadyDisk() });
    const model = Buffer.alloc(sizeBytes);
    const next = makeRandom(12345);
    const random = (n: number) => Math.floor(next() * n);
    const clusters = sizeBytes / clusterSizeBytes;
    for (let step = 0; step < 12000; step++) {
      const count = 1 + random(limits.ramCacheReadClustersMax);
      const offset = random(clusters - count) * clusterSizeBytes;
      const length = count * clusterSizeBytes;
      const action = random(10);
      if (action < 4) {
        const data = Buffer.alloc(length);
        for (let index = 0; index < count; index++) cluster(step * 8 + index).copy(data, index * clusterSizeBytes);
        await driver.write(offset, data, false);
        data.copy(model, offset);
      } else if (action < 5) {
        await driver.trim(offset, length, false);
        model.fill(0, offset, offset + length);
      } else if (action < 8) {
        const got = readInline(driver, offset, length);
        expect(got.equals(model.subarray(offset, offset + length)), `read at cluster ${offset / clusterSizeBytes} x${count}, step ${step}`).toBe(true);
      } else {
        const from = offset + random(clusterSizeBytes); // the asynchronous path, unaligned
        const to = Math.max(from + 1, offset + length - random(clusterSizeBytes));
        const got = await driver.read(from, to - from);
        expect(got.equals(model.subarray(from, to)), `read of bytes ${from}..${to}, step ${step}`).toBe(true);
      }
    }
    expect(cache.stats().hits).toBeGreaterThan(0);
    expect(cache.stats().evictions).toBeGreaterThan(0);
    await driver.close();
    driver = undefined;
    expect(cache.stats().bytes).toBe(0);
  });
});
