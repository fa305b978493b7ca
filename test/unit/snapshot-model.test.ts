/**
 * Model-based test of snapshots, clones, rollback and scrubbing on real VolumeDrivers (small SCOs, real
 * files): random sequences of writes (aligned and not), trims, snapshots, snapshot deletes, clones,
 * rollbacks, scrubs and restarts (clean and kill -9 style), each followed by comparing every volume and
 * every snapshot, byte for byte, with an in-memory model.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { isKeelError } from '../../shared/errors.ts';
import { SnapshotHarness } from '../helpers/snapshot-harness.ts';

const clusterBytes = 4096;
const volumeClusters = 48;
const sizeBytes = volumeClusters * clusterBytes;
const scoSizeBytes = 8 * clusterBytes;

interface ModelVolume {
  bytes: Buffer;
  /** Snapshot name -> bytes, in creation order. */
  snapshots: Map<string, Buffer>;
  /** Snapshot name -> clones made from it. */
  clones: Map<string, string[]>;
  parent: string | undefined;
}

type Op =
  | { op: 'write'; volume: number; offset: number; length: number; seed: number }
  | { op: 'trim'; volume: number; lba: number; count: number }
  | { op: 'snapshot'; volume: number }
  | { op: 'deleteSnapshot'; volume: number; pick: number }
  | { op: 'rollback'; volume: number; pick: number }
  | { op: 'clone'; volume: number; pick: number }
  | { op: 'deleteClone'; volume: number }
  | { op: 'scrub'; volume: number }
  | { op: 'restart'; crash: boolean };

const opArbitrary: fc.Arbitrary<Op> = fc.oneof(
  { weight: 8, arbitrary: fc.record({ op: fc.constant('write' as const), volume: fc.nat(3), offset: fc.nat(sizeBytes - 1), length: fc.integer({ min: 1, max: 6 * clusterBytes }), seed: fc.nat(255) }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('trim' as const), volume: fc.nat(3), lba: fc.nat(volumeClusters - 1), count: fc.integer({ min: 1, max: 12 }) }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('snapshot' as const), volume: fc.nat(3) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('deleteSnapshot' as const), volume: fc.nat(3), pick: fc.nat(10) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('rollback' as const), volume: fc.nat(3), pick: fc.nat(10) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('clone' as const), volume: fc.nat(3), pick: fc.nat(10) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('deleteClone' as const), volume: fc.nat(3) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('scrub' as const), volume: fc.nat(3) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('restart' as const), crash: fc.boolean() }) },
);

/** Across all runs: proof that the interesting paths ran (not just no-ops). */
const tally = { scosDeleted: 0, clustersRewritten: 0, rollbacks: 0, clones: 0, cloneSnapshots: 0, restarts: 0 };

function pattern(length: number, seed: number, offset: number): Buffer {
  const buffer = Buffer.alloc(length);
  for (let index = 0; index < length; index++) buffer[index] = ((offset + index) * 31 + seed * 7 + 1) & 0xff || 1;
  return buffer;
}

