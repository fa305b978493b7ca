/** The read cache: a fixed slab, LRU by 64 KiB blocks, exact clusters, never above its bound. */
import { mkdtemp, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ReadCache, readCacheFileName } from '../../router/read-cache.ts';
import { FaultyDisk } from '../../shared/disk.ts';

const KiB = 1024;
let dir: string;
let cache: ReadCache | undefined;

function cluster(tag: number): Buffer {
  return Buffer.alloc(4096, tag & 0xff);
}

async function readCluster(c: ReadCache, object: string, slot: number): Promise<Buffer | undefined> {
  const position = c.lookup(object, slot);
  if (position < 0) return undefined;
  const target = Buffer.alloc(4096);
  expect(await c.readAt(position, target)).toBe(true);
  return target;
}

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'keel-read-cache-'));
});
afterEach(async () => {
  await cache?.close();
  cache = undefined;
  await rm(dir, { recursive: true, force: true });
});

describe('read cache', () => {
  it('keeps exactly the clusters inserted, by SCO slot', async () => {
    cache = await ReadCache.open(dir, 256 * KiB);
    await cache.insert('sco-1', 17, Buffer.concat([cluster(1), cluster(2)]));
    expect(await readCluster(cache, 'sco-1', 16)).toBeUndefined();
    expect((await readCluster(cache, 'sco-1', 17))!.equals(cluster(1))).toBe(true);
    expect((await readCluster(cache, 'sco-1', 18))!.equals(cluster(2))).toBe(true);
    expect(await readCluster(cache, 'sco-2', 17)).toBeUndefined();
    expect(cache.stats()).toMatchObject({ slots: 4, slotsUsed: 1, clustersCached: 2 });
  });

  it('never grows past its bound and evicts the least recently used block', async () => {
    cache = await ReadCache.open(dir, 256 * KiB); // 4 slots of 64 KiB
    for (let block = 0; block < 4; block++) await cache.insert('sco-1', block * 16, cluster(block));
    expect(await readCluster(cache, 'sco-1', 0)).toBeDefined(); // block 0 is now the most recently used
    for (let block = 4; block < 40; block++) {
      await cache.insert('sco-2', block * 16, Buffer.concat(Array.from({ length: 16 }, () => cluster(block))));
      if (block === 4) expect(await readCluster(cache, 'sco-1', 0)).toBeDefined();
      expect(cache.stats().slotsUsed).toBeLessThanOrEqual(4);
    }
    expect((await stat(path.join(dir, readCacheFileName))).size).toBeLessThanOrEqual(256 * KiB);
    expect(await readCluster(cache, 'sco-1', 16)).toBeUndefined();
    expect((await readCluster(cache, 'sco-2', 39 * 16 + 5))!.equals(cluster(39))).toBe(true);
    expect(cache.stats().evictions).toBe(36);
    expect(cache.stats().clustersCached).toBeLessThanOrEqual(4 * 16);
  });

  it('caches nothing, and fails nothing, when its slab cannot be written or read (a full disk, a bad disk)', async () => {
    const disk = new FaultyDisk();
    cache = await ReadCache.open(dir, 256 * KiB, undefined, disk);
    disk.inject({ operation: 'write', pathIncludes: readCacheFileName, noSpace: true, times: 1 });
    await cache.insert('sco-1', 0, cluster(1)); // resolves: the read that fetched it goes on
    expect(await readCluster(cache, 'sco-1', 0)).toBeUndefined();
    await cache.insert('sco-1', 0, cluster(1));
    const position = cache.lookup('sco-1', 0);
    expect(position).toBeGreaterThanOrEqual(0);
    disk.inject({ operation: 'read', pathIncludes: readCacheFileName, times: 1 });
    expect(await cache.readAt(position, Buffer.alloc(4096))).toBe(false); // the reader refetches
    expect((await readCluster(cache, 'sco-1', 0))!.equals(cluster(1))).toBe(true);
    expect(cache.stats()).toMatchObject({ writeFailures: 1, readFailures: 1, insertedClusters: 1 });
  });

  it('forgets a deleted volume and starts empty on every open', async () => {
    cache = await ReadCache.open(dir, 256 * KiB);
    await cache.insert('vol/a/sco/1', 0, cluster(7));
    await cache.insert('vol/b/sco/1', 0, cluster(8));
    cache.invalidatePrefix('vol/a/');
    expect(await readCluster(cache, 'vol/a/sco/1', 0)).toBeUndefined();
    expect(await readCluster(cache, 'vol/b/sco/1', 0)).toBeDefined();
    await cache.close();
    cache = await ReadCache.open(dir, 256 * KiB);
    expect(await readCluster(cache, 'vol/b/sco/1', 0)).toBeUndefined();
  });

  it('is disabled (stores nothing) below one block', async () => {
    cache = await ReadCache.open(dir, 1000);
    await cache.insert('x', 0, cluster(1));
    expect(cache.lookup('x', 0)).toBe(-1);
    expect(cache.stats().slots).toBe(0);
  });
});
