import { expect } from 'vitest';

/**
 * Compares buffers quickly (toEqual on MiB-sized buffers is very slow) and, on mismatch, reports the
 * first differing offset instead of dumping megabytes.
 */
export function expectBytes(actual: Buffer, expected: Buffer, what = 'bytes'): void {
  if (actual.equals(expected)) return;
  let offset = 0;
  while (offset < Math.min(actual.length, expected.length) && actual[offset] === expected[offset]) offset += 1;
  expect.fail(`${what} differ at offset ${offset} (lengths ${actual.length} vs ${expected.length}): got ${actual[offset]}, want ${expected[offset]}`);
}
