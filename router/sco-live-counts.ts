/**
 * How many of a volume's current map entries point into each SCO (docs/volume-driver.md, "Dead SCOs
 * leave the write buffer at once"). The driver keeps it in step with every map change, so it learns the
 * moment a sealed SCO holds nothing the volume still maps. Such a SCO, once on the backend, is evicted
 * from the write buffer at once instead of when the bound is reached: its file becomes a spare whose
 * page-cache pages the next SCO overwrites.
 *
 * Only a hint for eviction, never for deletion: snapshots and clones may still reference a SCO this calls
 * dead, and they read it from the backend after the eviction. So a count that drifted could only cost a
 * needless backend read, never data; deletion stays with the scrubber, which marks every snapshot.
 */
import type { LbaMap } from './lba-map.ts';

export class ScoLiveCounts {
  /** SCO seq -> mapped clusters in it; a SCO with none has no entry. */
  private readonly counts: Map<number, number>;

  constructor(counts = new Map<number, number>()) {
    this.counts = counts;
  }

  /** Counts an existing map (a volume just opened). */
  static of(map: LbaMap): ScoLiveCounts {
    return new ScoLiveCounts(map.clustersPerSco());
  }

  get scoCount(): number {
    return this.counts.size;
  }

  add(scoSeq: number): void {
    this.counts.set(scoSeq, (this.counts.get(scoSeq) ?? 0) + 1);
  }

  /** One map entry left the SCO; true when that was its last. */
  remove(scoSeq: number): boolean {
    const count = this.counts.get(scoSeq);
    if (count === undefined) return false; // drifted (see above): nothing to report
    if (count > 1) {
      this.counts.set(scoSeq, count - 1);
      return false;
    }
    this.counts.delete(scoSeq);
    return true;
  }

  isDead(scoSeq: number): boolean {
    return !this.counts.has(scoSeq);
  }
}
