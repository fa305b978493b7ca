/**
 * What a clone's volume driver reads for clusters it never wrote nor trimmed: its parent's snapshot
 * (docs/snapshots.md, "Clones"). The driver asks `covers` for an unmapped cluster, reads through
 * `readInto`, and reports every TRIM it applies through `mask`, so a trimmed cluster reads as zeros and
 * never falls through again.
 */
export interface VolumeUnderlay {
  /** True when an unmapped cluster of the volume must be read from the parent snapshot. */
  covers(lba: number): boolean;
  /** Copies the volume bytes of cluster `lba` that lie in `target` (which starts at volume byte `offset`). */
  readInto(lba: number, target: Buffer, offset: number): Promise<void>;
  /** `[lba, lba + count)` was trimmed in the clone: it reads as zeros from now on. */
  mask(lba: number, count: number): void;
  /** A FALLTHROUGH record (a clone's rollback): `[lba, lba + count)` reads the parent snapshot again. */
  unmask(lba: number, count: number): void;
}
