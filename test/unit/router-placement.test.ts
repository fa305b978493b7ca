/** Which router gets a volume, and which one holds its DTL (shared/placement.ts). */
import { describe, expect, it } from 'vitest';
import type { RouterRecord, VolumeRecord } from '../../shared/coordination.ts';
import { limits } from '../../shared/limits.ts';
import { leastLoadedDtlPeer, leastLoadedRouter } from '../../shared/placement.ts';

const nowMs = 1_000_000;
const router = (id: string, heartbeatAgeMs = 0): RouterRecord => ({ id, address: `${id}:1`, pid: 1, startedAtMs: 0, heartbeatAtMs: nowMs - heartbeatAgeMs, state: 'up' });
const volume = (name: string, owner: string, dtlPeer: string): VolumeRecord => ({ name, owner, dtlPeer }) as VolumeRecord;

describe('placement of volumes and DTL peers', () => {
  it('a volume goes to the router owning the fewest, ties by id', () => {
    const volumes = [volume('a', 'r1', 'r2'), volume('b', 'r1', 'r3'), volume('c', 'r2', 'r1')];
    expect(leastLoadedRouter([router('r1'), router('r2'), router('r3')], volumes)?.id).toBe('r3');
    expect(leastLoadedRouter([router('r1'), router('r2')], volumes)?.id).toBe('r2');
  });

  it('a DTL peer is the router that is peer of the fewest volumes, ties by id', () => {
    const volumes = [volume('a', 'r1', 'r2'), volume('b', 'r1', 'r2'), volume('c', 'r2', 'r3')];
    expect(leastLoadedDtlPeer([router('r2'), router('r3'), router('r4')], volumes, nowMs)?.id).toBe('r4');
    expect(leastLoadedDtlPeer([router('r2'), router('r3')], volumes, nowMs)?.id).toBe('r3');
    expect(leastLoadedDtlPeer([], volumes, nowMs)).toBeUndefined();
  });

  it('a router that missed two heartbeats (frozen, perhaps the old owner of a forced takeover) is the DTL peer only when nothing else is left', () => {
    const silentMs = 2 * limits.heartbeatIntervalMs + 1;
    const volumes = [volume('a', 'r1', 'r3'), volume('b', 'r1', 'r3')];
    expect(leastLoadedDtlPeer([router('r2', silentMs), router('r3')], volumes, nowMs)?.id).toBe('r3');
    expect(leastLoadedDtlPeer([router('r2', silentMs)], volumes, nowMs)?.id).toBe('r2');
    expect(leastLoadedDtlPeer([router('r2', limits.heartbeatIntervalMs), router('r3')], volumes, nowMs)?.id).toBe('r2'); // one late heartbeat is no sign
  });
});
