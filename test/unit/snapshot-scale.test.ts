/**
 * What keeps snapshot ops flat as a volume accumulates snapshots (docs/snapshots.md): counted
 * work, not timings.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { applyCatalogEvent, catalogEvents, decodeCatalog, emptyCatalog, encodeCatalogEvent, snapshotNamed, type CatalogEvent } from '../../router/snapshot-catalog-format.ts';
import { VolumeSnapshots } from '../../router/volume-snapshots.ts';
import { NodeDisk } from '../../shared/disk.ts';
import { clusterSizeBytes } from '../../shared/limits.ts';
import { SnapshotHarness } from '../helpers/snapshot-harness.ts';

let root: string;
beforeEach(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'keel-snapshot-scale-'));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

const header: CatalogEvent = { e: 'header', format: 'keel-snapshots', version: 1 };
const create = (id: number, name: string): CatalogEvent => ({ e: 'create', id, name, createdAtMs: id, sizeBytes: 4096 });

describe('snapshot name lookups', () => {
  it('go through the name index, never a scan of the snapshots', async () => {
    const count = 20_000;
    const events = [header, ...Array.from({ length: count }, (_, i) => create(i + 1, `s${i + 1}`))];
    await writeFile(path.join(root, 'snapshots.jsonl'), events.map(encodeCatalogEvent).join(''));
    const snapshots = await VolumeSnapshots.load(new NodeDisk(), 'v', root, false);
    // A scan of the snapshots per lookup made each create O(n): 50 creates/s at 30 000 snapshots.
    const byId = (snapshots as unknown as { catalog: { state: { snapshots: Map<number, unknown> } } }).catalog.state.snapshots;
    const scan = () => {
      throw new Error('scanned every snapshot');
    };
    Object.assign(byId, { values: scan, entries: scan, keys: scan, forEach: scan, [Symbol.iterator]: scan });
    expect(snapshots.find(`s${count}`).id).toBe(count);
    expect(snapshots.has('s1')).toBe(true);
    expect(snapshots.has('nope')).toBe(false);
    expect(() => snapshots.find('nope')).toThrow(/nope/);
  });

  it('keep the index right through deletes, duplicate names (snap-<id> rebuilt from the TLogs) and compaction', () => {
    const state = emptyCatalog();
    for (const event of [create(1, 'a'), create(2, 'snap-3'), create(3, 'snap-3'), { e: 'delete', id: 1 }, { e: 'delete', id: 9 }, create(4, 'a')] as CatalogEvent[]) {
      applyCatalogEvent(state, event);
    }
    expect(snapshotNamed(state, 'a')?.id).toBe(4);
    expect(snapshotNamed(state, 'snap-3')?.id).toBe(2); // the first created, as a scan found it
    applyCatalogEvent(state, { e: 'delete', id: 2 });
    expect(snapshotNamed(state, 'snap-3')?.id).toBe(3);
    applyCatalogEvent(state, { e: 'delete', id: 3 });
    expect(snapshotNamed(state, 'snap-3')).toBeUndefined();
    expect([...state.idsByName.keys()]).toEqual(['a']);
    expect(decodeCatalog(catalogEvents(state).map(encodeCatalogEvent).join(''), 'test').state).toEqual(state);
  });
});

describe('snapshot images', () => {
  it('one image per snapshot, shared by all its clones and its exports, and kept however many others are opened', async () => {
    const harness = new SnapshotHarness(root, 64 * clusterSizeBytes, 8 * clusterSizeBytes);
    try {
      const { driver, snapshots } = await harness.create('v');
      await driver.write(0, Buffer.alloc(8 * clusterSizeBytes, 0xa1), false);
      const base = await snapshots.create(driver, 'base');
      for (let i = 0; i < 6; i++) await snapshots.create(driver, `other-${i}`);
      await harness.clone('v', 'base', 'c1');
      await harness.clone('v', 'base', 'c2');
      // Each clone open replayed the TLogs into its own copy of the map (seconds and MBs each at scale).
      const imageOf = (clone: string) => (harness.get(clone).underlay!.parent as unknown as { image: unknown }).image;
      expect(imageOf('c1')).toBe(imageOf('c2'));
      for (const info of snapshots.list()) await snapshots.image(info); // more snapshots than the LRU keeps
      expect(await snapshots.image(base)).toBe(imageOf('c1')); // an export of v@base shares it too
      expect(await (await harness.openSnapshot('v', 'base')).read(0, clusterSizeBytes)).toEqual(Buffer.alloc(clusterSizeBytes, 0xa1));
    } finally {
      await harness.closeAll();
    }
  });
});
