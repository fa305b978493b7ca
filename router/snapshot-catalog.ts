/**
 * A volume's snapshot catalog on disk (snapshots.jsonl, format in snapshot-catalog-format.ts and
 * docs/snapshots.md): append one fsynced line per change, compact when most lines are history.
 * Callers serialize changes (VolumeSnapshots does).
 */
import path from 'node:path';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import type { Disk } from '../shared/disk.ts';
import { limits } from '../shared/limits.ts';
import {
  applyCatalogEvent,
  catalogJournalSlices,
  decodeCatalog,
  emptyCatalog,
  encodeCatalogEvent,
  snapshotCatalogFileName,
  type CatalogEvent,
  type CatalogState,
} from './snapshot-catalog-format.ts';

/** Compaction rewrites the journal when it has this many more lines than its live state needs. */
const compactSlackLines = 1024;

export class SnapshotCatalog {
  private constructor(
    private readonly disk: Disk,
    private readonly filePath: string,
    readonly state: CatalogState,
    private lines: number,
    private sizeBytes: number,
  ) {}

  /** Loads the journal; `existed` is false when there was none (the caller rebuilds it from the TLogs). */
  static async load(disk: Disk, volumeDir: string): Promise<{ catalog: SnapshotCatalog; existed: boolean }> {
    const filePath = path.join(volumeDir, snapshotCatalogFileName);
    const bytes = await disk.readFile(filePath);
    if (bytes === undefined) {
      const catalog = new SnapshotCatalog(disk, filePath, emptyCatalog(), 0, 0);
      await catalog.compact();
      return { catalog, existed: false };
    }
    const { state, lines, tornTail } = decodeCatalog(bytes.toString('utf8'), filePath);
    const catalog = new SnapshotCatalog(disk, filePath, state, lines, bytes.length);
    if (tornTail) await catalog.compact(); // drop the torn line so later appends start on a line boundary
    return { catalog, existed: true };
  }

  /**
   * Applies the events and writes them (one write; + fsync when `durable`), compacting when the journal
   * is mostly history. Without fsync a power loss may lose the line; the TLog's record then rebuilds it.
   */
  async append(events: CatalogEvent[], durable = true): Promise<void> {
    for (const event of events) applyCatalogEvent(this.state, event);
    if (this.lines + events.length > 2 * (this.state.snapshots.size + this.state.clones.length) + compactSlackLines) {
      await this.compact();
      return;
    }
    const bytes = Buffer.from(events.map(encodeCatalogEvent).join(''));
    const file = await this.disk.open(this.filePath, 'readWrite');
    try {
      await file.write(bytes, this.sizeBytes);
      if (durable) await file.sync();
    } finally {
      await file.close();
    }
    this.sizeBytes += bytes.length;
    this.lines += events.length;
    this.onChange?.(events.some(isUrgent));
  }

  /**
   * Rewrites the journal atomically with just the live state, encoded a slice at a time with the event
   * loop free in between (callers serialize changes, so the state holds still meanwhile).
   */
  async compact(): Promise<void> {
    const slices: Buffer[] = [];
    let lines = 0;
    for (const slice of catalogJournalSlices(this.state, limits.catalogEncodeEventsPerSliceMax)) {
      slices.push(Buffer.from(slice));
      for (let at = slice.indexOf('\n'); at !== -1; at = slice.indexOf('\n', at + 1)) lines += 1;
      await yieldToEventLoop();
    }
    const bytes = Buffer.concat(slices);
    await this.disk.writeFileAtomic(this.filePath, bytes);
    this.lines = lines;
    this.sizeBytes = bytes.length;
    this.onChange?.(false);
  }

  /**
   * Hears of every change once it is on disk (the backend copy follows it: catalog-mirror.ts). `urgent`:
   * the change must not wait for the copy's interval (a clone pins one of the snapshots; the template mark).
   */
  onChange: ((urgent: boolean) => void) | undefined;
}

/** Changes whose loss in a crash costs more than a name: a lost `clone` line unpins the clone's parent snapshot. */
function isUrgent(event: CatalogEvent): boolean {
  return event.e === 'clone' || event.e === 'template';
}
