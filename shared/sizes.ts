import { KeelError } from './errors.ts';

const unitShift: Record<string, number> = { '': 0, K: 10, M: 20, G: 30, T: 40, P: 50 };

/**
 * Parses a human size: `4096`, `512K`, `64M`, `10G`, `1T`, `1.5G`, also `10GiB`/`10GB` (both binary:
 * block devices are sized in powers of two, as qemu-img and rbd do).
 */
export function parseSize(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?\s*$/i.exec(text);
  if (!match) throw KeelError.badArgument(`'${text}' is not a size (examples: 4096, 512K, 64M, 10G, 1T)`);
  const bytes = Number(match[1]) * 2 ** unitShift[match[2].toUpperCase()];
  if (!Number.isSafeInteger(bytes)) throw KeelError.badArgument(`size '${text}' is not a whole number of bytes`);
  return bytes;
}

export function formatSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${Number.isInteger(value) ? value : value.toFixed(1)} ${units[unit]}`;
}
