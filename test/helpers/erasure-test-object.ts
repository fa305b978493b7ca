/**
 * One erasure-coded object on six directory ASDs (4+2, 64 KiB stripe units) for the object store's damage
 * tests, and the silent damage they inflict: bytes rewritten together with their fragment's crc table.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { DirectoryAsd } from '../../backend/asd-directory.ts';
import type { Asd } from '../../backend/asd.ts';
import { computeBlockCrcTable, decodeFragmentHeader, encodeFragmentHeader, fragmentKey, fragmentLayout, tablesCrc } from '../../backend/fragment-format.ts';
import { ErasureObjectStore, type ErasureObjectStoreOptions } from '../../backend/object-store.ts';
import { parsePreset } from '../../backend/preset.ts';

export const testStripeUnitBytes = 65536;

export interface ErasureTestObject<A extends Asd> {
  root: string;
  asds: A[];
  store: ErasureObjectStore;
  /** The object's bytes, as put. */
  data: Buffer;
  /** The ASD holding fragment `fragment` of the object. */
  asdOf(fragment: number): A;
  cleanup(): Promise<void>;
}

export async function putTestObject<A extends Asd = DirectoryAsd>(options: {
  name: string;
  dataBytes: number;
  /** Wraps each directory ASD (a FaultyAsd, say). */
  wrap?: (asd: DirectoryAsd) => A;
  store?: Partial<Omit<ErasureObjectStoreOptions, 'asds' | 'preset'>>;
}): Promise<ErasureTestObject<A>> {
  const root = await mkdtemp(path.join(os.tmpdir(), 'keel-erasure-object-'));
  const wrap = options.wrap ?? ((asd: DirectoryAsd) => asd as unknown as A);
  const asds = Array.from({ length: 6 }, (_, i) => wrap(new DirectoryAsd(`asd-${i}`, path.join(root, `asd-${i}`))));
  const store = new ErasureObjectStore({ asds, preset: parsePreset({ k: 4, m: 2, stripeUnitBytes: testStripeUnitBytes }, {}), ...options.store });
  const data = randomBytes(options.dataBytes);
  await store.putObject(options.name, data);
  const info = await store.statObject(options.name);
  return {
    root,
    asds,
    store,
    data,
    asdOf: (fragment) => asds.find((a) => a.id === info.asdIds[fragment])!,
    cleanup: () => rm(root, { recursive: true, force: true }),
  };
}

/** Flips bytes at `bodyOffsets` of fragment `index` of `name` and rewrites its crc table and header to match. */
export async function corruptFragmentSilently(asd: Asd, name: string, index: number, bodyOffsets: number[]): Promise<void> {
  const key = fragmentKey(name, index);
  const buf = Buffer.from(await asd.get(key));
  const header = decodeFragmentHeader(buf);
  const layout = fragmentLayout(header);
  const body = buf.subarray(layout.bodyOffset);
  for (const at of bodyOffsets) body[at]! ^= 1 + (at % 255);
  const table = computeBlockCrcTable([body]);
  const indexBytes = buf.subarray(layout.indexOffset, layout.bodyOffset);
  await asd.put(key, [encodeFragmentHeader({ ...header, tablesCrc: tablesCrc(table, indexBytes) }), table, indexBytes, body]);
}
