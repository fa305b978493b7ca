/**
 * The one behaviour contract of shared/coordination.ts, run against every implementation (embedded
 * document, Redis). Each test gets a fresh, empty store; `store.open()` opens another instance on the
 * same state, as another process would.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { cloneFamilyPin, ownerHasFailed, type Coordination, type RouterRecord, type VolumeSpec } from '../../shared/coordination.ts';
import { isKeelError, type KeelErrorCode } from '../../shared/errors.ts';

export interface CoordinationStore {
  /** Opens another instance on this store's state. */
  open(): Promise<Coordination>;
  /** Closes every instance opened through `open` and removes the state. */
  destroy(): Promise<void>;
}

export type MakeCoordinationStore = () => Promise<CoordinationStore>;

/** A store that closes the instances it opened before removing its state. */
export function coordinationStore(open: () => Promise<Coordination>, removeState: () => Promise<void>): CoordinationStore {
  const opened: Coordination[] = [];
  return {
    open: async () => {
      const instance = await open();
      opened.push(instance);
      return instance;
    },
    destroy: async () => {
      await Promise.all(opened.splice(0).map((c) => c.close()));
      await removeState();
    },
  };
}

const MiB = 1024 * 1024;
const spec = (name: string, extra: Partial<VolumeSpec> = {}): VolumeSpec => ({ name, sizeBytes: 64 * MiB, scoSizeBytes: 4 * MiB, ...extra });
const router = (id: string, extra: Partial<RouterRecord> = {}): RouterRecord => ({
  id,
  address: `127.0.0.1:${10_000 + id.length}`,
  pid: 4242,
  startedAtMs: 1_700_000_000_000,
  heartbeatAtMs: 1_700_000_000_500,
  state: 'up',
  ...extra,
});

async function expectKeelError(promise: Promise<unknown>, code: KeelErrorCode): Promise<void> {
  const err = await promise.then(
    (value) => new Error(`expected ${code}, resolved with ${JSON.stringify(value)}`),
    (e: unknown) => e,
  );
  expect(isKeelError(err) ? err.code : err).toBe(code);
}

