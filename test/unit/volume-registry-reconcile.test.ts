/**
 * Regression: a reconcile whose volume list was read before a volume was created must not take that
 * volume — opened while the list was in flight — for deleted (that destroyed its data under load).
 */
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import type { Coordination, VolumeRecord } from '../../shared/coordination.ts';
import { EmbeddedCoordination } from '../../shared/coordination-embedded.ts';
import { silentLogger } from '../../shared/logger.ts';
import { VolumeRegistry } from '../../router/volume-registry.ts';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'keel-registry-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

it('keeps a volume opened while a reconcile was reading an older volume list', async () => {
  const embedded = await EmbeddedCoordination.open(dir);
  let releaseList!: () => void;
  const listGate = new Promise<void>((resolve) => (releaseList = resolve));
  let staleList: VolumeRecord[] | undefined;
  const coordination: Coordination = Object.assign(Object.create(embedded) as Coordination, {
    listVolumes: async () => {
      staleList ??= await embedded.listVolumes(); // read before the volume exists...
      await listGate; // ...and answered after it was opened
      return staleList;
    },
  });
  const registry = new VolumeRegistry('r1', path.join(dir, 'r1'), coordination, silentLogger());
  const reconciling = registry.reconcile();
  await new Promise((r) => setTimeout(r, 20));
  await embedded.createVolume({ name: 'v', sizeBytes: 64 << 20, scoSizeBytes: 4 << 20, owner: 'r1' }, Date.now());
  const target = await registry.openVolume('v');
  await target.write(0, Buffer.alloc(4096, 1), false);
  releaseList();
  await reconciling;
  expect(registry.ownedNames()).toEqual(['v']);
  expect((await stat(registry.volumeDir('v'))).isDirectory()).toBe(true);
  expect((await target.read(0, 4096)).equals(Buffer.alloc(4096, 1))).toBe(true);
  await registry.closeAll();
});

it("refuses to reopen a volume whose driver failed here at the current epoch, and a restart's openOwnedVolumes reopens it and clears the mark", async () => {
  const coordination = await EmbeddedCoordination.open(dir);
  await coordination.createVolume({ name: 'v', sizeBytes: 64 << 20, scoSizeBytes: 4 << 20, owner: 'r1' }, Date.now());
  expect(await coordination.setVolumeDtl('v', 1, { ownerFailedEpoch: 1 })).toBe(true); // as giveUpFailed records it
  const registry = new VolumeRegistry('r1', path.join(dir, 'r1'), coordination, silentLogger());
  await expect(registry.openVolume('v')).rejects.toMatchObject({ code: 'NOT_OWNER' }); // edges go to the DTL peer
  await registry.openOwnedVolumes(); // what a restarted router does first
  expect(registry.ownedNames()).toEqual(['v']);
  expect((await coordination.getVolume('v'))?.ownerFailedEpoch).toBe(0);
  const target = await registry.openVolume('v');
  await target.write(0, Buffer.alloc(4096, 2), false);
  expect((await target.read(0, 4096)).equals(Buffer.alloc(4096, 2))).toBe(true);
  await registry.closeAll();
});

it('reopens a failed volume at the operator\'s request on its owner, and refuses one owned elsewhere', async () => {
  const coordination = await EmbeddedCoordination.open(dir);
  await coordination.createVolume({ name: 'v', sizeBytes: 64 << 20, scoSizeBytes: 4 << 20, owner: 'r1' }, Date.now());
  await coordination.createVolume({ name: 'w', sizeBytes: 64 << 20, scoSizeBytes: 4 << 20, owner: 'r2' }, Date.now());
  expect(await coordination.setVolumeDtl('v', 1, { ownerFailedEpoch: 1 })).toBe(true);
  const registry = new VolumeRegistry('r1', path.join(dir, 'r1'), coordination, silentLogger());
  await expect(registry.openVolume('v')).rejects.toMatchObject({ code: 'NOT_OWNER' });
  expect(await registry.openByOperator('v')).toBe(true); // `keel volume takeover v --to r1`
  expect((await coordination.getVolume('v'))?.ownerFailedEpoch).toBe(0);
  expect(registry.ownedNames()).toEqual(['v']);
  expect(await registry.openByOperator('w')).toBe(false);
  expect(registry.ownedNames()).toEqual(['v']);
  await registry.closeAll();
});

it('opens every other owned volume at start when one cannot be recovered, and keeps refusing that one with its error', async () => {
  const coordination = await EmbeddedCoordination.open(dir);
  for (const name of ['bad', 'good']) await coordination.createVolume({ name, sizeBytes: 64 << 20, scoSizeBytes: 4 << 20, owner: 'r1' }, Date.now());
  const first = new VolumeRegistry('r1', path.join(dir, 'r1'), coordination, silentLogger());
  await first.openOwnedVolumes();
  await (await first.openVolume('good')).write(0, Buffer.alloc(4096, 7), false);
  await first.closeAll();
  await writeFile(path.join(first.volumeDir('bad'), 'volume.json'), '{ torn'); // what a crash or a bad disk can leave

  const restarted = new VolumeRegistry('r1', path.join(dir, 'r1'), coordination, silentLogger());
  await restarted.openOwnedVolumes(); // threw CORRUPT before, and the router exited
  expect(restarted.ownedNames()).toEqual(['good']);
  expect((await (await restarted.openVolume('good')).read(0, 4096)).equals(Buffer.alloc(4096, 7))).toBe(true);
  await expect(restarted.openVolume('bad')).rejects.toMatchObject({ code: 'CORRUPT' });
  await restarted.closeAll();
});

