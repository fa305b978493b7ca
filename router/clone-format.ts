/**
 * clone.json in a clone's volume directory: which snapshot of which volume its unwritten clusters fall
 * through to (docs/snapshots.md, "Clones"). Written before the clone's coordination record exists and
 * never changed afterwards.
 */
import { KeelError } from '../shared/errors.ts';

export const cloneFileName = 'clone.json';
const cloneFormatVersion = 1;

export interface CloneOrigin {
  parentVolume: string;
  parentSnapshotId: number;
  parentSnapshotName: string;
}

export function encodeCloneOrigin(origin: CloneOrigin): Buffer {
  return Buffer.from(JSON.stringify({ formatVersion: cloneFormatVersion, ...origin }, null, 2) + '\n');
}

export function decodeCloneOrigin(bytes: Buffer, where: string): CloneOrigin {
  let parsed: Record<string, unknown>;
  try {
    parsed = JSON.parse(bytes.toString('utf8')) as Record<string, unknown>;
  } catch {
    throw KeelError.corrupt(`${where}: not JSON`, { path: where });
  }
  const { formatVersion, parentVolume, parentSnapshotId, parentSnapshotName } = parsed;
  if (
    formatVersion !== cloneFormatVersion ||
    typeof parentVolume !== 'string' ||
    typeof parentSnapshotName !== 'string' ||
    !Number.isSafeInteger(parentSnapshotId) ||
    (parentSnapshotId as number) <= 0
  ) {
    throw KeelError.corrupt(`${where}: unsupported or invalid clone origin`, { path: where });
  }
  return { parentVolume, parentSnapshotId: parentSnapshotId as number, parentSnapshotName };
}
