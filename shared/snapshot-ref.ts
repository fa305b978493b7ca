/**
 * `VOL@SNAP` names a snapshot (NBD export names, CLI arguments). Volume names never contain '@'
 * (shared/volume-name.ts), so the first '@' splits them.
 */
import { KeelError } from './errors.ts';

export interface SnapshotRef {
  volume: string;
  /** Undefined for a plain volume name. */
  snapshot: string | undefined;
}

export function parseSnapshotRef(name: string): SnapshotRef {
  const at = name.indexOf('@');
  if (at < 0) return { volume: name, snapshot: undefined };
  const volume = name.slice(0, at);
  const snapshot = name.slice(at + 1);
  if (volume.length === 0 || snapshot.length === 0) throw KeelError.badArgument(`'${name}' is not VOL@SNAP`);
  return { volume, snapshot };
}

export function formatSnapshotRef(volume: string, snapshot: string): string {
  return `${volume}@${snapshot}`;
}
