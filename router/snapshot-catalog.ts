/**
 * A volume's snapshot catalog on disk (snapshots.jsonl, format in snapshot-catalog-format.ts and
 * docs/snapshots.md): append one fsynced line per change, compact when most lines are history.
 * Callers serialize changes (VolumeSnapshots does).
 */
import path from 'node:path';
import type { Disk } from '../shared/disk.ts';
import {
  applyCatalogEvent,
  catalogEvents,
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
    this.onChange?.();
  }

  /** Rewrites the journal atomically with just the live state. */
  async compact(): Promise<void> {
    const events = catalogEvents(this.state);
    const bytes = Buffer.from(events.map(encodeCatalogEvent).join(''));
    await this.disk.writeFileAtomic(this.filePath, bytes);
    this.lines = events.length;
    this.sizeBytes = bytes.length;
    this.onChange?.();
  }

  /** Hears of every change once it is on disk (the backend copy follows it: catalog-mirror.ts). */
  onChange: (() => void) | undefined;
}
