/**
 * Which units of which stripes a repair can rebuild (docs/backend-format.md, "Verify and repair"). Damage
 * is judged per stripe, not per fragment: a fragment with one bad 4 KiB block is bad in that block's stripe
 * only, so an object whose damage is spread over more than m fragments is still repairable as long as
 * every stripe keeps k good units. Pure: the object store reads the fragments and writes the result.
 */
import { fragmentBlockBytes, type ObjectGeometry } from './fragment-format.ts';

export interface FragmentDamage {
  /** Header, tables and length are valid and the body is at hand: its blocks can be judged one by one. */
  usable: boolean;
  /** Body blocks whose crc32c does not match the fragment's table (sorted). */
  badBlocks: readonly number[];
}

export interface DamagedStripe {
  stripe: number;
  /** Fragments whose unit of this stripe is good, in index order. */
  good: number[];
  /** Fragments whose unit of this stripe is missing or bad. */
  damaged: number[];
}

export interface StripeRepairPlan {
  /** Stripes with at least one damaged unit, in order. */
  damagedStripes: DamagedStripe[];
  /** Damaged stripes with fewer than k good units: nothing can rebuild them. */
  unrecoverable: number[];
}

export function planStripeRepair(g: Pick<ObjectGeometry, 'k' | 'm' | 'stripeUnitBytes' | 'stripeCount'>, damage: readonly FragmentDamage[]): StripeRepairPlan {
  const blocksPerUnit = g.stripeUnitBytes / fragmentBlockBytes;
  const badStripes = damage.map((d) => new Set(d.badBlocks.map((b) => Math.floor(b / blocksPerUnit))));
  const damagedStripes: DamagedStripe[] = [];
  const unrecoverable: number[] = [];
  for (let stripe = 0; stripe < g.stripeCount; stripe++) {
    const good: number[] = [];
    const damaged: number[] = [];
    damage.forEach((d, f) => (d.usable && !badStripes[f]!.has(stripe) ? good : damaged).push(f));
    if (damaged.length === 0) continue;
    damagedStripes.push({ stripe, good, damaged });
    if (good.length < g.k) unrecoverable.push(stripe);
  }
  return { damagedStripes, unrecoverable };
}

/** "3, 5-9, 12" (at most `shownMax` runs, then "… (N stripes)"): stripe lists in error messages stay short. */
export function describeStripes(stripes: readonly number[], shownMax = 16): string {
  const runs: string[] = [];
  for (let i = 0; i < stripes.length; ) {
    let j = i;
    while (j + 1 < stripes.length && stripes[j + 1] === stripes[j]! + 1) j++;
    runs.push(i === j ? `${stripes[i]}` : `${stripes[i]}-${stripes[j]}`);
    i = j + 1;
  }
  const shown = runs.slice(0, shownMax).join(', ');
  return runs.length > shownMax ? `${shown}, … (${stripes.length} stripes)` : shown;
}
