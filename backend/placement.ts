/**
 * Fragment placement by rendezvous (highest random weight) hashing: every ASD gets a pseudo-random score
 * for an object name, and fragment i goes to the ASD with the i-th highest score. Deterministic from the
 * name and the ASD ids (no lookup table), always distinct ASDs, load spread evenly, and adding or removing
 * one ASD only moves the fragments that ranked it (docs/backend-format.md#placement).
 */
import assert from 'node:assert';
import { crc32c } from '../shared/checksum.ts';

/** murmur3's 32-bit finalizer: full avalanche, so nearby inputs give unrelated scores. */
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85eb_ca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2_ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

export class Placement {
  private readonly seeds: number[];

  constructor(readonly asdIds: readonly string[]) {
    assert(new Set(asdIds).size === asdIds.length, 'ASD ids must be distinct');
    this.seeds = asdIds.map((id) => fmix32(crc32c(Buffer.from(id, 'utf8'))));
  }

  /** Indices (into asdIds) of the ASDs holding fragments 0..count-1 of `name`. */
  place(name: string, count: number): number[] {
    assert(count <= this.asdIds.length, `cannot place ${count} fragments on ${this.asdIds.length} ASDs`);
    const nameHash = crc32c(Buffer.from(name, 'utf8'));
    const scores = this.seeds.map((seed, index) => ({ index, score: fmix32(fmix32(nameHash ^ seed) + seed) }));
    scores.sort((a, b) => b.score - a.score || a.index - b.index);
    return scores.slice(0, count).map((s) => s.index);
  }
}
