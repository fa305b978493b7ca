// The behaviour shared with Redis is in test/helpers/coordination-contract.ts, run on the embedded
// implementation by coordination-contract-embedded.test.ts. What is left here is specific to the file.
import { promises as fsPromises } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { EmbeddedCoordination } from '../../shared/coordination-embedded.ts';
import { openCoordination } from '../../shared/coordination-factory.ts';
import { isKeelError } from '../../shared/errors.ts';

describe('EmbeddedCoordination', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'keel-coord-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reports a corrupt document clearly instead of crashing', async () => {
    await writeFile(path.join(dir, 'coordination.json'), '{not json');
    const err = await EmbeddedCoordination.open(dir).catch((e) => e);
    expect(isKeelError(err, 'CORRUPT')).toBe(true);
  });

  it('a lock lost while it is held (taken over as stale) fails the update with IO instead of crashing the process, and writes nothing', async () => {
    const c = await EmbeddedCoordination.open(dir);
    const file = path.join(dir, 'coordination.json');
    const readFile = fsPromises.readFile.bind(fsPromises);
    // Inside the lock: another process takes it over (its directory goes), and this one stalls past the
    // lock's refresh, which then finds the lock compromised.
    const spy = vi.spyOn(fsPromises, 'readFile').mockImplementationOnce(async (...args: Parameters<typeof readFile>) => {
      await rm(`${file}.lock`, { recursive: true, force: true });
      await new Promise((r) => setTimeout(r, 1500));
      return readFile(...args);
    });
    try {
      const err = await c.createVolume({ name: 'v', sizeBytes: 4096, scoSizeBytes: 4 << 20 }, 0).catch((e) => e);
      expect(isKeelError(err, 'IO'), String(err)).toBe(true);
      expect(String(err.message)).toMatch(/lost the lock/);
    } finally {
      spy.mockRestore();
    }
    expect(await c.getVolume('v')).toBeUndefined();
    await c.createVolume({ name: 'v', sizeBytes: 4096, scoSizeBytes: 4 << 20 }, 0); // the next update takes the lock again
    expect((await c.getVolume('v'))?.name).toBe('v');
  });

  it('is what openCoordination picks without a Redis URL, on the document under the data directory', async () => {
    const c = await openCoordination({ dataDir: dir });
    expect(c).toBeInstanceOf(EmbeddedCoordination);
    await c.createVolume({ name: 'v', sizeBytes: 4096, scoSizeBytes: 4 << 20 }, 0);
    expect((await (await EmbeddedCoordination.open(dir)).getVolume('v'))?.name).toBe('v');
    expect(await openCoordination({ dataDir: dir, redisUrl: '' })).toBeInstanceOf(EmbeddedCoordination);
  });
});
