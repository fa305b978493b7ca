import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { EmbeddedCoordination } from '../../shared/coordination-embedded.ts';
import { isKeelError } from '../../shared/errors.ts';

describe('EmbeddedCoordination', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'keel-coord-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('creates, lists, resizes and deletes volumes, and refuses a taken name', async () => {
    const c = await EmbeddedCoordination.open(dir);
    await c.createVolume({ name: 'a', sizeBytes: 1 << 30, scoSizeBytes: 64 << 20 }, 1);
    await c.createVolume({ name: 'b', sizeBytes: 2 << 30, scoSizeBytes: 64 << 20, owner: 'r1' }, 2);
    await expect(c.createVolume({ name: 'a', sizeBytes: 1, scoSizeBytes: 1 }, 3)).rejects.toMatchObject({ code: 'VOLUME_EXISTS' });
    expect((await c.listVolumes()).map((v) => [v.name, v.owner, v.ownerEpoch])).toEqual([
      ['a', '', 0],
      ['b', 'r1', 1],
    ]);
    expect((await c.resizeVolume('a', 3 << 30)).sizeBytes).toBe(3 << 30);
    await c.deleteVolume('a');
    expect(await c.getVolume('a')).toBeUndefined();
    await expect(c.deleteVolume('a')).rejects.toMatchObject({ code: 'VOLUME_NOT_FOUND' });
  });

  it('persists across instances (another process sees the same document)', async () => {
    const first = await EmbeddedCoordination.open(dir);
    await first.registerRouter({ id: 'r1', address: '127.0.0.1:1', pid: 1, startedAtMs: 0, heartbeatAtMs: 0, state: 'up' });
    const second = await EmbeddedCoordination.open(dir);
    await second.heartbeat('r1', 42);
    expect((await first.listRouters())[0].heartbeatAtMs).toBe(42);
    await expect(second.heartbeat('nope', 1)).rejects.toMatchObject({ code: 'ROUTER_NOT_FOUND' });
  });

  it('lets exactly one of many concurrent claimers win each epoch', async () => {
    const setup = await EmbeddedCoordination.open(dir);
    await setup.createVolume({ name: 'v', sizeBytes: 4096, scoSizeBytes: 4 << 20 }, 0);
    const instances = await Promise.all(Array.from({ length: 8 }, () => EmbeddedCoordination.open(dir)));
    const results = await Promise.all(instances.map((c, i) => c.claimVolume('v', `r${i}`, 0)));
    const winners = results.filter((r) => r !== undefined);
    expect(winners).toHaveLength(1);
    const record = await setup.getVolume('v');
    expect(record).toMatchObject({ owner: winners[0]!.owner, ownerEpoch: 1 });
  });

  it('reports a corrupt document clearly instead of crashing', async () => {
    await writeFile(path.join(dir, 'coordination.json'), '{not json');
    const err = await EmbeddedCoordination.open(dir).catch((e) => e);
    expect(isKeelError(err, 'CORRUPT')).toBe(true);
  });
});

describe('EmbeddedCoordination: vPool and volume ids', () => {
  it('stores the vPool configuration and gives every volume a distinct id', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'keel-coord-'));
    try {
      const c = await EmbeddedCoordination.open(dir);
      expect(await c.getVpool()).toBeUndefined();
      await c.setVpool({ name: 'pool', backend: { preset: { k: 4, m: 2 } } });
      expect(await (await EmbeddedCoordination.open(dir)).getVpool()).toEqual({ name: 'pool', backend: { preset: { k: 4, m: 2 } } });
      const a = await c.createVolume({ name: 'a', sizeBytes: 4096, scoSizeBytes: 4 << 20 }, 0);
      await c.deleteVolume('a');
      const again = await c.createVolume({ name: 'a', sizeBytes: 4096, scoSizeBytes: 4 << 20 }, 0);
      expect(again.id).toMatch(/^[0-9a-f-]{36}$/);
      expect(again.id).not.toBe(a.id);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
