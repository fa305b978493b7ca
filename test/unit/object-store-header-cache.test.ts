import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { DirectoryAsd } from '../../backend/asd-directory.ts';
import { ErasureObjectStore } from '../../backend/object-store.ts';
import { parsePreset } from '../../backend/preset.ts';

let root: string;
let asds: DirectoryAsd[];
beforeEach(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'keel-store-cache-'));
  asds = [0, 1, 2].map((i) => new DirectoryAsd(`asd-${i}`, path.join(root, `asd-${i}`)));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

it('a store forgets cached headers under a prefix, so another router\'s delete reads as not found, not as a broken stripe', async () => {
  const store = new ErasureObjectStore({ asds, preset: parsePreset({ k: 2, m: 1 }) });
  const other = new ErasureObjectStore({ asds, preset: parsePreset({ k: 2, m: 1 }) });
  const name = 'vol/v1/sco/00000001';
  await store.putObject(name, Buffer.alloc(64 * 1024, 7));
  expect(await store.statObject(name)).toMatchObject({ sizeBytes: 64 * 1024 }); // header now cached here
  await other.deleteObject(name); // the volume's next owner scrubbed it
  await expect(store.readRange(name, 0, 4096)).rejects.toMatchObject({ code: 'IO' }); // the stale header
  store.forgetPrefix('vol/v1/'); // what a router does when it opens the volume
  await expect(store.statObject(name)).rejects.toMatchObject({ code: 'OBJECT_NOT_FOUND' });
});
