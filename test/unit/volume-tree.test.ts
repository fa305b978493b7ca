/** `keel tree`: volumes, their snapshots and the clones made from them (cli/snapshot-commands.ts). */
import { describe, expect, it } from 'vitest';
import { renderTree } from '../../cli/snapshot-commands.ts';
import type { TreeVolume } from '../../router/snapshot-service.ts';

const gib = 1024 ** 3;
const at = (iso: string) => Date.parse(iso);
const snapshot = (id: number, name: string, clones: string[] = [], labels: Record<string, string> = {}) => ({
  id,
  name,
  createdAtMs: at(`2026-11-23T08:00:0${id}.000Z`),
  sizeBytes: gib,
  labels,
  clones,
});
const volume = (name: string, snapshots: TreeVolume['snapshots'], parent?: string): TreeVolume => ({
  volume: name,
  sizeBytes: gib,
  router: 'r1',
  template: false,
  origin: parent === undefined ? undefined : ({ parentVolume: parent } as TreeVolume['origin']),
  snapshots,
});

describe('keel tree', () => {
  it("hangs a clone's snapshots and its own clones under the clone's name", () => {
    const lines = renderTree([
      volume('demo', [snapshot(1, 's1', ['c1']), snapshot(2, 's2', [], { keep: 'yes' })]),
      volume('c1', [snapshot(3, 'cs1', ['c2', 'gone'])], 'demo'),
      volume('c2', [], 'c1'),
    ]);
    expect(lines).toEqual([
      'demo (1 GiB, router r1)',
      '├─ @s1  2026-11-23T08:00:01.000Z',
      '│     ↳ c1 (1 GiB, router r1)',
      '│       └─ @cs1  2026-11-23T08:00:03.000Z',
      '│             ↳ c2 (1 GiB, router r1)',
      '│             ↳ gone (deleted)',
      '└─ @s2  2026-11-23T08:00:02.000Z [keep=yes]',
    ]);
  });
});