it('keeps (and serves) a volume that vanished from coordination without a tombstone, and destroys it once deleted', async () => {
  const embedded = await EmbeddedCoordination.open(dir);
  await embedded.createVolume({ name: 'v', sizeBytes: 64 << 20, scoSizeBytes: 4 << 20, owner: 'r1' }, Date.now());
  let lostState = false;
  const coordination: Coordination = Object.assign(Object.create(embedded) as Coordination, {
    listVolumes: async () => (lostState ? [] : embedded.listVolumes()), // a Redis restarted without persistence
  });
  const registry = new VolumeRegistry('r1', path.join(dir, 'r1'), coordination, silentLogger());
  const target = await registry.openVolume('v');
  await target.write(0, Buffer.alloc(4096, 3), false);
  lostState = true;
  await registry.reconcile();
  expect(registry.ownedNames()).toEqual(['v']);
  expect((await target.read(0, 4096)).equals(Buffer.alloc(4096, 3))).toBe(true);
  lostState = false;
  await embedded.deleteVolume('v'); // `keel volume delete v`: a tombstone
  await registry.reconcile();
  expect(registry.ownedNames()).toEqual([]);
  await expect(stat(registry.volumeDir('v'))).rejects.toThrow();
  await registry.closeAll();
});

it('a volume deleted and created again under its name at once starts empty, and keeps its own writes across a reconcile and a restart', async () => {
  const coordination = await EmbeddedCoordination.open(dir);
  const spec = { name: 'v', sizeBytes: 64 << 20, scoSizeBytes: 4 << 20, owner: 'r1' };
  await coordination.createVolume(spec, Date.now());
  let registry = new VolumeRegistry('r1', path.join(dir, 'r1'), coordination, silentLogger());
  await (await registry.openVolume('v')).write(0, Buffer.alloc(4096, 1), true);
  await coordination.deleteVolume('v');
  await coordination.createVolume(spec, Date.now()); // within the owner's reconcile period
  const fresh = await registry.openVolume('v');
  expect((await fresh.read(0, 4096)).equals(Buffer.alloc(4096))).toBe(true); // not the deleted volume's data
  await fresh.write(4096, Buffer.alloc(4096, 2), true);
  await registry.reconcile(); // the deleted volume's tombstone must not destroy the new one
  expect(registry.ownedNames()).toEqual(['v']);
  await registry.closeAll();
  registry = new VolumeRegistry('r1', path.join(dir, 'r1'), coordination, silentLogger());
  const reopened = await registry.openVolume('v');
  expect((await reopened.read(0, 8192)).equals(Buffer.concat([Buffer.alloc(4096), Buffer.alloc(4096, 2)]))).toBe(true);
  await registry.closeAll();
});

it('a name that coordination gives to a new volume, the old one never deleted (coordination lost it): the old data is moved aside, not served and not destroyed', async () => {
  const lost = await EmbeddedCoordination.open(path.join(dir, 'before'));
  const spec = { name: 'v', sizeBytes: 64 << 20, scoSizeBytes: 4 << 20, owner: 'r1' };
  const old = await lost.createVolume(spec, Date.now());
  let registry = new VolumeRegistry('r1', path.join(dir, 'r1'), lost, silentLogger());
  await (await registry.openVolume('v')).write(0, Buffer.alloc(4096, 7), true);
  await registry.closeAll();
  const fresh = await EmbeddedCoordination.open(path.join(dir, 'after')); // the state is gone; `keel up` creates 'v' again
  await fresh.createVolume(spec, Date.now());
  registry = new VolumeRegistry('r1', path.join(dir, 'r1'), fresh, silentLogger());
  const target = await registry.openVolume('v');
  expect((await target.read(0, 4096)).equals(Buffer.alloc(4096))).toBe(true);
  await registry.closeAll();
  const kept = path.join(dir, 'r1', 'volumes', '.kept', old.id);
  expect((await stat(path.join(kept, 'volume.json'))).isFile()).toBe(true);
});

it('at start opens only what it still owns: a volume taken over after the list was read stays closed, and a stop opens no more', async () => {
  const embedded = await EmbeddedCoordination.open(dir);
  for (const name of ['kept', 'taken', 'later']) await embedded.createVolume({ name, sizeBytes: 64 << 20, scoSizeBytes: 4 << 20, owner: 'r1' }, Date.now());
  const listedAtStart = await embedded.listVolumes();
  expect(await embedded.claimVolume('taken', 'r2', 1)).toMatchObject({ owner: 'r2', ownerEpoch: 2 }); // another router took it over meanwhile
  const coordination: Coordination = Object.assign(Object.create(embedded) as Coordination, { listVolumes: async () => listedAtStart });
  const registry = new VolumeRegistry('r1', path.join(dir, 'r1'), coordination, silentLogger());
  const opened = await registry.openOwnedVolumes();
  expect(registry.ownedNames().sort()).toEqual(['kept', 'later']);
  expect(opened).toMatchObject({ failed: 0 });
  await registry.closeAll();

  const stopping = new VolumeRegistry('r1', path.join(dir, 'r1'), coordination, silentLogger());
  stopping.stopOpening(); // SIGTERM before the background opens got going
  await stopping.openOwnedVolumes();
  expect(stopping.ownedNames()).toEqual([]);
  await stopping.closeAll();
});
