import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { crc32c } from '../../shared/checksum.ts';
import { FaultyDisk, NodeDisk } from '../../shared/disk.ts';
import { isKeelError } from '../../shared/errors.ts';
import { ClosedScoCache } from '../../router/closed-sco-cache.ts';
import { ClosedSco, OpenSco, readScoFooter, scanClusterChecksums, sealCrashedSco } from '../../router/sco-file.ts';
import { decodeScoFileChecksums, decodeScoTrailer, encodeScoTrailer, firstBadCluster, scoFileBytes, scoTrailerBytes } from '../../router/sco-format.ts';

const disk = new NodeDisk();
let dir: string;

function clusters(count: number, seed: number): Buffer {
  const buffer = Buffer.alloc(count * 4096);
  for (let index = 0; index < buffer.length; index++) buffer[index] = (index * 31 + seed) & 0xff;
  return buffer;
}

function checksumsOf(data: Buffer): Uint32Array {
  const table = new Uint32Array(data.length / 4096);
  for (let slot = 0; slot < table.length; slot++) table[slot] = crc32c(data.subarray(slot * 4096, (slot + 1) * 4096));
  return table;
}

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'keel-sco-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('SCO files', () => {
  it('trailer codec round-trips and rejects damage', () => {
    const trailer = encodeScoTrailer({ scoSeq: 5, clusterCount: 10, tableCrc: 0xabcdef01 });
    expect(trailer.length).toBe(scoTrailerBytes);
    expect(decodeScoTrailer(trailer)).toEqual({ scoSeq: 5, clusterCount: 10, tableCrc: 0xabcdef01 });
    trailer[17] ^= 1;
    expect(decodeScoTrailer(trailer)).toBeUndefined();
  });

  it('appends with writev, reads back verified, seals and reopens as a closed SCO', async () => {
    const filePath = path.join(dir, '00000001.sco');
    const sco = await OpenSco.create(disk, filePath, 1, 16);
    const first = clusters(3, 1);
    const second = clusters(2, 2);
    expect(await sco.append([first.subarray(0, 4096), first.subarray(4096)], checksumsOf(first))).toBe(0);
    expect(await sco.append([second], checksumsOf(second))).toBe(3);
    expect(sco.freeClusters).toBe(11);
    const readBack = Buffer.alloc(4 * 4096);
    await sco.readClusters(1, readBack);
    expect(readBack).toEqual(Buffer.concat([first.subarray(4096), second]));

    const sealed = await sco.seal();
    expect(sealed.clusterCount).toBe(5);
    await sealed.close();
    expect((await readFile(filePath)).length).toBe(scoFileBytes(5));

    // The uploader takes the cluster crcs from the whole file in memory; damage or another SCO gives none.
    const file = await readFile(filePath);
    expect([...decodeScoFileChecksums(file, 1)!]).toEqual([...checksumsOf(Buffer.concat([first, second]))]);
    expect(decodeScoFileChecksums(file, 2)).toBeUndefined();
    expect(decodeScoFileChecksums(file.subarray(0, file.length - 1), 1)).toBeUndefined();
    const damagedTable = Buffer.from(file);
    damagedTable[5 * 4096 + 2] ^= 1;
    expect(decodeScoFileChecksums(damagedTable, 1)).toBeUndefined();

    const reopened = await ClosedSco.open(disk, filePath, 1);
    expect(reopened.tableCrc).toBe(sealed.tableCrc);
    const all = Buffer.alloc(5 * 4096);
    await reopened.readClusters(0, all);
    expect(all).toEqual(Buffer.concat([first, second]));
    await reopened.close();
  });

  it('fails a read with CHECKSUM_MISMATCH when a data byte is flipped', async () => {
    const filePath = path.join(dir, '00000002.sco');
    const sco = await OpenSco.create(disk, filePath, 2, 8);
    const data = clusters(4, 3);
    await sco.append([data], checksumsOf(data));
    await (await sco.seal()).close();
    const bytes = await readFile(filePath);
    bytes[2 * 4096 + 100] ^= 0x40;
    await writeFile(filePath, bytes);
    const reader = await ClosedSco.open(disk, filePath, 2);
    await reader.readClusters(0, Buffer.alloc(2 * 4096)); // slots 0-1 are intact
    const error = await reader.readClusters(1, Buffer.alloc(2 * 4096)).catch((err: unknown) => err);
    expect(isKeelError(error, 'CHECKSUM_MISMATCH')).toBe(true);
    expect((error as { details: { slot: number } }).details.slot).toBe(2);
    await reader.close();
  });

  it('names the first bad cluster of a run, whether its data or its table entry is wrong', () => {
    const data = clusters(9, 5);
    const table = new Uint32Array(12);
    table.set(checksumsOf(data), 3);
    for (const [from, count] of [[0, 9], [0, 1], [4, 1], [2, 5], [8, 1]] as const) {
      const run = data.subarray(from * 4096, (from + count) * 4096);
      expect(firstBadCluster(run, table, 3 + from)).toBe(-1);
      for (let bad = 0; bad < count; bad++) {
        const damaged = Buffer.from(run);
        damaged[bad * 4096 + ((bad * 977) % 4096)] ^= 0x10;
        expect(firstBadCluster(damaged, table, 3 + from)).toBe(bad);
        const wrongTable = Uint32Array.from(table);
        wrongTable[3 + from + bad] ^= 1;
        expect(firstBadCluster(run, wrongTable, 3 + from)).toBe(bad);
      }
    }
    // Two damaged clusters whose errors might cancel in a combined crc: the walk still finds the first.
    const twice = Buffer.from(data);
    twice[4096 + 7] ^= 0x01;
    twice[5 * 4096 + 7] ^= 0x01;
    expect(firstBadCluster(twice, table, 3)).toBe(1);
  });

  it('refuses to open a SCO without a valid footer, and recovery can seal it', async () => {
    const filePath = path.join(dir, '00000003.sco');
    const sco = await OpenSco.create(disk, filePath, 3, 8);
    const data = clusters(3, 4);
    await sco.append([data], checksumsOf(data));
    await sco.close(); // a crash: no footer
    await writeFile(filePath, Buffer.concat([await readFile(filePath), Buffer.alloc(1000, 7)])); // torn tail
    const opened = await ClosedSco.open(disk, filePath, 3).catch((err: unknown) => err);
    expect(isKeelError(opened, 'CORRUPT')).toBe(true);

    const file = await disk.open(filePath, 'read');
    expect(await readScoFooter(file, 3)).toBeUndefined();
    const scanned = await scanClusterChecksums(file, 8);
    await file.close();
    expect(Array.from(scanned)).toEqual(Array.from(checksumsOf(data)));
    await sealCrashedSco(disk, filePath, 3, scanned, 2);
    const reader = await ClosedSco.open(disk, filePath, 3);
    expect(reader.clusterCount).toBe(2);
    const back = Buffer.alloc(2 * 4096);
    await reader.readClusters(0, back);
    expect(back).toEqual(data.subarray(0, 2 * 4096));
    await reader.close();
  });
});