async function runScenario(ops: Op[]): Promise<void> {
  const root = await mkdtemp(path.join(os.tmpdir(), 'keel-snapmodel-'));
  const harness = new SnapshotHarness(root, sizeBytes, scoSizeBytes);
  const model = new Map<string, ModelVolume>();
  const names: string[] = [];
  let snapshotCounter = 0;
  let cloneCounter = 0;
  const pickVolume = (index: number) => names[index % names.length];
  const pickSnapshot = (volume: ModelVolume, pick: number) => {
    const list = [...volume.snapshots.keys()];
    return list.length === 0 ? undefined : list[pick % list.length];
  };
  const dependents = (volume: ModelVolume, snapshots: string[]) => snapshots.flatMap((s) => volume.clones.get(s) ?? []);
  try {
    await harness.create('base');
    names.push('base');
    model.set('base', { bytes: Buffer.alloc(sizeBytes), snapshots: new Map(), clones: new Map(), parent: undefined });
    for (const op of ops) {
      if (op.op === 'restart') {
        await harness.restart(op.crash);
        tally.restarts += 1;
      } else {
        const name = pickVolume(op.volume);
        const state = model.get(name)!;
        const volume = harness.get(name);
        switch (op.op) {
          case 'write': {
            const length = Math.min(op.length, sizeBytes - op.offset);
            const data = pattern(length, op.seed, op.offset);
            await volume.driver.write(op.offset, data, false);
            data.copy(state.bytes, op.offset);
            break;
          }
          case 'trim': {
            const count = Math.min(op.count, volumeClusters - op.lba);
            await volume.driver.trim(op.lba * clusterBytes, count * clusterBytes, false);
            state.bytes.fill(0, op.lba * clusterBytes, (op.lba + count) * clusterBytes);
            break;
          }
          case 'snapshot': {
            const snapshotName = `s${++snapshotCounter}`;
            const info = await volume.snapshots.create(volume.driver, snapshotName);
            expect(info.name).toBe(snapshotName);
            state.snapshots.set(snapshotName, Buffer.from(state.bytes));
            if (state.parent !== undefined) tally.cloneSnapshots += 1;
            break;
          }
          case 'deleteSnapshot': {
            const snapshot = pickSnapshot(state, op.pick);
            if (snapshot === undefined) break;
            const blocked = dependents(state, [snapshot]);
            const result = await volume.snapshots.delete(volume.driver, snapshot).then(() => undefined, (err: unknown) => err);
            if (blocked.length > 0) expect(isKeelError(result, 'HAS_DEPENDENTS')).toBe(true);
            else {
              expect(result).toBeUndefined();
              state.snapshots.delete(snapshot);
            }
            break;
          }
          case 'rollback': {
            const snapshot = pickSnapshot(state, op.pick);
            if (snapshot === undefined) break;
            const list = [...state.snapshots.keys()];
            const newer = list.slice(list.indexOf(snapshot) + 1);
            const blocked = dependents(state, newer);
            const result = await volume.snapshots.rollback(volume.driver, snapshot, volume.underlay?.trimmed).then((r) => r, (err: unknown) => err);
            if (blocked.length > 0) {
              expect(isKeelError(result, 'HAS_DEPENDENTS')).toBe(true);
              break;
            }
            expect(result).toMatchObject({ deleted: newer });
            tally.rollbacks += 1;
            state.bytes = Buffer.from(state.snapshots.get(snapshot)!);
            for (const gone of newer) state.snapshots.delete(gone);
            break;
          }
          case 'clone': {
            const snapshot = pickSnapshot(state, op.pick);
            if (snapshot === undefined || names.length >= 4) break;
            const cloneName = `c${++cloneCounter}`;
            await harness.clone(name, snapshot, cloneName);
            names.push(cloneName);
            tally.clones += 1;
            model.set(cloneName, { bytes: Buffer.from(state.snapshots.get(snapshot)!), snapshots: new Map(), clones: new Map(), parent: name });
            state.clones.set(snapshot, [...(state.clones.get(snapshot) ?? []), cloneName]);
            break;
          }
          case 'deleteClone': {
            if (state.parent === undefined || [...state.clones.values()].some((c) => c.length > 0)) break;
            await harness.deleteClone(name);
            names.splice(names.indexOf(name), 1);
            model.delete(name);
            const parent = model.get(state.parent)!;
            for (const [snapshot, clones] of parent.clones) parent.clones.set(snapshot, clones.filter((c) => c !== name));
            break;
          }
          case 'scrub': {
            const report = await harness.scrub(name);
            tally.scosDeleted += report.scosDeleted;
            tally.clustersRewritten += report.clustersRewritten;
            expect(report.bytesAfter).toBeLessThanOrEqual(report.bytesBefore + report.clustersRewritten * (clusterBytes + 4) + 2 * scoSizeBytes);
            break;
          }
        }
      }
      await checkAll(harness, model);
    }
  } finally {
    await harness.closeAll();
    await rm(root, { recursive: true, force: true });
  }
}

async function checkAll(harness: SnapshotHarness, model: Map<string, ModelVolume>): Promise<void> {
  for (const [name, state] of model) {
    const volume = harness.get(name);
    const actual = await volume.driver.read(0, sizeBytes);
    expect(firstDifference(actual, state.bytes), `volume ${name}`).toBe(-1);
    expect(volume.snapshots.list().map((s) => s.name)).toEqual([...state.snapshots.keys()]);
    for (const [snapshot, bytes] of state.snapshots) {
      const target = await harness.openSnapshot(name, snapshot);
      expect(firstDifference(await target.read(0, sizeBytes), bytes), `snapshot ${name}@${snapshot}`).toBe(-1);
    }
    // Diffs (what export streams carry): base + the extents of (base, snapshot) read from the snapshot = the snapshot.
    const names = [...state.snapshots.keys()];
    const clone = volume.underlay ? { parent: volume.underlay.parent, liveTrimmed: volume.underlay.trimmed } : undefined;
    for (const [base, last] of [[undefined, names[names.length - 1]], [names[0], names[names.length - 1]]] as const) {
      if (last === undefined) continue;
      const from = base === undefined ? undefined : volume.snapshots.find(base);
      const extents = await volume.snapshots.diff(from, volume.snapshots.find(last), volume.driver, clone);
      const rebuilt = base === undefined ? Buffer.alloc(sizeBytes) : Buffer.from(state.snapshots.get(base)!);
      const target = await harness.openSnapshot(name, last);
      for (const extent of extents) {
        const at = extent.lba * clusterBytes;
        const length = extent.count * clusterBytes;
        if (extent.mapped) (await target.read(at, length)).copy(rebuilt, at);
        else rebuilt.fill(0, at, at + length);
      }
      expect(firstDifference(rebuilt, state.snapshots.get(last)!), `diff ${name} ${base ?? '-'}..${last}`).toBe(-1);
    }
  }
}

function firstDifference(a: Buffer, b: Buffer): number {
  if (a.equals(b)) return -1;
  for (let index = 0; index < Math.min(a.length, b.length); index++) if (a[index] !== b[index]) return index;
  return Math.min(a.length, b.length);
}

describe('snapshots, clones, rollback and scrubbing against a reference model', () => {
  it('agree with the model for random operation sequences', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(opArbitrary, { minLength: 5, maxLength: 40 }), (ops) => runScenario(ops)),
      { numRuns: 60, seed: Number(process.env.KEEL_PROPERTY_SEED ?? 20261121) },
    );
    for (const [what, count] of Object.entries(tally)) expect(count, what).toBeGreaterThan(0);
  }, 240_000);
});
