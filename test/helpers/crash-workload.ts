/**
 * The deterministic write workload of the volume-driver crash test: the child process writes it, the
 * test regenerates it to know what every acknowledged write contained.
 */
import { VolumeDriver } from '../../router/volume-driver.ts';
import { makeRandom } from './seeded-random.ts';

export const crashVolumeSizeBytes = 16 * 1024 * 1024;
export const crashScoSizeBytes = 256 * 1024; // small, so SCOs and TLogs roll over during the run
export const crashGroupSize = 8; // writes issued concurrently, acknowledged together

export interface CrashWrite {
  index: number;
  offset: number;
  data: Buffer;
}

/** Write number `index` of the workload: its own PRNG seed, so any write can be regenerated alone. */
export function crashWrite(index: number): CrashWrite {
  const next = makeRandom(index * 2654435761 + 12345);
  const aligned = next() < 0.7;
  const length = aligned ? (1 + Math.floor(next() * 16)) * 4096 : 1 + Math.floor(next() * 10000);
  const offset = aligned
    ? Math.floor(next() * ((crashVolumeSizeBytes - length) / 4096)) * 4096
    : Math.floor(next() * (crashVolumeSizeBytes - length));
  const data = Buffer.alloc(length);
  const seed = (index * 131) & 0xff;
  for (let at = 0; at < length; at++) data[at] = (seed + at * 7 + (at >> 12)) & 0xff || 1;
  return { index, offset, data };
}

/** The crash test's volume in `dir`, as the child writes it and the test reopens it. */
export function openCrashVolume(dir: string): Promise<VolumeDriver> {
  return VolumeDriver.open({ dir, volumeName: 'crash', sizeBytes: crashVolumeSizeBytes, scoSizeBytes: crashScoSizeBytes, scoSizeBytesMinOverride: 4096 });
}
