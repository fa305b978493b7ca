import { describe, expect, it } from 'vitest';
import { LbaMap, locationSco, locationSlot, packLocation } from '../../router/lba-map.ts';
import { makeRandom } from '../helpers/seeded-random.ts';


function expectSame(map: LbaMap, reference: Map<number, number>): void {
  expect(map.mappedCount).toBe(reference.size);
  const seen: Array<[number, number]> = [];
  map.forEach((lba, location) => seen.push([lba, location]));
  const expected = [...reference.entries()].sort((a, b) => a[0] - b[0]);
  expect(seen).toEqual(expected);
  for (const [lba, location] of reference) expect(map.get(lba)).toBe(location);
  const perSco = new Map<number, number>();
  for (const location of reference.values()) perSco.set(locationSco(location), (perSco.get(locationSco(location)) ?? 0) + 1);
  expect(map.clustersPerSco()).toEqual(perSco);
}

describe('LbaMap', () => {
  it('packs and unpacks locations', () => {
    const location = packLocation(123456, 32767);
    expect(locationSco(location)).toBe(123456);
    expect(locationSlot(location)).toBe(32767);
    expect(packLocation(2 ** 32 - 1, 65535)).toBeLessThan(2 ** 53);
  });

  it('reads unmapped clusters as 0 and keeps the last set', () => {
    const map = new LbaMap();
    expect(map.get(0)).toBe(0);
    expect(map.get(2 ** 38 - 1)).toBe(0);
    map.set(10, packLocation(1, 0));
    map.set(10, packLocation(2, 5));
    expect(map.get(10)).toBe(packLocation(2, 5));
    expect(map.get(11)).toBe(0);
    expect(map.mappedCount).toBe(1);
    expect(map.delete(10)).toBe(true);
    expect(map.delete(10)).toBe(false);
    expect(map.get(10)).toBe(0);
    expect(map.mappedCount).toBe(0);
  });

  it('matches a plain Map under random set/delete/deleteRange and range walks (sparse, dense, overflow, huge LBAs)', () => {
    const random = makeRandom(1234);
    const map = new LbaMap();
    const reference = new Map<number, number>();
    const regions = [0, 8192 * 3, 2 ** 28 - 20000, 2 ** 37]; // the last one is far beyond 2^32 clusters
    let sco = 1;
    for (let step = 0; step < 200_000; step++) {
      const region = regions[Math.floor(random() * regions.length)];
      const lba = region + Math.floor(random() * 20000);
      const action = random();
      if (action < 0.8) {
        if (random() < 0.001) sco += 70_000; // forces the overflow path for pages with an old base
        const location = packLocation(sco + Math.floor(random() * 3), Math.floor(random() * 65536));
        map.set(lba, location);
        reference.set(lba, location);
      } else if (action < 0.97) {
        expect(map.delete(lba)).toBe(reference.delete(lba));
      } else {
        const count = Math.floor(random() * 12000);
        const visited = new Map<number, number>();
        map.forEachInRange(lba, count, (at, location) => visited.set(at, location));
        expect(visited).toEqual(new Map([...reference].filter(([key]) => key >= lba && key < lba + count)));
        map.deleteRange(lba, count);
        for (const key of [...reference.keys()]) if (key >= lba && key < lba + count) reference.delete(key);
      }
      if (step % 50_000 === 0) expectSame(map, reference);
    }
    expectSame(map, reference);
    expect(map.layoutStats().overflowEntries).toBeGreaterThan(0);
  });

  it('turns a filling page dense and an emptying page sparse again, without losing entries', () => {
    const map = new LbaMap();
    const reference = new Map<number, number>();
    for (let lba = 0; lba < 8192; lba++) {
      map.set(lba, packLocation(5, lba));
      reference.set(lba, packLocation(5, lba));
    }
    expect(map.layoutStats().densePages).toBe(1);
    for (let lba = 0; lba < 8000; lba++) {
      map.delete(lba);
      reference.delete(lba);
    }
    expect(map.layoutStats().densePages).toBe(0);
    expectSame(map, reference);
  });

  it('drops whole pages in deleteRange and reports mapped ranges', () => {
    const map = new LbaMap();
    for (let lba = 100; lba < 100_000; lba++) map.set(lba, packLocation(1 + Math.floor(lba / 16384), lba % 16384));
    map.deleteRange(200, 90_000);
    expect(map.mappedCount).toBe(100 + (100_000 - 90_200));
    expect(map.mappedRanges()).toEqual([
      { lba: 100, count: 100 },
      { lba: 90_200, count: 9_800 },
    ]);
    map.deleteRange(0, 2 ** 40);
    expect(map.mappedCount).toBe(0);
    expect(map.layoutStats().pages).toBe(0);
  });

  it('costs at most 8 bytes per mapped cluster for sequential and 1M random clusters across 1 TiB', () => {
    const sequential = new LbaMap();
    for (let index = 0; index < 300_000; index++) sequential.set(index, packLocation(1 + (index >> 14), index & 16383));
    expect(sequential.memoryBytes() / sequential.mappedCount).toBeLessThanOrEqual(6);

    const random = makeRandom(99);
    const sparse = new LbaMap();
    for (let index = 0; index < 1 << 20; index++) {
      sparse.set(Math.floor(random() * 2 ** 28), packLocation(1 + (index >> 14), index & 16383));
    }
    expect(sparse.memoryBytes() / sparse.mappedCount).toBeLessThanOrEqual(8);
  });

  it('rejects locations without a SCO (programmer error)', () => {
    const map = new LbaMap();
    expect(() => map.set(1, 5)).toThrow();
    expect(() => map.set(-1, packLocation(1, 0))).toThrow();
  });
});
