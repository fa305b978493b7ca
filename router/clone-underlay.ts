/**
 * Where a clone's unwritten clusters come from (docs/snapshots.md, "Clones"): its parent's snapshot image,
 * read from the parent's SCOs through an ImageReader (today the parent volume's driver on the same router;
 * with the backend, a reader of the parent's objects would plug in here). ParentSnapshotReader is the
 * plain parent view (a clone's own snapshots fall through to it); CloneUnderlay adds the clone's live
 * trim mask for its volume driver.
 */
import { clusterSizeBytes } from '../shared/limits.ts';
import type { ClusterMask } from './cluster-mask.ts';
import type { SnapshotImage } from './snapshot-map-builder.ts';
import { readImageInto, type ImageReader, type ParentReader } from './snapshot-target.ts';
import type { VolumeUnderlay } from './volume-underlay.ts';

export class ParentSnapshotReader implements ParentReader {
  private readonly clusterCount: number;

  constructor(
    private readonly image: SnapshotImage,
    private readonly reader: ImageReader,
    parentSizeBytes: number,
  ) {
    this.clusterCount = Math.ceil(parentSizeBytes / clusterSizeBytes);
  }

  covers(lba: number): boolean {
    if (lba >= this.clusterCount) return false;
    if (this.image.map.get(lba) !== 0) return true;
    return this.reader.parent !== undefined && !this.image.trimmed?.has(lba) && this.reader.parent.covers(lba);
  }

  async readInto(lba: number, target: Buffer, offset: number): Promise<void> {
    const clusterStart = lba * clusterSizeBytes;
    const from = Math.max(clusterStart, offset);
    const to = Math.min(clusterStart + clusterSizeBytes, offset + target.length);
    if (from === clusterStart && to === clusterStart + clusterSizeBytes) {
      return readImageInto(this.image, this.reader, target.subarray(from - offset, to - offset), clusterStart);
    }
    const cluster = Buffer.alloc(clusterSizeBytes);
    await readImageInto(this.image, this.reader, cluster, clusterStart);
    cluster.copy(target, from - offset, from - clusterStart, to - clusterStart);
  }
}

export class CloneUnderlay implements VolumeUnderlay {
  constructor(
    readonly parent: ParentSnapshotReader,
    /** Clusters the clone trimmed (rebuilt from its TLogs at open, then kept up to date by the driver). */
    readonly trimmed: ClusterMask,
  ) {}

  covers(lba: number): boolean {
    return !this.trimmed.has(lba) && this.parent.covers(lba);
  }

  readInto(lba: number, target: Buffer, offset: number): Promise<void> {
    return this.parent.readInto(lba, target, offset);
  }

  mask(lba: number, count: number): void {
    this.trimmed.set(lba, count);
  }

  unmask(lba: number, count: number): void {
    this.trimmed.clear(lba, count);
  }
}
