/** Live clusters per SCO, the hint that lets a dead SCO leave the write buffer at once. */
import { describe, expect, it } from 'vitest';
import { LbaMap, packLocation } from '../../router/lba-map.ts';
import { ScoLiveCounts } from '../../router/sco-live-counts.ts';

describe('ScoLiveCounts', () => {
  it('counts an existing map and reports the removal that empties a SCO', () => {
    const map = new LbaMap();
    map.set(0, packLocation(1, 0));
    map.set(1, packLocation(1, 1));
    map.set(9000, packLocation(2, 0));
    const counts = ScoLiveCounts.of(map);
    expect(counts.scoCount).toBe(2);
    expect(counts.isDead(1)).toBe(false);
    expect(counts.isDead(3)).toBe(true);
    expect(counts.remove(1)).toBe(false);
    expect(counts.isDead(1)).toBe(false);
    expect(counts.remove(1)).toBe(true);
    expect(counts.isDead(1)).toBe(true);
    expect(counts.scoCount).toBe(1);
  });

  it('never reports a SCO it does not count (a drifted count stays quiet) and revives on add', () => {
    const counts = new ScoLiveCounts();
    expect(counts.remove(7)).toBe(false);
    counts.add(7);
    expect(counts.isDead(7)).toBe(false);
    expect(counts.remove(7)).toBe(true);
    expect(counts.remove(7)).toBe(false);
  });
});
