import { describe, expect, it } from 'vitest';
import { Placement } from '../../backend/placement.ts';

const ids = (n: number) => Array.from({ length: n }, (_, i) => `asd-${i}`);

describe('Placement (rendezvous hashing)', () => {
  it('is deterministic and uses distinct ASDs', () => {
    const p = new Placement(ids(12));
    for (let i = 0; i < 1000; i++) {
      const a = p.place(`vol/sco/${i}`, 6);
      expect(new Set(a).size).toBe(6);
      expect(new Placement(ids(12)).place(`vol/sco/${i}`, 6)).toEqual(a);
    }
  });

  it('spreads fragments evenly', () => {
    for (const [asds, n] of [
      [6, 6],
      [8, 3],
      [12, 6],
    ] as const) {
      const p = new Placement(ids(asds));
      const load = new Array(asds).fill(0);
      const firstFragment = new Array(asds).fill(0);
      const objects = 12_000;
      for (let i = 0; i < objects; i++) {
        const placed = p.place(`volume-${i % 7}/sco/${i}`, n);
        placed.forEach((a) => load[a]++);
        firstFragment[placed[0]!]++;
      }
      const mean = (objects * n) / asds;
      for (const l of load) expect(Math.abs(l - mean) / mean).toBeLessThan(0.06);
      // Fragment 0 (a data fragment) also spreads: reads are balanced, not only storage.
      for (const f of firstFragment) expect(Math.abs(f - objects / asds) / (objects / asds)).toBeLessThan(0.1);
    }
  });

  it('a prefix of the ranking is stable when fewer fragments are asked for', () => {
    const p = new Placement(ids(10));
    expect(p.place('x', 6).slice(0, 3)).toEqual(p.place('x', 3));
  });

  it('adding an ASD moves only the fragments that now rank it', () => {
    const before = new Placement(ids(10));
    const after = new Placement(ids(11));
    let moved = 0;
    const objects = 5000;
    for (let i = 0; i < objects; i++) {
      const a = before.place(`o${i}`, 6);
      const b = after.place(`o${i}`, 6);
      // Every fragment not displaced by the new ASD keeps its ASD set.
      const kept = b.filter((x) => x !== 10);
      for (const x of kept) expect(a).toContain(x);
      if (b.includes(10)) moved++;
    }
    expect(moved / objects).toBeGreaterThan(0.45);
    expect(moved / objects).toBeLessThan(0.65); // about 6/11
  });

  it('rejects more fragments than ASDs', () => {
    expect(() => new Placement(ids(4)).place('x', 5)).toThrow();
  });
});
