/**
 * The k-element subsets of a list, in lexicographic order of positions, generated lazily: the object store
 * walks them to find k fragments of a stripe whose decode passes the caller's check, and stops early.
 */
export function* kSubsets<T>(items: readonly T[], k: number): Generator<T[]> {
  if (k < 0 || k > items.length) return;
  const at = Array.from({ length: k }, (_, i) => i);
  for (;;) {
    yield at.map((i) => items[i]!);
    let i = k - 1;
    while (i >= 0 && at[i] === items.length - k + i) i--;
    if (i < 0) return;
    at[i]!++;
    for (let j = i + 1; j < k; j++) at[j] = at[j - 1]! + 1;
  }
}
