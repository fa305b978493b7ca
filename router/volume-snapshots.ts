/**
 * The snapshots of one volume (docs/snapshots.md): create, list, delete, label, rollback, diff, and the
 * snapshot images (maps replayed from the TLogs, cached LRU). A snapshot is a SNAPSHOT record in the
 * volume's TLog stream plus a catalog line; taking one costs one TLog record, one SYNC and one catalog
 * append, whatever the volume's size. Changes are serialized per volume.
 */
import assert from 'node:assert';
import type { Disk } from '../shared/disk.ts';
import { crc32c } from '../shared/checksum.ts';
import { KeelError } from '../shared/errors.ts';
import { clusterSizeBytes, limits } from '../shared/limits.ts';
import { LruMap } from '../shared/lru-map.ts';
import { checkSnapshotName } from '../shared/volume-name.ts';
import type { ClusterMask } from './cluster-mask.ts';
import type { ParentReader } from './snapshot-target.ts';
import { locationSco, locationSlot } from './lba-map.ts';
import { SnapshotCatalog } from './snapshot-catalog.ts';
import { catalogJournalSlices, encodeCatalogJournal, snapshotNamed, type CatalogEvent, type CloneRef, type SnapshotInfo } from './snapshot-catalog-format.ts';
import { replaySnapshotImage, scanSnapshotRecords, type SnapshotImage } from './snapshot-map-builder.ts';
import { encodeTlogRecord, tlogRecordBytes, type TlogRecord } from './tlog-format.ts';
import { VolumeDriver } from './volume-driver.ts';

/** A run of clusters that differ between two points of a volume. */
export interface ChangedExtent {
  lba: number;
  count: number;
  /** False: the clusters read as zeros at the newer point (unmapped). */
  mapped: boolean;
}

export class VolumeSnapshots {
  private changes: Promise<unknown> = Promise.resolve();
  /** Snapshot id -> image being built or built; Map order = LRU order. */
  private readonly images = new LruMap<number, Promise<SnapshotImage>>(limits.snapshotMapsCachedMax);
  /** Images clones' underlays hold (for the router's life): outside the LRU, shared by every user of the snapshot. */
  private readonly pinnedImages = new Map<number, Promise<SnapshotImage>>();
  private lastDefaultNameMs = 0;

  private constructor(
    private readonly disk: Disk,
    readonly volumeName: string,
    private readonly dir: string,
    private readonly catalog: SnapshotCatalog,
    /** Clones need the trim mask of their snapshots (trimmed clusters do not fall through). */
    readonly isClone: boolean,
  ) {}

  /**
   * Loads the catalog and reconciles it with the SNAPSHOT / SNAPSHOT_DELETED records of the TLogs, which
   * are the truth: a snapshot whose catalog line was lost (no catalog at all after a restore from the
   * backend, or a line not yet on disk at a power loss) comes back named `snap-<id>`; ids are never reused.
   */
  static async load(disk: Disk, volumeName: string, dir: string, isClone: boolean): Promise<VolumeSnapshots> {
    const { catalog } = await SnapshotCatalog.load(disk, dir);
    const records = await scanSnapshotRecords(disk, dir);
    const state = catalog.state;
    const events: CatalogEvent[] = [];
    for (const record of records.created) {
      if (records.deleted.has(record.snapshotId) || state.snapshots.has(record.snapshotId)) continue;
      events.push({ e: 'create', id: record.snapshotId, name: `snap-${record.snapshotId}`, createdAtMs: record.createdAtMs, sizeBytes: 0, labels: {} });
    }
    for (const id of records.deleted) if (state.snapshots.has(id)) events.push({ e: 'delete', id });
    const maxRecordedId = records.created.reduce((max, r) => Math.max(max, r.snapshotId), 0);
    if (maxRecordedId >= state.nextId) events.push({ e: 'nextId', value: maxRecordedId + 1 });
    if (events.length > 0) await catalog.append(events);
    return new VolumeSnapshots(disk, volumeName, dir, catalog, isClone);
  }

  /** Calls `listener` after each change of the catalog (catalog-mirror.ts keeps the backend copy); `urgent`: see SnapshotCatalog.onChange. */
  watchCatalog(listener: (urgent: boolean) => void): void {
    this.catalog.onChange = listener;
  }

  /** The catalog as compaction writes it. */
  catalogJournal(): string {
    return encodeCatalogJournal(this.catalog.state);
  }

  /** catalogJournal() in pieces (catalogJournalSlices), for an encoder that yields between them. */
  catalogJournalSlices(): Iterable<string> {
    return catalogJournalSlices(this.catalog.state, limits.catalogEncodeEventsPerSliceMax);
  }

  get template(): boolean {
    return this.catalog.state.template;
  }

