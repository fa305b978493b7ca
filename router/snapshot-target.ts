/**
 * A snapshot served read-only (NBD export `VOL@SNAP`): reads look clusters up in the snapshot's map and
 * read them from the volume's SCOs (immutable; the scrubber keeps whatever a snapshot maps), verified
 * like every read. For a clone's snapshot, clusters it never wrote nor trimmed fall through to the
 * clone's parent snapshot. Writes, trims and zeroing fail with READ_ONLY (the NBD edge answers EPERM).
 */
import { KeelError } from '../shared/errors.ts';
import { clusterSizeBytes, limits } from '../shared/limits.ts';
import { locationSco, locationSlot } from './lba-map.ts';
import { ReadOnlyExport } from './read-only-target.ts';
import type { SnapshotImage } from './snapshot-map-builder.ts';

/** Reads clusters of an image: the owning volume's SCOs, and (clones) the parent snapshot. */
export interface ImageReader {
  readScoClusters(scoSeq: number, slot: number, buffer: Buffer): Promise<void>;
  parent?: ParentReader;
}

export interface ParentReader {
  covers(lba: number): boolean;
  readInto(lba: number, target: Buffer, offset: number): Promise<void>;
}

export class SnapshotTarget extends ReadOnlyExport {
  constructor(
    readonly sizeBytes: number,
    private readonly image: SnapshotImage,
    private readonly reader: ImageReader,
    what: string,
    onClose: () => void,
  ) {
    super(what, onClose);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    if (this.closed) throw KeelError.closed(this.what);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw KeelError.badArgument(`bad request offset ${offset} length ${length}`);
    }
    if (length > limits.nbdRequestBytesMax) throw KeelError.requestTooLarge(length, limits.nbdRequestBytesMax);
    if (offset + length > this.sizeBytes) throw KeelError.outOfRange(offset, length, this.sizeBytes);
    const target = Buffer.alloc(length);
    if (length > 0) await readImageInto(this.image, this.reader, target, offset);
    return target;
  }

}

/** Fills target with the image's bytes at volume offset `offset`; runs of consecutive slots are one read. */
export async function readImageInto(image: SnapshotImage, reader: ImageReader, target: Buffer, offset: number): Promise<void> {
  const firstLba = Math.floor(offset / clusterSizeBytes);
  const lastLba = Math.floor((offset + target.length - 1) / clusterSizeBytes);
  const reads: Array<Promise<void>> = [];
  let lba = firstLba;
  while (lba <= lastLba) {
    const location = image.map.get(lba);
    if (location === 0) {
      if (reader.parent?.covers(lba) && !image.trimmed?.has(lba)) reads.push(reader.parent.readInto(lba, target, offset));
      // else: zeros (target is zero-filled)
      lba += 1;
      continue;
    }
    let count = 1;
    while (lba + count <= lastLba && image.map.get(lba + count) === location + count && locationSlot(location + count) !== 0) count += 1;
    reads.push(readRun(reader, target, offset, lba, count, location));
    lba += count;
  }
  await Promise.all(reads);
}

async function readRun(reader: ImageReader, target: Buffer, offset: number, lba: number, count: number, location: number): Promise<void> {
  const runStart = lba * clusterSizeBytes;
  const runEnd = runStart + count * clusterSizeBytes;
  const inPlace = runStart >= offset && runEnd <= offset + target.length;
  const buffer = inPlace ? target.subarray(runStart - offset, runEnd - offset) : Buffer.allocUnsafe(count * clusterSizeBytes);
  await reader.readScoClusters(locationSco(location), locationSlot(location), buffer);
  if (!inPlace) {
    const from = Math.max(runStart, offset);
    const to = Math.min(runEnd, offset + target.length);
    buffer.copy(target, from - offset, from - runStart, to - runStart);
  }
}