export function coordinationContract(name: string, makeCoordination: MakeCoordinationStore): void {
  describe(`coordination contract: ${name}`, () => {
    let store: CoordinationStore;
    let c: Coordination;
    beforeEach(async () => {
      store = await makeCoordination();
      c = await store.open();
    });
    afterEach(async () => {
      await store.destroy();
    });

    describe('routers', () => {
      it('starts empty, then lists registered routers sorted by id with every field', async () => {
        expect(await c.listRouters()).toEqual([]);
        await c.registerRouter(router('r2'));
        await c.registerRouter(router('r1', { mgmtAddress: '127.0.0.1:9000', state: 'draining' }));
        const routers = await c.listRouters();
        expect(routers).toStrictEqual([router('r1', { mgmtAddress: '127.0.0.1:9000', state: 'draining' }), router('r2')]);
        expect('mgmtAddress' in routers[1]!).toBe(false);
      });

      it('replaces the whole record when a router registers again under its id', async () => {
        await c.registerRouter(router('r1', { mgmtAddress: '127.0.0.1:9000', state: 'down', pid: 1 }));
        await c.registerRouter(router('r1', { pid: 2, address: '10.0.0.1:7000' }));
        const routers = await c.listRouters();
        expect(routers).toStrictEqual([router('r1', { pid: 2, address: '10.0.0.1:7000' })]);
      });

      it('refreshes the heartbeat and changes the state of one router only', async () => {
        await c.registerRouter(router('r1'));
        await c.registerRouter(router('r2'));
        await c.heartbeat('r1', 1_800_000_000_123);
        await c.setRouterState('r2', 'draining');
        await c.setRouterState('r2', 'down');
        const [r1, r2] = await c.listRouters();
        expect(r1).toStrictEqual(router('r1', { heartbeatAtMs: 1_800_000_000_123 }));
        expect(r2).toStrictEqual(router('r2', { state: 'down' }));
      });

      it('throws ROUTER_NOT_FOUND for a heartbeat or state change of an unknown router, and creates nothing', async () => {
        await expectKeelError(c.heartbeat('ghost', 1), 'ROUTER_NOT_FOUND');
        await expectKeelError(c.setRouterState('ghost', 'down'), 'ROUTER_NOT_FOUND');
        expect(await c.listRouters()).toEqual([]);
      });
    });

    describe('volumes', () => {
      it('creates unowned volumes at epoch 0 and owned ones at epoch 1, with the creation time', async () => {
        const a = await c.createVolume(spec('a'), 111);
        const b = await c.createVolume(spec('b', { owner: 'r1' }), 222);
        expect(a).toMatchObject({ name: 'a', sizeBytes: 64 * MiB, scoSizeBytes: 4 * MiB, owner: '', ownerEpoch: 0, createdAtMs: 111 });
        expect(b).toMatchObject({ name: 'b', owner: 'r1', ownerEpoch: 1, createdAtMs: 222 });
        expect(await c.getVolume('a')).toStrictEqual(a);
        expect(await c.getVolume('b')).toStrictEqual(b);
      });

      it('returns undefined for a volume that does not exist', async () => {
        expect(await c.getVolume('nope')).toBeUndefined();
      });

      it('refuses a taken name with VOLUME_EXISTS and leaves the first volume unchanged', async () => {
        const first = await c.createVolume(spec('a', { owner: 'r1' }), 1);
        await expectKeelError(c.createVolume(spec('a', { sizeBytes: 4096 }), 2), 'VOLUME_EXISTS');
        expect(await c.getVolume('a')).toStrictEqual(first);
        expect(await c.listVolumes()).toHaveLength(1);
      });

      it('lists volumes sorted by name', async () => {
        expect(await c.listVolumes()).toEqual([]);
        for (const name of ['m', 'a', 'z', 'b']) await c.createVolume(spec(name), 0);
        expect((await c.listVolumes()).map((v) => v.name)).toEqual(['a', 'b', 'm', 'z']);
      });

      it('keeps names apart that contain separators or prefix each other', async () => {
        const names = ['a', 'a:b', 'a:b:c', 'vol with spaces', 'ünïcödé-卷', 'router:r1'];
        for (const name of names) await c.createVolume(spec(name, { sizeBytes: 4096 * (names.indexOf(name) + 1) }), 0);
        for (const name of names) expect((await c.getVolume(name))?.sizeBytes).toBe(4096 * (names.indexOf(name) + 1));
        await c.deleteVolume('a');
        expect((await c.listVolumes()).map((v) => v.name).sort()).toEqual(names.slice(1).sort());
        expect(await c.listRouters()).toEqual([]);
      });

      it("treats names of JavaScript's object built-ins as names like any other", async () => {
        const names = ['constructor', 'toString', 'valueOf', 'hasOwnProperty', '__proto__'];
        for (const name of names) expect(await c.getVolume(name)).toBeUndefined();
        await expectKeelError(c.resizeVolume('constructor', 8192), 'VOLUME_NOT_FOUND');
        await expectKeelError(c.deleteVolume('toString'), 'VOLUME_NOT_FOUND');
        await expectKeelError(c.heartbeat('constructor', 1), 'ROUTER_NOT_FOUND');
        for (const name of names) await c.createVolume(spec(name, { sizeBytes: 4096 * (names.indexOf(name) + 1) }), 0);
        for (const name of names) expect((await c.getVolume(name))?.sizeBytes).toBe(4096 * (names.indexOf(name) + 1));
        expect((await c.listVolumes()).map((v) => v.name).sort()).toEqual([...names].sort());
        await c.deleteVolume('__proto__');
        expect(await c.getVolume('__proto__')).toBeUndefined();
        expect(await c.listVolumes()).toHaveLength(names.length - 1);
      });

      it("keeps a clone's parent (cloneOf), and cloneFamilyPin pins the clone and its parent but not others", async () => {
        await c.createVolume(spec('base', { owner: 'r1' }), 0);
        await c.createVolume(spec('kid', { owner: 'r1', cloneOf: 'base' }), 0);
        await c.createVolume(spec('loner', { owner: 'r1' }), 0);
        expect((await c.getVolume('kid'))?.cloneOf).toBe('base');
        expect((await c.getVolume('base'))?.cloneOf).toBeUndefined();
        const all = await c.listVolumes();
        const pin = (name: string) => cloneFamilyPin(all.find((v) => v.name === name)!, all);
        expect(pin('kid')).toMatch(/clone of 'base'/);
        expect(pin('base')).toMatch(/has clones .*\(kid\)/);
        expect(pin('loner')).toBeUndefined();
        await c.claimVolume('kid', 'r2', 1);
        expect((await c.getVolume('kid'))?.cloneOf).toBe('base'); // an ownership change keeps it
      });

      it("leaves a tombstone of a deleted volume's id, and none for a live, unknown or re-created one", async () => {
        const first = await c.createVolume(spec('gone'), 0);
        const live = await c.createVolume(spec('here'), 0);
        expect(await c.volumeDeleted(first.id)).toBe(false);
        await c.deleteVolume('gone');
        expect(await c.volumeDeleted(first.id)).toBe(true);
        expect(await c.volumeDeleted(live.id)).toBe(false);
        expect(await c.volumeDeleted('no-such-id')).toBe(false);
        const again = await c.createVolume(spec('gone'), 1); // a new id: not deleted
        expect(await c.volumeDeleted(again.id)).toBe(false);
      });

      it('stores sizes up to the volume size limit exactly', async () => {
        const huge = 2 ** 50 - 4096;
        await c.createVolume(spec('huge', { sizeBytes: huge, scoSizeBytes: 128 * MiB }), 1_700_000_000_001);
        expect(await c.getVolume('huge')).toMatchObject({ sizeBytes: huge, scoSizeBytes: 128 * MiB, createdAtMs: 1_700_000_000_001 });
        expect((await c.resizeVolume('huge', 2 ** 50)).sizeBytes).toBe(2 ** 50);
        expect((await c.getVolume('huge'))?.sizeBytes).toBe(2 ** 50);
      });

      it('resizes a volume, keeps its other fields, and throws VOLUME_NOT_FOUND for an unknown one', async () => {
        const before = await c.createVolume(spec('a', { owner: 'r1' }), 5);
        const after = await c.resizeVolume('a', 128 * MiB);
        expect(after).toStrictEqual({ ...before, sizeBytes: 128 * MiB });
        expect(await c.getVolume('a')).toStrictEqual(after);
        await expectKeelError(c.resizeVolume('nope', 4096), 'VOLUME_NOT_FOUND');
        expect(await c.getVolume('nope')).toBeUndefined();
      });

      it('deletes a volume, then throws VOLUME_NOT_FOUND for it, and lets the name be created again', async () => {
        await c.createVolume(spec('a'), 0);
        await c.createVolume(spec('b'), 0);
        await c.deleteVolume('a');
        expect(await c.getVolume('a')).toBeUndefined();
        expect((await c.listVolumes()).map((v) => v.name)).toEqual(['b']);
        await expectKeelError(c.deleteVolume('a'), 'VOLUME_NOT_FOUND');
        const again = await c.createVolume(spec('a', { sizeBytes: 4096 }), 9);
        expect(again).toMatchObject({ name: 'a', sizeBytes: 4096, ownerEpoch: 0, owner: '' });
      });

      it('gives every volume a distinct id, also a name deleted and created again', async () => {
        const ids = new Set<string>();
        for (let i = 0; i < 20; i++) ids.add((await c.createVolume(spec(`v${i}`), 0)).id);
        const before = (await c.getVolume('v0'))!.id;
        await c.deleteVolume('v0');
        const again = await c.createVolume(spec('v0'), 0);
        ids.add(again.id);
        expect(ids.size).toBe(21);
        expect(again.id).not.toBe(before);
        for (const id of ids) expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
      });

      it('hands out copies: changing a returned record changes nothing stored', async () => {
        const created = await c.createVolume(spec('a'), 0);
        created.owner = 'mallory';
        const read = (await c.getVolume('a'))!;
        read.ownerEpoch = 99;
        (await c.listVolumes())[0]!.sizeBytes = 1;
        expect(await c.getVolume('a')).toMatchObject({ owner: '', ownerEpoch: 0, sizeBytes: 64 * MiB });
      });

      it('lets exactly one of 8 concurrent creators of one name win, on separate instances', async () => {
        const instances = await Promise.all(Array.from({ length: 8 }, () => store.open()));
        const results = await Promise.allSettled(instances.map((x, i) => x.createVolume(spec('race', { sizeBytes: 4096 * (i + 1) }), i)));
        const winners = results.filter((r) => r.status === 'fulfilled');
        expect(winners).toHaveLength(1);
        for (const r of results) if (r.status === 'rejected') expect(isKeelError(r.reason, 'VOLUME_EXISTS')).toBe(true);
        const stored = await c.getVolume('race');
        expect(stored).toStrictEqual((winners[0] as PromiseFulfilledResult<unknown>).value);
      });
    });

    describe('ownership (claimVolume)', () => {
      it('sets the owner and increments the epoch only while the expected epoch matches', async () => {
        await c.createVolume(spec('v'), 0);
        const claimed = await c.claimVolume('v', 'r1', 0);
        expect(claimed).toMatchObject({ name: 'v', owner: 'r1', ownerEpoch: 1 });
        expect(await c.getVolume('v')).toStrictEqual(claimed);
        expect(await c.claimVolume('v', 'r2', 0)).toBeUndefined(); // stale epoch: someone moved it on
        expect(await c.claimVolume('v', 'r2', 5)).toBeUndefined(); // an epoch from the future is not current either
        expect(await c.getVolume('v')).toStrictEqual(claimed);
      });

      it('raises the epoch at every change of owner, also a claim by the current owner', async () => {
        await c.createVolume(spec('v', { owner: 'r1' }), 0);
        const epochs: number[] = [];
        const owners = ['r2', 'r3', 'r3', 'r1'];
        for (const [i, owner] of owners.entries()) {
          const record = await c.claimVolume('v', owner, i + 1);
          expect(record?.owner).toBe(owner);
          epochs.push(record!.ownerEpoch);
        }
        expect(epochs).toEqual([2, 3, 4, 5]);
        expect(await c.getVolume('v')).toMatchObject({ owner: 'r1', ownerEpoch: 5 });
      });

      it('releases ownership with an empty owner, still raising the epoch', async () => {
        await c.createVolume(spec('v', { owner: 'r1' }), 0);
        expect(await c.claimVolume('v', '', 1)).toMatchObject({ owner: '', ownerEpoch: 2 });
      });

      it('throws VOLUME_NOT_FOUND for a claim of an unknown volume, and creates nothing', async () => {
        await expectKeelError(c.claimVolume('nope', 'r1', 0), 'VOLUME_NOT_FOUND');
        expect(await c.getVolume('nope')).toBeUndefined();
      });

      it('lets exactly one of 8 concurrent claimers on separate instances win each epoch', async () => {
        await c.createVolume(spec('v'), 0);
        const instances = await Promise.all(Array.from({ length: 8 }, () => store.open()));
        for (const epoch of [0, 1, 2]) {
          const results = await Promise.all(instances.map((x, i) => x.claimVolume('v', `r${epoch}-${i}`, epoch)));
          const winners = results.filter((r) => r !== undefined);
          expect(winners).toHaveLength(1);
          expect(winners[0]).toMatchObject({ ownerEpoch: epoch + 1 });
          expect(await c.getVolume('v')).toStrictEqual(winners[0]);
        }
      });

      it('keeps the epoch when the volume is resized', async () => {
        await c.createVolume(spec('v', { owner: 'r1' }), 0);
        await c.claimVolume('v', 'r2', 1);
        expect(await c.resizeVolume('v', 128 * MiB)).toMatchObject({ owner: 'r2', ownerEpoch: 2 });
      });
    });

    describe('DTL state (setVolumeDtl)', () => {
      it('stores the mode at create and the DTL fields only at the current epoch', async () => {
        await c.createVolume(spec('v', { owner: 'r1', dtlMode: 'async' }), 0);
        expect(await c.getVolume('v')).toMatchObject({ dtlMode: 'async', ownerEpoch: 1 });
        expect(await c.setVolumeDtl('v', 1, { dtlPeer: 'r2', dtlInSync: true })).toBe(true);
        expect(await c.getVolume('v')).toMatchObject({ dtlMode: 'async', dtlPeer: 'r2', dtlInSync: true });
        await c.claimVolume('v', 'r3', 1);
        expect(await c.setVolumeDtl('v', 1, { dtlInSync: false })).toBe(false); // fenced: epoch moved to 2
        expect(await c.getVolume('v')).toMatchObject({ owner: 'r3', ownerEpoch: 2, dtlPeer: 'r2', dtlInSync: true });
        expect(await c.setVolumeDtl('v', 2, { dtlMode: 'sync', dtlPeer: '', dtlInSync: false })).toBe(true);
        expect(await c.getVolume('v')).toMatchObject({ dtlMode: 'sync', dtlPeer: '', dtlInSync: false });
      });

      it("records the owner's failure at its epoch only, and a new owner's epoch leaves it stale", async () => {
        await c.createVolume(spec('f', { owner: 'r1' }), 0);
        expect(ownerHasFailed((await c.getVolume('f'))!)).toBe(false);
        expect(await c.setVolumeDtl('f', 1, { ownerFailedEpoch: 1 })).toBe(true);
        expect(await c.getVolume('f')).toMatchObject({ owner: 'r1', ownerEpoch: 1, ownerFailedEpoch: 1 });
        expect(ownerHasFailed((await c.getVolume('f'))!)).toBe(true);
        await c.claimVolume('f', 'r2', 1);
        expect(ownerHasFailed((await c.getVolume('f'))!)).toBe(false); // r2 at epoch 2
        expect(await c.setVolumeDtl('f', 1, { ownerFailedEpoch: 1 })).toBe(false); // the old owner is fenced
        expect(await c.setVolumeDtl('f', 2, { ownerFailedEpoch: 0 })).toBe(true);
        expect((await c.getVolume('f'))?.ownerFailedEpoch).toBe(0);
      });

      it('a volume created without a mode has no DTL fields; an unknown volume is VOLUME_NOT_FOUND', async () => {
        const created = await c.createVolume(spec('plain'), 0);
        expect(created.dtlMode).toBeUndefined();
        expect((await c.getVolume('plain'))?.dtlInSync).toBeUndefined();
        await expectKeelError(c.setVolumeDtl('nope', 0, { dtlInSync: true }), 'VOLUME_NOT_FOUND');
      });
    });

    describe('vPool', () => {
      it('is undefined until set, then returns what was set, replaced as a whole', async () => {
        expect(await c.getVpool()).toBeUndefined();
        const config = {
          name: 'pool',
          backend: { preset: { k: 4, m: 2 }, asds: [{ dir: '/tmp/a' }, { bucket: 'b', endpoint: 'http://x:9000' }] },
          writeBufferBytesMax: 2 ** 40,
          dtlMode: 'sync',
        };
        await c.setVpool(config);
        expect(await c.getVpool()).toStrictEqual(config);
        await c.setVpool({ name: 'pool2' });
        expect(await c.getVpool()).toStrictEqual({ name: 'pool2' });
      });

      it('hands out copies of the configuration', async () => {
        const config = { name: 'pool', backend: { preset: { k: 2, m: 1 } } };
        await c.setVpool(config);
        config.backend.preset.k = 9;
        const read = (await c.getVpool())!;
        (read.backend as { preset: { m: number } }).preset.m = 7;
        expect(await c.getVpool()).toStrictEqual({ name: 'pool', backend: { preset: { k: 2, m: 1 } } });
      });
    });

    describe('persistence', () => {
      it('shows another instance everything one instance wrote, also after the writer closed', async () => {
        await c.registerRouter(router('r1', { mgmtAddress: '127.0.0.1:9000' }));
        await c.heartbeat('r1', 1_800_000_000_000);
        const volume = await c.createVolume(spec('v'), 7);
        const claimed = await c.claimVolume('v', 'r1', volume.ownerEpoch);
        await c.setVpool({ name: 'pool', writeBufferBytesMax: 1 << 30 });
        await c.close();

        const other = await store.open();
        expect(await other.listRouters()).toStrictEqual([router('r1', { mgmtAddress: '127.0.0.1:9000', heartbeatAtMs: 1_800_000_000_000 })]);
        expect(await other.listVolumes()).toStrictEqual([claimed]);
        expect(await other.getVpool()).toStrictEqual({ name: 'pool', writeBufferBytesMax: 1 << 30 });
        await other.heartbeat('r1', 1_800_000_000_001);
        const third = await store.open();
        expect((await third.listRouters())[0]!.heartbeatAtMs).toBe(1_800_000_000_001);
      });
    });
  });
}