  list(): SnapshotInfo[] {
    return [...this.catalog.state.snapshots.values()];
  }

  clones(): CloneRef[] {
    return [...this.catalog.state.clones];
  }

  find(name: string): SnapshotInfo {
    const info = snapshotNamed(this.catalog.state, name);
    if (info === undefined) throw KeelError.snapshotNotFound(this.volumeName, name);
    return info;
  }

  latest(): SnapshotInfo | undefined {
    let latest: SnapshotInfo | undefined;
    for (const info of this.catalog.state.snapshots.values()) latest = info;
    return latest;
  }

  /**
   * Takes a snapshot: every write acknowledged before this call is in it. `durable` (default): it survives
   * a power loss once this resolves (SYNC + fsynced catalog line). Not durable (near-continuous snapshots,
   * like Parallax's): it survives a process crash at once, and a power loss from the next FLUSH on.
   */
  create(driver: VolumeDriver, name?: string, labels: Record<string, string> = {}, durable = true): Promise<SnapshotInfo> {
    return this.serialized(async () => {
      const snapshotName = checkSnapshotName(name ?? this.defaultName());
      checkLabels(labels);
      if (this.catalog.state.snapshots.size >= limits.snapshotsPerVolumeMax) throw KeelError.busy(`volume '${this.volumeName}' (snapshotsPerVolumeMax)`);
      if (this.has(snapshotName)) throw KeelError.snapshotExists(this.volumeName, snapshotName);
      const info: SnapshotInfo = { id: this.catalog.state.nextId, name: snapshotName, createdAtMs: Date.now(), sizeBytes: driver.sizeBytes, labels };
      // The id is taken before the record goes out, so a failed append never lets a later snapshot reuse it.
      this.catalog.state.nextId += 1;
      await driver.appendRecords(encodeRecords([{ type: 'snapshot', snapshotId: info.id, createdAtMs: info.createdAtMs, nameCrc: crc32c(Buffer.from(snapshotName)) }]), durable);
      await this.catalog.append([{ e: 'create', ...info }], durable);
      return info;
    });
  }

  delete(driver: VolumeDriver | undefined, name: string): Promise<SnapshotInfo> {
    return this.serialized(async () => {
      const info = this.find(name);
      this.checkNoClones([info]);
      // The TLog record keeps a catalog rebuilt from the TLogs from resurrecting it (the volume may be closed: catalog only).
      if (driver !== undefined) await driver.appendRecords(encodeRecords([{ type: 'snapshotDeleted', snapshotId: info.id }]));
      await this.catalog.append([{ e: 'delete', id: info.id }]);
      this.forgetImage(info.id);
      return info;
    });
  }

  label(name: string, labels: Record<string, string>): Promise<SnapshotInfo> {
    return this.serialized(async () => {
      const info = this.find(name);
      const merged = { ...info.labels };
      for (const [key, value] of Object.entries(labels)) {
        if (value === '') delete merged[key];
        else merged[key] = value;
      }
      checkLabels(merged);
      await this.catalog.append([{ e: 'label', id: info.id, labels: merged }]);
      return info;
    });
  }

  setTemplate(value: boolean): Promise<void> {
    return this.serialized(() => this.catalog.append([{ e: 'template', value }]));
  }

  addClone(clone: string, snapshotId: number): Promise<void> {
    return this.serialized(() => this.catalog.append([{ e: 'clone', clone, snapshotId }]));
  }

  removeClone(clone: string): Promise<void> {
    return this.serialized(async () => {
      if (this.catalog.state.clones.some((c) => c.clone === clone)) await this.catalog.append([{ e: 'uncloned', clone }]);
    });
  }

  /** The snapshot's map (replayed from the TLogs on first use, then cached; bounded LRU). */
  image(info: SnapshotInfo): Promise<SnapshotImage> {
    const pinned = this.pinnedImages.get(info.id);
    if (pinned !== undefined) return pinned;
    let image = this.images.get(info.id);
    if (image !== undefined) return image;
    image = replaySnapshotImage(this.disk, this.dir, info.id, this.isClone);
    image.catch(() => this.images.delete(info.id));
    this.images.set(info.id, image);
    return image;
  }

  /**
   * The snapshot's image for a clone's underlay, which holds it while the clone is open: one image per
   * snapshot however many clones it has, shared with `VOL@SNAP` exports, diff and rollback, and never
   * evicted. Each clone open used to replay its own copy (the whole TLog history up to the snapshot:
   * seconds and MBs per clone at scale, even with the image cached). Images are read-only.
   */
  pinImage(info: SnapshotInfo): Promise<SnapshotImage> {
    let image = this.pinnedImages.get(info.id);
    if (image !== undefined) return image;
    image = this.image(info);
    this.images.delete(info.id); // pinned now: its LRU slot is free for another
    this.pinnedImages.set(info.id, image);
    image.catch(() => this.pinnedImages.delete(info.id));
    return image;
  }

