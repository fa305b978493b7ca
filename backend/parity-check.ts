/**
 * Deep verification of one stripe (docs/backend-format.md, "Verify and repair"): do its stored parity
 * units match the parity of its data units? Block crcs cannot see a unit whose bytes and crc were written
 * wrong together (a buffer corrupted before its crcs were computed: every parity unit's table is computed
 * at put time); the code's redundancy can. With m >= 2 a single bad unit is also located: the stripe is
 * consistent without it and without no other unit.
 */
import type { ErasureCodec } from './erasure-codec.ts';

export interface StripeParityCheck {
  consistent: boolean;
  /** The one unit whose removal makes the stripe consistent (undefined: consistent, or not locatable). */
  badUnit?: number;
}

/** `units`: all k+m units of one stripe, each `unitBytes`, every one passing its block crcs. */
export async function checkStripeParity(codec: ErasureCodec, units: readonly Buffer[], unitBytes: number): Promise<StripeParityCheck> {
  const { k, m } = codec;
  if (m === 0) return { consistent: true };
  const data = Buffer.concat(units.slice(0, k), k * unitBytes);
  const parity = Buffer.allocUnsafe(m * unitBytes);
  await codec.encodeStripe(data, 0, parity, 0, unitBytes);
  let consistent = true;
  for (let j = 0; j < m && consistent; j++) consistent = parity.subarray(j * unitBytes, (j + 1) * unitBytes).equals(units[k + j]!);
  if (consistent) return { consistent };
  const suspects: number[] = [];
  for (let f = 0; f < k + m; f++) if (await consistentWithout(codec, units, unitBytes, f)) suspects.push(f);
  return suspects.length === 1 ? { consistent, badUnit: suspects[0]! } : { consistent };
}

/** Decodes from the first k units other than `left`, and compares with the remaining ones. */
async function consistentWithout(codec: ErasureCodec, units: readonly Buffer[], unitBytes: number, left: number): Promise<boolean> {
  const others = units.map((_, i) => i).filter((i) => i !== left);
  const sources = new Set(others.slice(0, codec.k));
  const checked = others.slice(codec.k);
  if (checked.length === 0) return true; // m = 1: k units decode to something consistent by construction
  const rebuilt = await codec.reconstructStripe(
    units.map((u, i) => (sources.has(i) ? u : undefined)),
    unitBytes,
  );
  return checked.every((i) => rebuilt[i]!.equals(units[i]!));
}
