import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { DirectoryAsd } from '../../backend/asd-directory.ts';
import { listObjectNames } from '../../backend/object-listing.ts';
import { ErasureObjectStore } from '../../backend/object-store.ts';
import { parsePreset } from '../../backend/preset.ts';
import { CatalogMirror, fetchCatalogMirror } from '../../router/catalog-mirror.ts';
import {
  applyCatalogEvent,
  catalogJournalSlices,
  decodeCatalogMirror,
  emptyCatalog,
  encodeCatalogJournal,
  encodeCatalogMirror,
  encodeCatalogMirrorSlices,
} from '../../router/snapshot-catalog-format.ts';
import type { VolumeBackend } from '../../router/volume-backend.ts';
import { silentLogger } from '../../shared/logger.ts';
import { until } from '../helpers/until.ts';

let root: string;
let backend: VolumeBackend;
beforeEach(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'keel-catalog-mirror-'));
  const asds = [0, 1, 2].map((i) => new DirectoryAsd(`asd-${i}`, path.join(root, `asd-${i}`)));
  const store = new ErasureObjectStore({ asds, preset: parsePreset({ k: 2, m: 1 }) });
  backend = { store, asds, volumeId: 'v1' } as unknown as VolumeBackend;
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

const journal = (names: string[]) =>
  [{ e: 'header', format: 'keel-snapshots', version: 1 }, { e: 'nextId', value: names.length + 1 }, ...names.map((name, i) => ({ e: 'create', id: i + 1, name, createdAtMs: 1, sizeBytes: 4096, labels: {} }))]
    .map((event) => JSON.stringify(event) + '\n')
    .join('');

it('puts a copy per change, coalescing changes made during a put, keeps only the newest, and a new epoch wins', async () => {
  let catalog = journal(['a']);
  let contentCalls = 0;
  const mirror = new CatalogMirror({ ...backend, ownerEpoch: 2 }, async () => ((contentCalls += 1), encodeCatalogMirror({ catalog })), silentLogger());
  mirror.changed();
  catalog = journal(['a', 'b']);
  mirror.changed(); // during the first put: one more put, not two
  catalog = journal(['a', 'b', 'c']);
  mirror.changed();
  await mirror.flush();
  expect(contentCalls).toBe(2);
  expect((await fetchCatalogMirror(backend))?.catalog).toBe(journal(['a', 'b', 'c']));
  expect((await listObjectNames(backend.asds, 'vol/v1/catalog/')).names).toHaveLength(1);

  const older = new CatalogMirror({ ...backend, ownerEpoch: 1 }, async () => encodeCatalogMirror({ catalog: journal(['stale']) }), silentLogger());
  await older.flush(); // a late put of an old owner (its fenced store would refuse it; here it lands)
  expect((await fetchCatalogMirror(backend))?.catalog).toBe(journal(['a', 'b', 'c'])); // the higher epoch wins, and was not deleted
  const next = new CatalogMirror({ ...backend, ownerEpoch: 3 }, async () => encodeCatalogMirror({ catalog: journal(['d']), clone: '{"x":1}' }), silentLogger());
  await next.flush(); // nothing changed at epoch 3 yet: a flush puts the first copy, and clears the others
  expect(await fetchCatalogMirror(backend)).toEqual({ catalog: journal(['d']), clone: '{"x":1}' });
  expect((await listObjectNames(backend.asds, 'vol/v1/catalog/')).names).toHaveLength(1);
});

it('has no copy for a volume that never had one, and refuses a copy whose journal is not a catalog', async () => {
  expect(await fetchCatalogMirror(backend)).toBeUndefined();
  expect(() => decodeCatalogMirror(encodeCatalogMirror({ catalog: 'not json\n' + journal(['a']) }), 'x')).toThrow(/./);
  expect(() => decodeCatalogMirror(Buffer.from('{"format":"other","version":1,"catalog":""}'), 'x')).toThrow(/not a catalog copy/);
});

it('spaces its puts: a burst of changes costs one put at once and one when the interval is over, however many puts would fit', async () => {
  let catalog = journal([]);
  let contentCalls = 0;
  const mirror = new CatalogMirror({ ...backend, ownerEpoch: 1 }, async () => ((contentCalls += 1), encodeCatalogMirror({ catalog })), silentLogger(), {
    intervalMinMs: 60_000,
    putDurationsMin: 9,
  });
  const names: string[] = [];
  for (let i = 0; i < 50; i++) {
    names.push(`s${i}`);
    catalog = journal(names);
    mirror.changed();
    await new Promise((resolve) => setTimeout(resolve, 5)); // each put (a few ms here) finishes before the next change
  }
  // Putting the whole catalog after every change made each snapshot cost O(snapshots) (50 puts here).
  expect(contentCalls).toBe(1);
  await mirror.flush(); // a handover does not wait for the interval
  expect(contentCalls).toBe(2);
  expect((await fetchCatalogMirror(backend))?.catalog).toBe(journal(names));
  await mirror.flush(); // nothing new
  expect(contentCalls).toBe(2);
});

it('puts an urgent change (a clone pins a snapshot) without waiting for the interval', async () => {
  let catalog = journal(['a']);
  const mirror = new CatalogMirror({ ...backend, ownerEpoch: 1 }, async () => encodeCatalogMirror({ catalog }), silentLogger(), { intervalMinMs: 60_000, putDurationsMin: 9 });
  mirror.changed();
  await until(() => mirror.putCount === 1);
  catalog = journal(['a', 'b']);
  mirror.changed(); // waits for the interval
  catalog = journal(['a', 'b', 'c']);
  mirror.changed(true); // ends the wait
  await until(async () => (await fetchCatalogMirror(backend))?.catalog === journal(['a', 'b', 'c']));
  expect(mirror.putCount).toBe(2);
});

it('encodes a large catalog copy a slice at a time, byte for byte what the one-piece encoder gives', async () => {
  const state = emptyCatalog();
  for (let id = 1; id <= 5_000; id++) applyCatalogEvent(state, { e: 'create', id, name: `s"\\${id}é`, createdAtMs: id, sizeBytes: 4096, labels: { k: 'v\u2028' } });
  applyCatalogEvent(state, { e: 'clone', clone: 'c', snapshotId: 7 });
  let pauses = 0;
  const slices = [...catalogJournalSlices(state, 1_000)];
  expect(slices.join('')).toBe(encodeCatalogJournal(state));
  expect(slices.length).toBeGreaterThanOrEqual(5);
  for (const clone of [undefined, '{"parentVolume":"p"}']) {
    const parts = await encodeCatalogMirrorSlices(catalogJournalSlices(state, 1_000), clone, async () => (pauses += 1));
    const whole = encodeCatalogMirror(clone === undefined ? { catalog: encodeCatalogJournal(state) } : { catalog: encodeCatalogJournal(state), clone });
    expect(Buffer.concat(parts).equals(whole)).toBe(true);
  }
  expect(pauses).toBe(2 * slices.length); // the router's event loop runs between slices
});