  private forgetImage(id: number): void {
    this.images.delete(id);
    this.pinnedImages.delete(id);
  }

  /**
   * Makes the live map equal to the snapshot's by appending ordinary TLog records for exactly the clusters
   * that differ (WRITE records pointing at the snapshot's clusters, TRIM, and FALLTHROUGH in a clone),
   * then deletes the snapshots newer than it (like `zfs rollback -r`). The caller makes sure no session
   * has the volume open. Refused when a newer snapshot has clones.
   */
  rollback(driver: VolumeDriver, name: string, liveTrimmed: ClusterMask | undefined): Promise<{ deleted: string[]; changedClusters: number }> {
    return this.serialized(async () => {
      const target = this.find(name);
      const newer = this.list().filter((info) => info.id > target.id);
      this.checkNoClones(newer);
      await driver.flush();
      const image = await this.image(target);
      const records = await rollbackRecords(driver, image, liveTrimmed);
      for (let at = 0; at < records.length; at += VolumeDriver.recordsPerAppendMax) {
        await driver.appendRecords(encodeRecords(records.slice(at, at + VolumeDriver.recordsPerAppendMax)), false);
      }
      for (let at = 0; at < newer.length; at += VolumeDriver.recordsPerAppendMax) {
        const chunk = newer.slice(at, at + VolumeDriver.recordsPerAppendMax);
        await driver.appendRecords(encodeRecords(chunk.map((info) => ({ type: 'snapshotDeleted', snapshotId: info.id }))), false);
      }
      await driver.flush();
      if (newer.length > 0) await this.catalog.append(newer.map((info) => ({ e: 'delete', id: info.id })));
      for (const info of newer) this.forgetImage(info.id);
      return { deleted: newer.map((info) => info.name), changedClusters: countClusters(records) };
    });
  }

  /**
   * Extents that differ between `from` (undefined: an empty volume) and `to` (undefined: the live map).
   * In a clone (`clone` given), a cluster is also "data" where it falls through to the parent snapshot,
   * so a clone's streams carry the parent's data too; `liveTrimmed` is the clone's live trim mask.
   */
  async diff(
    from: SnapshotInfo | undefined,
    to: SnapshotInfo | undefined,
    driver: VolumeDriver | undefined,
    clone?: { parent: ParentReader; liveTrimmed: ClusterMask },
  ): Promise<ChangedExtent[]> {
    const older = from === undefined ? undefined : await this.image(from);
    let newer: { map: Pick<SnapshotImage['map'], 'get' | 'forEach'>; trimmed: ClusterMask | undefined };
    if (to !== undefined) newer = await this.image(to);
    else {
      assert(driver !== undefined, 'diff against the live map needs the driver');
      await driver.flush();
      newer = { map: driver.mapView(), trimmed: clone?.liveTrimmed };
    }
    const changed: Array<{ lba: number; mapped: boolean }> = [];
    if (clone === undefined) {
      newer.map.forEach((lba, location) => {
        if (older === undefined || older.map.get(lba) !== location) changed.push({ lba, mapped: true });
      });
      older?.map.forEach((lba) => {
        if (newer.map.get(lba) === 0) changed.push({ lba, mapped: false });
      });
      changed.sort((a, b) => a.lba - b.lba);
    } else {
      // Where a clone's cluster comes from: its own location, the parent (-1), or nowhere (0: zeros).
      const source = (image: typeof newer | undefined, lba: number): number => {
        if (image === undefined) return 0;
        const location = image.map.get(lba);
        if (location !== 0) return location;
        return !image.trimmed?.has(lba) && clone.parent.covers(lba) ? -1 : 0;
      };
      const clusters = Math.ceil((to?.sizeBytes || driver?.sizeBytes || 0) / clusterSizeBytes);
      for (let lba = 0; lba < clusters; lba++) {
        const now = source(newer, lba);
        if (now !== source(older, lba)) changed.push({ lba, mapped: now !== 0 });
      }
    }
    const extents: ChangedExtent[] = [];
    for (const { lba, mapped } of changed) {
      const last = extents[extents.length - 1];
      if (last !== undefined && last.lba + last.count === lba && last.mapped === mapped) last.count += 1;
      else extents.push({ lba, count: 1, mapped });
    }
    return extents;
  }

  /** O(1): a create must not scan every snapshot of the volume. */
  has(name: string): boolean {
    return snapshotNamed(this.catalog.state, name) !== undefined;
  }

