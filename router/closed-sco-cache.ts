/**
 * A bounded LRU of closed SCOs opened for reading (file handle + validated crc table), so reads of
 * recently used SCOs need neither an open() nor a table load. Bounded by limits.scoChecksumTablesCachedMax;
 * an evicted SCO closes its handle once the reads in flight on it finish.
 */
import path from 'node:path';
import type { Disk } from '../shared/disk.ts';
import { ClosedSco } from './sco-file.ts';
import { scoFileName } from './sco-format.ts';

export class ClosedScoCache {
  private readonly entries = new Map<number, Promise<ClosedSco>>();
  loads = 0;

  constructor(
    private readonly disk: Disk,
    private readonly scoDir: string,
    private readonly entriesMax: number,
  ) {}

  get size(): number {
    return this.entries.size;
  }

  /** The reader of a closed SCO; opens and validates it on a miss. */
  get(scoSeq: number): Promise<ClosedSco> {
    let entry = this.entries.get(scoSeq);
    if (entry !== undefined) {
      this.entries.delete(scoSeq); // re-insert: Map order is the LRU order
      this.entries.set(scoSeq, entry);
      return entry;
    }
    this.loads += 1;
    entry = ClosedSco.open(this.disk, path.join(this.scoDir, scoFileName(scoSeq)), scoSeq);
    entry.catch(() => this.entries.delete(scoSeq)); // a failed open is retried next time
    this.insert(scoSeq, entry);
    return entry;
  }

  /** A SCO the driver just sealed: its table is already in RAM. */
  add(sco: ClosedSco): void {
    this.insert(sco.scoSeq, Promise.resolve(sco));
  }

  /** Forgets a SCO (its file is being evicted); its handle closes once the reads in flight finish. */
  drop(scoSeq: number): void {
    const entry = this.entries.get(scoSeq);
    if (entry === undefined) return;
    this.entries.delete(scoSeq);
    entry.then((sco) => sco.close()).catch(() => undefined);
  }

  async closeAll(): Promise<void> {
    const entries = [...this.entries.values()];
    this.entries.clear();
    await Promise.all(entries.map((entry) => entry.then((sco) => sco.close()).catch(() => undefined)));
  }

  private insert(scoSeq: number, entry: Promise<ClosedSco>): void {
    this.entries.set(scoSeq, entry);
    while (this.entries.size > this.entriesMax) {
      const [oldestSeq, oldest] = this.entries.entries().next().value!;
      this.entries.delete(oldestSeq);
      oldest.then((sco) => sco.close()).catch(() => undefined);
    }
  }
}
