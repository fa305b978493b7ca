import { appendFile, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isKeelError } from '../../shared/errors.ts';
import { VolumeDriver, type VolumeDriverOptions } from '../../router/volume-driver.ts';
import { decodeTlogRecord, tlogRecordBytes } from '../../router/tlog-format.ts';
import { expectBytes } from '../helpers/expect-bytes.ts';

const MiB = 1024 * 1024;
let dir: string;
const open: VolumeDriver[] = [];

function options(extra: Partial<VolumeDriverOptions> = {}): VolumeDriverOptions {
  return { dir, volumeName: 'vol', sizeBytes: 16 * MiB, scoSizeBytes: 4 * MiB, ...extra };
}
async function openDriver(extra: Partial<VolumeDriverOptions> = {}): Promise<VolumeDriver> {
  const driver = await VolumeDriver.open(options(extra));
  open.push(driver);
  return driver;
}
function cluster(fill: number): Buffer {
  return Buffer.alloc(4096, fill);
}
async function lastTlogPath(): Promise<string> {
  const names = (await readdir(path.join(dir, 'tlogs'))).filter((name) => name.endsWith('.tlog')).sort();
  return path.join(dir, 'tlogs', names[names.length - 1]);
}
async function tlogRecordTypes(filePath: string): Promise<string[]> {
  const bytes = await readFile(filePath);
  const types: string[] = [];
  for (let at = 0; at + tlogRecordBytes <= bytes.length; at += tlogRecordBytes) types.push(decodeTlogRecord(bytes, at)?.type ?? 'invalid');
  return types;
}

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'keel-recovery-'));
});
afterEach(async () => {
  // Drivers abandoned to simulate a crash are never closed: only release their file handles.
  open.length = 0;
  await rm(dir, { recursive: true, force: true });
});

describe('volume recovery', () => {
  it('recovers every acknowledged write after a crash (driver abandoned, no close) and seals the open SCO', async () => {
    const crashed = await openDriver();
    for (let index = 0; index < 50; index++) await crashed.write(index * 4096, cluster(index + 1), false);
    await crashed.trim(10 * 4096, 5 * 4096, false);
    // No flush and no close: the process "dies" here; the page cache still holds everything written.
    const recovered = await openDriver();
    expect(recovered.stats().mappedClusters).toBe(45);
    for (let index = 0; index < 50; index++) {
      expectBytes(await recovered.read(index * 4096, 4096), index >= 10 && index < 15 ? cluster(0) : cluster(index + 1));
    }
    // The crashed SCO 1 got a footer: exactly 50 clusters + table + trailer.
    expect((await stat(path.join(dir, 'scos', '00000001.sco'))).size).toBe(50 * 4096 + 50 * 4 + 32);
    await recovered.write(0, cluster(0xaa), true);
    await recovered.close();
    const again = await openDriver();
    expectBytes(await again.read(0, 8192), Buffer.concat([cluster(0xaa), cluster(2)]));
    await again.close();
  });

  it('ends the replay at a torn TLog tail and truncates it', async () => {
    const crashed = await openDriver();
    await crashed.write(0, cluster(1), false);
    await crashed.flush();
    await crashed.write(4096, cluster(2), false);
    const tlogPath = await lastTlogPath();
    const good = await readFile(tlogPath);
    // A torn record: half of a WRITE record, then garbage.
    await appendFile(tlogPath, Buffer.concat([good.subarray(good.length - 32, good.length - 16), Buffer.alloc(40, 0x5a)]));
    const recovered = await openDriver();
    expectBytes(await recovered.read(0, 8192), Buffer.concat([cluster(1), cluster(2)]));
    const types = await tlogRecordTypes(tlogPath);
    expect(types).not.toContain('invalid');
    expect(types.slice(-2)).toEqual(['scoClosed', 'sync']);
    await recovered.close();
  });

  it('drops an unflushed write whose data was torn, and reopens cleanly afterwards', async () => {
    const crashed = await openDriver();
    await crashed.write(0, cluster(1), false);
    await crashed.flush();
    await crashed.write(0, cluster(2), false); // slot 1, after the last SYNC
    await crashed.write(4096, cluster(3), false); // slot 2
    const scoPath = path.join(dir, 'scos', '00000001.sco');
    const bytes = await readFile(scoPath);
    bytes[4096 + 100] ^= 0xff; // slot 1 never fully reached the disk
    await writeFile(scoPath, bytes);
    const recovered = await openDriver();
    // The torn write and everything after it are gone; the flushed write is intact.
    expectBytes(await recovered.read(0, 8192), Buffer.concat([cluster(1), cluster(0)]));
    await recovered.write(8192, cluster(4), false);
    await recovered.close();
    const again = await openDriver();
    expectBytes(await again.read(0, 3 * 4096), Buffer.concat([cluster(1), cluster(0), cluster(4)]));
    await again.close();
  });

  it('reports CORRUPT when flushed data no longer matches its TLog record', async () => {
    const crashed = await openDriver();
    await crashed.write(0, cluster(1), false);
    await crashed.write(4096, cluster(2), false);
    await crashed.flush();
    const scoPath = path.join(dir, 'scos', '00000001.sco');
    const bytes = await readFile(scoPath);
    bytes[10] ^= 0x01;
    await writeFile(scoPath, bytes);
    const error = await VolumeDriver.open(options()).catch((err: unknown) => err);
    expect(isKeelError(error, 'CORRUPT')).toBe(true);
  });

  it('reports CORRUPT when a damaged TLog record is followed by a SYNC marker', async () => {
    const crashed = await openDriver();
    await crashed.write(0, cluster(1), false);
    await crashed.flush();
    const tlogPath = await lastTlogPath();
    const bytes = await readFile(tlogPath);
    const types = await tlogRecordTypes(tlogPath);
    const writeIndex = types.indexOf('write');
    bytes[writeIndex * tlogRecordBytes + 5] ^= 0x10;
    await writeFile(tlogPath, bytes);
    const error = await VolumeDriver.open(options()).catch((err: unknown) => err);
    expect(isKeelError(error, 'CORRUPT')).toBe(true);
  });

  it('reports CORRUPT when a closed TLog that is not the last one is damaged', async () => {
    const small = { scoSizeBytes: 16 * 4096, scoSizeBytesMinOverride: 4096 };
    const driver = await openDriver(small);
    await driver.write(0, Buffer.alloc(200 * 4096, 7), false); // 13 SCOs -> several TLogs
    await driver.close();
    const first = path.join(dir, 'tlogs', '00000001.tlog');
    const bytes = await readFile(first);
    await writeFile(first, bytes.subarray(0, bytes.length - 32)); // TLOG_CLOSED lost
    const error = await VolumeDriver.open(options(small)).catch((err: unknown) => err);
    expect(isKeelError(error, 'CORRUPT')).toBe(true);
  });

  it('rejects a damaged volume.json', async () => {
    const driver = await openDriver();
    await driver.close();
    await writeFile(path.join(dir, 'volume.json'), '{"formatVersion": 1, "name": ');
    const error = await VolumeDriver.open(options()).catch((err: unknown) => err);
    expect(isKeelError(error, 'CORRUPT')).toBe(true);
  });
});