describe('reused SCO files (spares)', () => {
  it('a spare longer than the new SCO is cut at seal, and its old clusters never pass for data', async () => {
    const oldPath = path.join(dir, 'old');
    const old = await OpenSco.create(disk, oldPath, 3, 16);
    await old.append([clusters(12, 1)], checksumsOf(clusters(12, 1)));
    await (await old.seal()).close();

    const newPath = path.join(dir, '00000009.sco');
    const reused = await OpenSco.reuse(disk, oldPath, newPath, 9, 16);
    expect(await disk.exists(oldPath)).toBe(false);
    const fresh = clusters(3, 7);
    await reused.append([fresh], checksumsOf(fresh));
    // Unsealed, the file still holds the old SCO's tail and footer: it is not a valid SCO 9.
    const unsealed = await disk.open(newPath, 'read');
    expect(await readScoFooter(unsealed, 9)).toBeUndefined();
    // Recovery scans what is there; only slots whose crc a TLog record names are ever kept.
    const scanned = await scanClusterChecksums(unsealed, 16);
    await unsealed.close();
    expect([...scanned.subarray(0, 3)]).toEqual([...checksumsOf(fresh)]);
    expect(scanned[3]).toBe(checksumsOf(clusters(12, 1))[3]);

    const sealed = await reused.seal();
    expect(sealed.clusterCount).toBe(3);
    await sealed.close();
    expect((await readFile(newPath)).length).toBe(scoFileBytes(3));
    const reopened = await ClosedSco.open(disk, newPath, 9);
    const back = Buffer.alloc(3 * 4096);
    await reopened.readClusters(0, back);
    expect(back.equals(fresh)).toBe(true);
    await reopened.close();
  });

  it('reports a handle closed only after the reads in flight on it finish', async () => {
    const faulty = new FaultyDisk();
    const scoPath = path.join(dir, '00000001.sco');
    const open = await OpenSco.create(faulty, scoPath, 1, 8);
    await open.append([clusters(2, 3)], checksumsOf(clusters(2, 3)));
    await (await open.seal()).close();

    const cache = new ClosedScoCache(faulty, dir, 4);
    const sco = await cache.get(1);
    faulty.inject({ operation: 'read', pathIncludes: '00000001.sco', delayMs: 150 });
    const reading = sco.readClusters(0, Buffer.alloc(2 * 4096));
    let unused = false;
    const waiting = cache.whenUnused(1).then(() => (unused = true));
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(unused).toBe(false); // dropped from the cache, but a read still uses the file
    await reading;
    await waiting;
    expect(unused).toBe(true);
    // A SCO with no handle at all is unused at once.
    await cache.whenUnused(2);
  });
});
