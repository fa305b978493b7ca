import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FaultyAsd } from '../../backend/asd.ts';
import { DirectoryAsd } from '../../backend/asd-directory.ts';
import { listObjectNames } from '../../backend/object-listing.ts';
import { limits } from '../../shared/limits.ts';

describe('listObjectNames', () => {
  let root: string;
  let asds: FaultyAsd[];

  beforeAll(async () => {
    root = await mkdtemp(path.join(tmpdir(), 'keel-listing-'));
    asds = [0, 1, 2].map((i) => new FaultyAsd(new DirectoryAsd(`asd-${i}`, path.join(root, `asd-${i}`))));
    // Object a on asd-0 and asd-1, object b on asd-1 and asd-2 (one fragment each).
    for (const [asd, key] of [[0, 'vol/x/a.frag0'], [1, 'vol/x/a.frag1'], [1, 'vol/x/b.frag0'], [2, 'vol/x/b.frag1']] as const)
      await asds[asd]!.put(key, [Buffer.from('f')]);
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('gives a whole listing its own deadline, longer than one request', async () => {
    expect(limits.backendListTimeoutMs).toBeGreaterThan(limits.backendRequestTimeoutMs);
    for (const asd of asds) asd.setFaults({ delayMs: 300 });
    try {
      expect((await listObjectNames(asds, 'vol/x/', { timeoutMs: 2_000 })).names).toEqual(['vol/x/a', 'vol/x/b']);
      const started = Date.now();
      const slow = listObjectNames(asds, 'vol/x/', { timeoutMs: 100 });
      await expect(slow).rejects.toMatchObject({ code: 'IO', message: expect.stringMatching(/listing vol\/x\/: 3 of 3 ASDs did not answer \(asd-\d: /) });
      expect(Date.now() - started).toBeLessThan(1_000);
    } finally {
      for (const asd of asds) asd.clearFaults();
    }
  });

  it('finds every object while one ASD answers, and says which ones did not', async () => {
    asds[0]!.setFaults({ fail: ['list'] });
    asds[2]!.setFaults({ fail: ['list'] });
    try {
      const listing = await listObjectNames(asds, 'vol/x/');
      expect(listing.names).toEqual(['vol/x/a', 'vol/x/b']);
      expect(listing.unreachable.map((u) => u.asdId).sort()).toEqual(['asd-0', 'asd-2']);
      await expect(listObjectNames(asds, 'vol/x/', { unreachableMax: 1 })).rejects.toMatchObject({ code: 'IO' });
    } finally {
      for (const asd of asds) asd.clearFaults();
    }
  });
});