  private checkNoClones(snapshots: SnapshotInfo[]): void {
    const ids = new Set(snapshots.map((info) => info.id));
    const dependents = this.catalog.state.clones.filter((c) => ids.has(c.snapshotId)).map((c) => c.clone);
    if (dependents.length > 0) {
      const names = snapshots.filter((info) => this.catalog.state.clones.some((c) => c.snapshotId === info.id)).map((info) => `${this.volumeName}@${info.name}`);
      throw KeelError.hasDependents(`snapshot ${names.join(', ')}`, dependents);
    }
  }

  /** Timestamp names, unique even at one snapshot per millisecond. */
  private defaultName(): string {
    const nowMs = Math.max(Date.now(), this.lastDefaultNameMs + 1);
    this.lastDefaultNameMs = nowMs;
    return new Date(nowMs).toISOString().replace(/[-:]/g, '').replace('T', '-').replace('Z', '');
  }

  /** Runs `work` with snapshot changes held off (the scrubber's final check and deletions). */
  exclusive<T>(work: () => Promise<T>): Promise<T> {
    return this.serialized(work);
  }

  private serialized<T>(change: () => Promise<T>): Promise<T> {
    const run = this.changes.then(change, change);
    this.changes = run.catch(() => undefined);
    return run;
  }
}

function checkLabels(labels: Record<string, string>): void {
  const entries = Object.entries(labels);
  if (entries.length > limits.snapshotLabelsMax) throw KeelError.badArgument(`at most ${limits.snapshotLabelsMax} labels per snapshot`);
  for (const [key, value] of entries) {
    if (!/^[A-Za-z0-9][A-Za-z0-9._/-]*$/.test(key) || typeof value !== 'string' || key.length + value.length > limits.snapshotLabelBytesMax) {
      throw KeelError.badArgument(`bad label '${key}=${String(value)}': keys are letters, digits, '.', '_', '/', '-'; key + value at most ${limits.snapshotLabelBytesMax} bytes`);
    }
  }
}

function encodeRecords(records: TlogRecord[]): Buffer {
  const buffer = Buffer.alloc(records.length * tlogRecordBytes);
  records.forEach((record, index) => encodeTlogRecord(buffer, index * tlogRecordBytes, record));
  return buffer;
}

function countClusters(records: TlogRecord[]): number {
  let clusters = 0;
  for (const record of records) clusters += record.type === 'write' ? 1 : record.type === 'trim' || record.type === 'fallthrough' ? record.count : 0;
  return clusters;
}

/** The records that turn the live map (and a clone's trim mask) into the image's. */
async function rollbackRecords(driver: VolumeDriver, image: SnapshotImage, liveTrimmed: ClusterMask | undefined): Promise<TlogRecord[]> {
  const live = driver.mapView();
  const writes: Array<{ lba: number; location: number }> = [];
  /** lba -> what it must become when it is unmapped in the image: 'trim' (zeros) or 'fallthrough'. */
  const unmaps = new Map<number, 'trim' | 'fallthrough'>();
  const unmapKind = (lba: number): 'trim' | 'fallthrough' => (liveTrimmed !== undefined && !image.trimmed?.has(lba) ? 'fallthrough' : 'trim');
  live.forEach((lba, location) => {
    const wanted = image.map.get(lba);
    if (wanted === location) return;
    if (wanted === 0) unmaps.set(lba, unmapKind(lba));
    else writes.push({ lba, location: wanted });
  });
  image.map.forEach((lba, location) => {
    if (live.get(lba) === 0) writes.push({ lba, location });
  });
  if (liveTrimmed !== undefined) {
    // A clone: unmapped clusters whose mask differs (trimmed now but falling through then, or the reverse).
    const clusters = Math.ceil(driver.sizeBytes / clusterSizeBytes);
    for (let lba = 0; lba < clusters; lba++) {
      if (live.get(lba) !== 0 || image.map.get(lba) !== 0) continue;
      const trimmedThen = image.trimmed?.has(lba) ?? false;
      if (liveTrimmed.has(lba) !== trimmedThen) unmaps.set(lba, trimmedThen ? 'trim' : 'fallthrough');
    }
  }
  const records: TlogRecord[] = [];
  const cluster = Buffer.allocUnsafe(clusterSizeBytes);
  writes.sort((a, b) => a.lba - b.lba);
  for (const { lba, location } of writes) {
    // The record carries the cluster's checksum (recovery verifies it against the SCO): read it, verified.
    await driver.readScoClusters(locationSco(location), locationSlot(location), cluster);
    records.push({ type: 'write', lba, sco: locationSco(location), slot: locationSlot(location), dataCrc: crc32c(cluster) });
  }
  const sorted = [...unmaps].sort((a, b) => a[0] - b[0]);
  for (const [lba, kind] of sorted) {
    const last = records[records.length - 1];
    if (last !== undefined && last.type === kind && last.lba + last.count === lba) last.count += 1;
    else records.push({ type: kind, lba, count: 1 });
  }
  return records;
}
