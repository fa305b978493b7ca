// The behaviour shared with Redis is in test/helpers/coordination-contract.ts, run on the embedded
// implementation by coordination-contract-embedded.test.ts. What is left here is specific to the file.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
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

  it('is what openCoordination picks without a Redis URL, on the document under the data directory', async () => {
    const c = await openCoordination({ dataDir: dir });
    expect(c).toBeInstanceOf(EmbeddedCoordination);
    await c.createVolume({ name: 'v', sizeBytes: 4096, scoSizeBytes: 4 << 20 }, 0);
    expect((await (await EmbeddedCoordination.open(dir)).getVolume('v'))?.name).toBe('v');
    expect(await openCoordination({ dataDir: dir, redisUrl: '' })).toBeInstanceOf(EmbeddedCoordination);
  });
});
