import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { DirectoryAsd } from '../../backend/asd-directory.ts';
import { listObjectNames } from '../../backend/object-listing.ts';
import { ErasureObjectStore } from '../../backend/object-store.ts';
import { parsePreset } from '../../backend/preset.ts';
import { CatalogMirror, fetchCatalogMirror } from '../../router/catalog-mirror.ts';
import { decodeCatalogMirror, encodeCatalogMirror } from '../../router/snapshot-catalog-format.ts';
import type { VolumeBackend } from '../../router/volume-backend.ts';
import { silentLogger } from '../../shared/logger.ts';

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
  const mirror = new CatalogMirror({ ...backend, ownerEpoch: 2 }, async () => ((contentCalls += 1), { catalog }), silentLogger());
  mirror.changed();
  catalog = journal(['a', 'b']);
  mirror.changed(); // during the first put: one more put, not two
  catalog = journal(['a', 'b', 'c']);
  mirror.changed();
  await mirror.flush();
  expect(contentCalls).toBe(2);
  expect((await fetchCatalogMirror(backend))?.catalog).toBe(journal(['a', 'b', 'c']));
  expect((await listObjectNames(backend.asds, 'vol/v1/catalog/')).names).toHaveLength(1);

  const older = new CatalogMirror({ ...backend, ownerEpoch: 1 }, async () => ({ catalog: journal(['stale']) }), silentLogger());
  await older.flush(); // a late put of an old owner (its fenced store would refuse it; here it lands)
  expect((await fetchCatalogMirror(backend))?.catalog).toBe(journal(['a', 'b', 'c'])); // the higher epoch wins, and was not deleted
  const next = new CatalogMirror({ ...backend, ownerEpoch: 3 }, async () => ({ catalog: journal(['d']), clone: '{"x":1}' }), silentLogger());
  await next.flush(); // nothing changed at epoch 3 yet: a flush puts the first copy, and clears the others
  expect(await fetchCatalogMirror(backend)).toEqual({ catalog: journal(['d']), clone: '{"x":1}' });
  expect((await listObjectNames(backend.asds, 'vol/v1/catalog/')).names).toHaveLength(1);
});

it('has no copy for a volume that never had one, and refuses a copy whose journal is not a catalog', async () => {
  expect(await fetchCatalogMirror(backend)).toBeUndefined();
  expect(() => decodeCatalogMirror(encodeCatalogMirror({ catalog: 'not json\n' + journal(['a']) }), 'x')).toThrow(/./);
  expect(() => decodeCatalogMirror(Buffer.from('{"format":"other","version":1,"catalog":""}'), 'x')).toThrow(/not a catalog copy/);
});
