import { KeelError } from './errors.ts';
import { limits } from './limits.ts';

/**
 * Volume names are NBD export names and directory names: letters, digits, '.', '_' and '-', starting with
 * a letter or digit. '@' is kept for snapshots (`VOL@SNAP`), '/' would escape the data directory.
 */
const volumeNamePattern = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

export function checkVolumeName(name: string): string {
  if (name.length === 0 || name.length > limits.volumeNameLengthMax || !volumeNamePattern.test(name)) {
    throw KeelError.badArgument(
      `'${name}' is not a valid volume name: use 1-${limits.volumeNameLengthMax} letters, digits, '.', '_' or '-', starting with a letter or digit`,
    );
  }
  return name;
}

/** Snapshot names: as volume names, plus ':' (timestamps); `VOL@SNAP` keeps '@' out of both. */
const snapshotNamePattern = /^[A-Za-z0-9][A-Za-z0-9._:-]*$/;

export function checkSnapshotName(name: string): string {
  if (name.length === 0 || name.length > limits.snapshotNameLengthMax || !snapshotNamePattern.test(name)) {
    const shown = name.length > 80 ? `${name.slice(0, 80)}…' (${name.length} characters)` : `${name}'`;
    throw KeelError.badArgument(
      `'${shown} is not a valid snapshot name: use 1-${limits.snapshotNameLengthMax} letters, digits, '.', '_', ':' or '-', starting with a letter or digit`,
    );
  }
  return name;
}

/** Router ids name directories under the data directory and appear in coordination keys: the same rule as volume names. */
export function checkRouterId(id: string): string {
  if (id.length === 0 || id.length > limits.volumeNameLengthMax || !volumeNamePattern.test(id)) {
    throw KeelError.badArgument(`'${id}' is not a valid router id: use 1-${limits.volumeNameLengthMax} letters, digits, '.', '_' or '-', starting with a letter or digit`);
  }
  return id;
}

export function checkVolumeSize(sizeBytes: number): number {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % 512 !== 0) {
    throw KeelError.badArgument(`volume size must be a positive multiple of 512 bytes, got ${sizeBytes}`);
  }
  if (sizeBytes > limits.volumeSizeBytesMax) {
    throw KeelError.badArgument(`volume size ${sizeBytes} exceeds the maximum of ${limits.volumeSizeBytesMax} bytes`);
  }
  return sizeBytes;
}

export function checkScoSize(scoSizeBytes: number): number {
  if (
    !Number.isSafeInteger(scoSizeBytes) ||
    scoSizeBytes < limits.scoSizeBytesMin ||
    scoSizeBytes > limits.scoSizeBytesMax ||
    scoSizeBytes % 4096 !== 0
  ) {
    throw KeelError.badArgument(
      `SCO size must be a multiple of 4 KiB between ${limits.scoSizeBytesMin >> 20} MiB and ${limits.scoSizeBytesMax >> 20} MiB, got ${scoSizeBytes}`,
    );
  }
  return scoSizeBytes;
}
