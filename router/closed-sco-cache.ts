/**
 * A bounded LRU of closed SCOs opened for reading (file handle + validated crc table), so reads of
 * recently used SCOs need neither an open() nor a table load. Bounded by limits.scoChecksumTablesCachedMax;
 * an evicted SCO closes its handle once the reads in flight on it finish.
 */
import path from 'node:path';
import type { Disk } from '../shared/disk.ts';
import { LruMap } from '../shared/lru-map.ts';
import { ClosedSco } from './sco-file.ts';
import { scoFileName } from './sco-format.ts';

interface CacheEntry {
  opening: Promise<ClosedSco>;
  /** Set once `opening` resolved, for readers that must not wait (readOpen). */
  sco?: ClosedSco;
}

export class ClosedScoCache {
  private readonly entries: LruMap<number, CacheEntry>;
  /** Handles out of the cache whose file is not closed yet (reads in flight), by SCO. */
  private readonly closing = new Map<number, Set<Promise<void>>>();
  loads = 0;

  constructor(
    private readonly disk: Disk,
    private readonly scoDir: string,
    entriesMax: number,
  ) {
    this.entries = new LruMap(entriesMax, (scoSeq, entry) => this.close(scoSeq, entry));
  }

  get size(): number {
    return this.entries.size;
  }

  /** The reader of a closed SCO; opens and validates it on a miss. */
  get(scoSeq: number): Promise<ClosedSco> {
    const cached = this.entries.get(scoSeq);
    if (cached !== undefined) return cached.opening;
    this.loads += 1;
    const entry: CacheEntry = { opening: ClosedSco.open(this.disk, path.join(this.scoDir, scoFileName(scoSeq)), scoSeq) };
    entry.opening.then(
      (sco) => (entry.sco = sco),
      () => {
        // A failed open is retried next time.
        if (this.entries.peek(scoSeq) === entry) this.entries.delete(scoSeq);
      },
    );
    this.entries.set(scoSeq, entry);
    return entry.opening;
  }

  /** The reader of a closed SCO whose file is open already, without waiting; undefined otherwise. */
  readOpen(scoSeq: number): ClosedSco | undefined {
    return this.entries.get(scoSeq)?.sco;
  }

  /** A SCO the driver just sealed: its table is already in RAM. */
  add(sco: ClosedSco): void {
    this.entries.set(sco.scoSeq, { opening: Promise.resolve(sco), sco });
  }

  /** Forgets a SCO (its file is being evicted); its handle closes once the reads in flight finish. */
  drop(scoSeq: number): void {
    const entry = this.entries.peek(scoSeq);
    if (entry === undefined) return;
    this.entries.delete(scoSeq);
    void this.close(scoSeq, entry);
  }

  /** Resolves once no handle of the SCO is open (dropped first): nothing reads its file any more. */
  whenUnused(scoSeq: number): Promise<void> {
    this.drop(scoSeq);
    return Promise.all(this.closing.get(scoSeq) ?? []).then(() => undefined);
  }

  async closeAll(): Promise<void> {
    const entries = [...this.entries.entries()];
    this.entries.clear();
    await Promise.all(entries.map(([scoSeq, entry]) => this.close(scoSeq, entry)));
  }

  /** Closes the SCO once its open finishes (a failed open has nothing to close) and its reads are done. */
  private close(scoSeq: number, entry: CacheEntry): Promise<void> {
    const closed = entry.opening
      .then((sco) => {
        void sco.close();
        return sco.whenClosed();
      })
      .catch(() => undefined);
    let pending = this.closing.get(scoSeq);
    if (pending === undefined) this.closing.set(scoSeq, (pending = new Set()));
    pending.add(closed);
    void closed.then(() => {
      pending.delete(closed);
      if (pending.size === 0 && this.closing.get(scoSeq) === pending) this.closing.delete(scoSeq);
    });
    return closed;
  }
}
