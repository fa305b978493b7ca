/**
 * The router's snapshot, clone and scrub surface (docs/snapshots.md): the admin ops of the wire protocol
 * (docs/wire-protocol.md, "Admin ops": snapshot-create, snapshot-list, ...; results are JSON in the reply
 * payload), the read-only exports `VOL@SNAP` and templates, the clone underlays the registry gives a
 * clone's driver, and the background scrubber. It works on the VolumeRegistry's public API: every op
 * opens the volume like a session does (claiming it when unowned, NOT_OWNER when another router owns it)
 * and releases it at the end.
 */
import path from 'node:path';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import type { OpenBlockTarget } from '../shared/block-target.ts';
import type { Coordination } from '../shared/coordination.ts';
import { NodeDisk, type Disk } from '../shared/disk.ts';
import { KeelError, isKeelError } from '../shared/errors.ts';
import { limits } from '../shared/limits.ts';
import type { Logger } from '../shared/logger.ts';
import { parseSnapshotRef } from '../shared/snapshot-ref.ts';
import { checkVolumeName, checkVolumeSize } from '../shared/volume-name.ts';
import type { RpcResult } from '../shared/wire/rpc-server.ts';
import { snapshotAdminOps, type RequestHeader } from '../shared/wire/wire-format.ts';
import { CloneUnderlay, ParentSnapshotReader } from './clone-underlay.ts';
import { CatalogMirror, fetchCatalogMirror } from './catalog-mirror.ts';
import { cloneFileName, decodeCloneOrigin, encodeCloneOrigin, type CloneOrigin } from './clone-format.ts';
import { ReadOnlyTarget } from './read-only-target.ts';
import { ScrubSchedule, type ScrubState } from './scrub-schedule.ts';
import { scrubVolume, type ScrubProgressEvent, type ScrubReport } from './scrubber.ts';
import { encodeCatalogMirrorSlices, snapshotCatalogFileName, type CatalogMirrorContent, type SnapshotInfo } from './snapshot-catalog-format.ts';
import { replayTrimMask } from './snapshot-map-builder.ts';
import { SnapshotTarget } from './snapshot-target.ts';
import { VolumeDriver } from './volume-driver.ts';
import type { VolumeRegistry } from './volume-registry.ts';
import type { VolumeAdmin } from './volume-service.ts';
import { checkSnapshotName } from '../shared/volume-name.ts';
import { VolumeSnapshots } from './volume-snapshots.ts';

/** One volume in `keel tree`. */
export interface TreeVolume {
  volume: string;
  sizeBytes: number;
  router: string;
  template: boolean;
  origin: CloneOrigin | undefined;
  snapshots: Array<SnapshotInfo & { clones: string[] }>;
}


export class SnapshotService implements VolumeAdmin {
  /** Catalogs by volume name, tagged with the coordination id they belong to (a re-created name is a new volume). */
  private readonly catalogs = new Map<string, { volumeId: string; snapshots: Promise<VolumeSnapshots> }>();
  private readonly underlays = new Map<string, CloneUnderlay>();
  /** Sessions that open clones hold on their parent volumes (they read its SCOs): not clients. */
  private readonly cloneSessions = new Map<string, number>();
  private scrubTimer: NodeJS.Timeout | undefined;
  /** Scrubs running, by volume: a second request joins the running one. */
  private readonly scrubs = new Map<string, Promise<ScrubReport>>();
  /** Where each running scrub is, for `volume-scrub-progress`. */
  private readonly scrubProgress = new Map<string, ScrubProgressEvent & { startedMs: number }>();
  private scrubbing = false;
  private readonly scrubSchedule = new ScrubSchedule<VolumeDriver>();

  constructor(
    private readonly registry: VolumeRegistry,
    private readonly coordination: Coordination,
    private readonly routerId: string,
    private readonly logger: Logger,
    private readonly disk: Disk = new NodeDisk(),
  ) {
    registry.underlaySource = (name) => this.underlayFor(name);
    registry.beforeTransfer = (name, driver) => this.flushCatalogCopy(name, driver);
  }

  // ---------------------------------------------------------------- exports (VolumeAdmin)

  async openExport(exportName: string): Promise<OpenBlockTarget> {
    const ref = parseSnapshotRef(exportName);
    if (ref.snapshot !== undefined) return this.openSnapshot(ref.volume, ref.snapshot);
    const target = await this.registry.openVolume(ref.volume);
    try {
      if (!(await this.snapshotsOf(ref.volume)).template) return target;
    } catch (err) {
      this.registry.releaseVolume(ref.volume);
      throw err;
    }
    return new ReadOnlyTarget(target, `template volume '${ref.volume}'`, () => this.registry.releaseVolume(ref.volume));
  }

  releaseExport(exportName: string, target: OpenBlockTarget): void {
    if (target instanceof SnapshotTarget || target instanceof ReadOnlyTarget) void target.close();
    else this.registry.releaseVolume(exportName);
  }

  /** The backend copy of each open volume's catalog, at the epoch it is open at (catalog-mirror.ts). */
  private readonly catalogMirrors = new Map<string, CatalogMirror>();
  /** Open `VOL@SNAP` exports per snapshot (exportKey): a snapshot being read is not deleted. */
  private readonly openSnapshotExports = new Map<string, number>();

  handles(op: string): boolean {
    return (snapshotAdminOps as readonly string[]).includes(op);
  }

  async run(header: RequestHeader): Promise<RpcResult> {
    const result = await this.dispatch(header);
    return { payload: Buffer.from(JSON.stringify(result ?? null)) };
  }

  // ---------------------------------------------------------------- background scrubber

  startBackgroundScrubber(intervalMs = limits.scrubIntervalMs): void {
    this.scrubTimer = setInterval(() => void this.scrubAllInBackground(), intervalMs);
    this.scrubTimer.unref();
  }

  stopBackgroundScrubber(): void {
    if (this.scrubTimer) clearInterval(this.scrubTimer);
  }

  private async scrubAllInBackground(): Promise<void> {
    if (this.scrubbing) return;
    this.scrubbing = true;
    try {
      for (const { name } of this.registry.list()) {
        await this.scrubIfChanged(name).catch((err) => this.logger.warn({ err, volume: name }, 'background scrub failed'));
      }
    } finally {
      this.scrubbing = false;
    }
  }

  /** Skips a volume that has not changed since a scrub left it clean (scrub-schedule.ts). */
  private async scrubIfChanged(volume: string): Promise<void> {
    const due = await this.withDriver(volume, async (driver, snapshots) => this.scrubSchedule.isDue(driver, scrubState(driver, snapshots)));
    if (due) await this.scrub(volume, limits.scrubClustersPerSecondMax);
  }

  // ---------------------------------------------------------------- ops

  private async dispatch(header: RequestHeader): Promise<unknown> {
    switch (header.op) {
      case 'snapshot-create':
        return this.withDriver(volumeField(header), async (driver, snapshots) =>
          snapshots.create(driver, optionalString(header, 'name'), labelsField(header), header.durable !== false),
        );
      case 'snapshot-list':
        return this.withDriver(volumeField(header), async (_driver, snapshots) => ({
          template: snapshots.template,
          snapshots: snapshots.list(),
          clones: snapshots.clones(),
        }));
      case 'snapshot-delete':
        return this.withDriver(volumeField(header), async (driver, snapshots) => {
          const info = snapshots.find(stringField(header, 'snapshot'));
          const readers = this.openSnapshotExports.get(exportKey(volumeField(header), info.id)) ?? 0;
          // Its SCOs may go at the next scrub, and the export's reads would then fail.
          if (readers > 0) throw new KeelError('BUSY', `snapshot '${volumeField(header)}@${info.name}' is open as an export by ${readers} client(s): disconnect them before deleting it`);
          await this.pruneClones(snapshots);
          return snapshots.delete(driver, stringField(header, 'snapshot'));
        });
      case 'snapshot-label':
        return this.withDriver(volumeField(header), (_driver, snapshots) => snapshots.label(stringField(header, 'snapshot'), labelsField(header)));
      case 'snapshot-rollback':
        return this.rollback(volumeField(header), stringField(header, 'snapshot'));
      case 'snapshot-diff':
        return this.withDriver(volumeField(header), async (driver, snapshots) => {
          const from = optionalString(header, 'from');
          const to = optionalString(header, 'to');
          const toInfo = to === undefined ? undefined : snapshots.find(to);
          const underlay = this.underlays.get(volumeField(header));
          const clone = underlay ? { parent: underlay.parent, liveTrimmed: underlay.trimmed } : undefined;
          const extents = await snapshots.diff(from === undefined ? undefined : snapshots.find(from), toInfo, driver, clone);
          return { sizeBytes: toInfo?.sizeBytes || driver.sizeBytes, extents };
        });
      case 'clone-create':
        return this.createClone(volumeField(header), optionalString(header, 'snapshot'), stringField(header, 'clone'));
      case 'volume-template':
        return this.makeTemplate(volumeField(header));
      case 'volume-tree':
        return this.tree();
      case 'volume-scrub':
        return this.scrub(volumeField(header), optionalPace(header), header.defrag === true);
      case 'volume-scrub-progress':
        return this.scrubProgressOf(volumeField(header));
      case 'volume-shrink':
        return this.shrink(volumeField(header), sizeField(header));
      default:
        throw KeelError.protocol(`unknown op '${header.op}'`, { op: header.op });
    }
  }

  /**
   * `keel volume resize --allow-shrink`: the new size goes to coordination and the driver discards the
   * clusters past it before the answer. Left to the owner's next reconcile (as a grow is), a shrink
   * followed by a grow within that second was never applied, and the old data came back.
   */
  private async shrink(volume: string, sizeBytes: number): Promise<{ sizeBytes: number }> {
    return this.withDriver(volume, async (driver) => {
      if (sizeBytes > driver.sizeBytes) throw KeelError.badArgument(`'volume-shrink' of '${volume}' to ${sizeBytes} bytes would grow it from ${driver.sizeBytes}`);
      await this.coordination.resizeVolume(volume, sizeBytes);
      await driver.resize(sizeBytes);
      return { sizeBytes };
    });
  }

  private async rollback(volume: string, snapshot: string): Promise<unknown> {
    return this.withDriver(volume, async (driver, snapshots) => {
      const clients = this.clientSessions(volume);
      if (clients > 0) throw new KeelError('BUSY', `volume '${volume}' has ${clients} open session(s): disconnect its NBD clients and snapshot exports before a rollback`);
      await this.pruneClones(snapshots);
      return snapshots.rollback(driver, snapshot, this.underlays.get(volume)?.trimmed);
    });
  }

  private async createClone(volume: string, snapshot: string | undefined, clone: string): Promise<unknown> {
    checkVolumeName(clone);
    if (await this.coordination.getVolume(clone)) throw KeelError.volumeExists(clone);
    const parentRecord = await this.coordination.getVolume(volume);
    if (!parentRecord) throw KeelError.volumeNotFound(volume);
    const info = await this.withDriver(volume, async (driver, snapshots) => {
      let chosen: SnapshotInfo | undefined;
      if (snapshot !== undefined) chosen = snapshots.find(snapshot);
      else if (snapshots.template) chosen = snapshots.latest();
      // A clone of a live volume without a named snapshot gets an implicit one.
      chosen ??= await snapshots.create(driver, checkSnapshotName(`for-${clone}`));
      await snapshots.addClone(clone, chosen.id);
      return chosen;
    });
    const dir = this.registry.volumeDir(clone);
    await this.disk.remove(dir); // a leftover of a volume coordination no longer knows
    await this.disk.mkdirp(dir);
    const origin: CloneOrigin = { parentVolume: volume, parentSnapshotId: info.id, parentSnapshotName: info.name };
    await this.disk.writeFileAtomic(path.join(dir, cloneFileName), encodeCloneOrigin(origin));
    try {
      const sizeBytes = info.sizeBytes || parentRecord.sizeBytes;
      await this.coordination.createVolume({ name: clone, sizeBytes, scoSizeBytes: parentRecord.scoSizeBytes, owner: this.routerId, cloneOf: volume }, Date.now());
    } catch (err) {
      await (await this.snapshotsOf(volume)).removeClone(clone);
      throw err;
    }
    await this.registry.openVolume(clone);
    this.registry.releaseVolume(clone); // open now: a broken origin fails here
    this.catalogChanged(clone, true); // its origin reaches the backend, for a router that restores it
    this.logger.info({ clone, ...origin }, 'clone created');
    return { clone, parent: volume, snapshot: info.name };
  }

  private async makeTemplate(volume: string): Promise<unknown> {
    return this.withDriver(volume, async (driver, snapshots) => {
      const clients = this.clientSessions(volume);
      if (clients > 0) throw new KeelError('BUSY', `volume '${volume}' has ${clients} open session(s): disconnect its writers before making it a template`);
      let name = 'template';
      for (let n = 2; snapshots.has(name); n++) name = `template-${n}`;
      const info = await snapshots.create(driver, name);
      await snapshots.setTemplate(true);
      return { volume, snapshot: info.name };
    });
  }

  private async tree(): Promise<TreeVolume[]> {
    const volumes: TreeVolume[] = [];
    for (const record of await this.coordination.listVolumes()) {
      if (record.owner !== this.routerId) continue;
      // Opened as for any other op: a volume created (or handed here) that no client opened yet has no directory, no catalog yet.
      const snapshots = await this.withDriver(record.name, async (_driver, catalog) => catalog);
      const clones = snapshots.clones();
      volumes.push({
        volume: record.name,
        sizeBytes: record.sizeBytes,
        router: this.routerId,
        template: snapshots.template,
        origin: await this.originOf(record.name),
        snapshots: snapshots.list().map((info) => ({ ...info, clones: clones.filter((c) => c.snapshotId === info.id).map((c) => c.clone) })),
      });
    }
    return volumes;
  }

  /** A scrub of the volume; a request joins the running one, except a defrag, which runs after it. */
  private async scrub(volume: string, clustersPerSecondMax?: number, defrag = false): Promise<ScrubReport> {
    let running = this.scrubs.get(volume);
    if (running && !defrag) return running;
    while (running) {
      await running.catch(() => undefined);
      running = this.scrubs.get(volume);
    }
    const scrub = this.scrubOnce(volume, clustersPerSecondMax, defrag).finally(() => this.scrubs.delete(volume));
    this.scrubs.set(volume, scrub);
    return scrub;
  }

  private async scrubOnce(volume: string, clustersPerSecondMax?: number, defrag = false): Promise<ScrubReport> {
    const startedMs = Date.now();
    this.scrubProgress.set(volume, { phase: 'mark', done: 0, total: 1, startedMs });
    try {
      return await this.withDriver(volume, async (driver, snapshots) => {
        const state = scrubState(driver, snapshots);
        const report = await scrubVolume({
          disk: this.disk,
          dir: this.registry.volumeDir(volume),
          driver,
          snapshots,
          logger: this.logger,
          ...(clustersPerSecondMax ? { clustersPerSecondMax } : {}),
          defrag,
          onProgress: (event) => this.scrubProgress.set(volume, { ...event, startedMs }),
        });
        this.scrubSchedule.scrubbed(driver, state, report);
        return report;
      });
    } finally {
      this.scrubProgress.delete(volume);
    }
  }

  /** The running scrub's phase and count, and how long it has run; null when none runs. */
  private scrubProgressOf(volume: string): (ScrubProgressEvent & { elapsedMs: number }) | null {
    const progress = this.scrubProgress.get(volume);
    if (progress === undefined) return null;
    const { startedMs, ...event } = progress;
    return { ...event, elapsedMs: Date.now() - startedMs };
  }

  // ---------------------------------------------------------------- helpers

  private async openSnapshot(volume: string, snapshot: string): Promise<SnapshotTarget> {
    const driver = await this.openDriver(volume);
    try {
      const snapshots = await this.snapshotsOf(volume);
      const info = snapshots.find(snapshot);
      const image = await snapshots.image(info);
      const parent = this.underlays.get(volume)?.parent;
      const reader = { readScoClusters: (sco: number, slot: number, buffer: Buffer) => driver.readScoClusters(sco, slot, buffer), ...(parent ? { parent } : {}) };
      const key = exportKey(volume, info.id);
      this.openSnapshotExports.set(key, (this.openSnapshotExports.get(key) ?? 0) + 1);
      return new SnapshotTarget(info.sizeBytes || driver.sizeBytes, image, reader, `snapshot '${volume}@${snapshot}'`, () => {
        const left = (this.openSnapshotExports.get(key) ?? 1) - 1;
        if (left > 0) this.openSnapshotExports.set(key, left);
        else this.openSnapshotExports.delete(key);
        this.registry.releaseVolume(volume);
      });
    } catch (err) {
      this.registry.releaseVolume(volume);
      throw err;
    }
  }

  private async withDriver<T>(volume: string, work: (driver: VolumeDriver, snapshots: VolumeSnapshots) => Promise<T>): Promise<T> {
    const driver = await this.openDriver(volume);
    try {
      return await work(driver, await this.snapshotsOf(volume));
    } finally {
      this.registry.releaseVolume(volume);
    }
  }

  /** Sessions on a volume besides the running op's own and those its open clones hold. */
  private clientSessions(volume: string): number {
    const sessions = this.registry.list().find((v) => v.name === volume)?.sessions ?? 0;
    return sessions - 1 - (this.cloneSessions.get(volume) ?? 0);
  }

  private async openDriver(volume: string): Promise<VolumeDriver> {
    const target = await this.registry.openVolume(volume);
    if (!(target instanceof VolumeDriver)) {
      this.registry.releaseVolume(volume);
      throw KeelError.badArgument(`volume '${volume}' is not served by a volume driver here`);
    }
    return target;
  }

  private async snapshotsOf(volume: string): Promise<VolumeSnapshots> {
    const record = await this.coordination.getVolume(volume);
    if (!record) throw KeelError.volumeNotFound(volume);
    const cached = this.catalogs.get(volume);
    if (cached && cached.volumeId === record.id) return cached.snapshots;
    const dir = this.registry.volumeDir(volume);
    const snapshots = (async () => {
      const loaded = await VolumeSnapshots.load(this.disk, volume, dir, await this.disk.exists(path.join(dir, cloneFileName)));
      loaded.watchCatalog((urgent) => this.catalogChanged(volume, urgent));
      return loaded;
    })();
    snapshots.catch(() => this.catalogs.delete(volume));
    this.catalogs.set(volume, { volumeId: record.id, snapshots });
    return snapshots;
  }

  private async originOf(volume: string): Promise<CloneOrigin | undefined> {
    const filePath = path.join(this.registry.volumeDir(volume), cloneFileName);
    const bytes = await this.disk.readFile(filePath);
    return bytes === undefined ? undefined : decodeCloneOrigin(bytes, filePath);
  }

  /** Forgets clones that were deleted (`keel volume delete` goes through coordination only). */
  private async pruneClones(snapshots: VolumeSnapshots): Promise<void> {
    for (const { clone } of snapshots.clones()) {
      if (!(await this.coordination.getVolume(clone))) await snapshots.removeClone(clone);
    }
  }

  // ---------------------------------------------------------------- the catalog's backend copy

  private catalogChanged(volume: string, urgent: boolean): void {
    const driver = this.registry.openDriverOf(volume);
    if (driver !== undefined) this.catalogMirrorFor(volume, driver)?.changed(urgent);
  }

  private catalogMirrorFor(volume: string, driver: VolumeDriver): CatalogMirror | undefined {
    const backend = driver.backend;
    if (backend?.ownerEpoch === undefined) return undefined;
    const existing = this.catalogMirrors.get(volume);
    if (existing?.backend.volumeId === backend.volumeId && existing.backend.ownerEpoch === backend.ownerEpoch) return existing;
    const mirror = new CatalogMirror({ ...backend, ownerEpoch: backend.ownerEpoch }, () => this.catalogCopyOf(volume), this.logger.child({ volume }));
    this.catalogMirrors.set(volume, mirror);
    return mirror;
  }

  /** The backend copy's bytes, encoded a slice at a time: one 3 MB encode held the event loop (every volume's I/O) for tens of ms. */
  private async catalogCopyOf(volume: string): Promise<Buffer[]> {
    const snapshots = await this.snapshotsOf(volume);
    const clone = await this.disk.readFile(path.join(this.registry.volumeDir(volume), cloneFileName));
    return encodeCatalogMirrorSlices(snapshots.catalogJournalSlices(), clone?.toString('utf8'), () => yieldToEventLoop());
  }

  /** A graceful handover: the new owner must find the catalog as it is now. A failure is logged; the TLogs remain. */
  private async flushCatalogCopy(volume: string, driver: VolumeDriver): Promise<void> {
    try {
      await this.catalogMirrorFor(volume, driver)?.flush();
    } finally {
      this.catalogMirrors.delete(volume);
    }
  }

  /**
   * A volume opening here without a catalog (taken over, handed over, restored from the backend) gets the
   * backend copy's catalog and clone origin first, before its clone underlay and snapshots load.
   */
  private async seedCatalogFromBackend(volume: string): Promise<void> {
    const dir = this.registry.volumeDir(volume);
    if (await this.disk.exists(path.join(dir, snapshotCatalogFileName))) return;
    this.catalogs.delete(volume); // a catalog cached from an earlier ownership is stale
    const record = await this.coordination.getVolume(volume);
    const backend = record && this.registry.volumeBackendFor(record.id);
    if (backend === undefined) return;
    let copy: CatalogMirrorContent | undefined;
    try {
      copy = await fetchCatalogMirror(backend);
    } catch (err) {
      if (!isKeelError(err)) throw err;
      this.logger.warn({ volume, err: err.message }, 'catalog copy not read from the backend: snapshots get their names from the TLogs');
      return;
    }
    if (copy === undefined) return;
    await this.disk.mkdirp(dir);
    if (copy.clone !== undefined && !(await this.disk.exists(path.join(dir, cloneFileName)))) await this.disk.writeFileAtomic(path.join(dir, cloneFileName), Buffer.from(copy.clone));
    await this.disk.writeFileAtomic(path.join(dir, snapshotCatalogFileName), Buffer.from(copy.catalog));
    this.logger.info({ volume }, 'snapshot catalog restored from its backend copy');
  }

  /**
   * The registry asks this before opening a volume: a clone gets its parent snapshot's image (replayed
   * and pinned for the clone's life) read through the parent's driver (opened here, held as a session),
   * plus its trim mask rebuilt from its own TLogs.
   */
  private async underlayFor(volume: string): Promise<CloneUnderlay | undefined> {
    await this.seedCatalogFromBackend(volume);
    const origin = await this.originOf(volume);
    if (origin === undefined) return undefined;
    const parentDriver = await this.openDriver(origin.parentVolume);
    try {
      const parentSnapshots = await this.snapshotsOf(origin.parentVolume);
      const info = parentSnapshots.list().find((s) => s.id === origin.parentSnapshotId);
      if (!info) throw KeelError.corrupt(`clone '${volume}': snapshot '${origin.parentVolume}@${origin.parentSnapshotName}' is gone`, { ...origin });
      const image = await parentSnapshots.pinImage(info); // shared by all clones of the snapshot and its exports
      const grandParent = this.underlays.get(origin.parentVolume)?.parent;
      const reader = {
        readScoClusters: (sco: number, slot: number, buffer: Buffer) => parentDriver.readScoClusters(sco, slot, buffer),
        ...(grandParent ? { parent: grandParent } : {}),
      };
      const underlay = new CloneUnderlay(new ParentSnapshotReader(image, reader, info.sizeBytes || parentDriver.sizeBytes), await replayTrimMask(this.disk, this.registry.volumeDir(volume)));
      this.underlays.set(volume, underlay);
      this.cloneSessions.set(origin.parentVolume, (this.cloneSessions.get(origin.parentVolume) ?? 0) + 1);
      return underlay;
    } catch (err) {
      this.registry.releaseVolume(origin.parentVolume);
      if (isKeelError(err)) throw err;
      throw KeelError.io(`opening the parent of clone '${volume}' failed`, err);
    }
  }
}

function volumeField(header: RequestHeader): string {
  return stringField(header, 'volume');
}

function stringField(header: RequestHeader, field: string): string {
  const value = header[field];
  if (typeof value !== 'string' || value.length === 0 || value.length > limits.volumeNameLengthMax + limits.snapshotNameLengthMax + 1) {
    throw KeelError.protocol(`'${header.op}' needs a '${field}' string`);
  }
  return value;
}

function exportKey(volume: string, snapshotId: number): string {
  return `${volume}@${snapshotId}`;
}

function sizeField(header: RequestHeader): number {
  const size = header.sizeBytes;
  if (typeof size !== 'number') throw KeelError.protocol(`'${header.op}' needs a 'sizeBytes' number`);
  return checkVolumeSize(size);
}

/** `clustersPerSecond` of a scrub request: a whole number from 1 on, or absent (the router's pace). */
function optionalPace(header: RequestHeader): number | undefined {
  const pace = header.clustersPerSecond;
  if (pace === undefined || pace === null) return undefined;
  if (typeof pace !== 'number' || !Number.isInteger(pace) || pace < 1) {
    throw KeelError.badArgument(`'volume-scrub' needs clustersPerSecond to be a whole number from 1 on, got ${JSON.stringify(pace)}`);
  }
  return pace;
}

function optionalString(header: RequestHeader, field: string): string | undefined {
  return header[field] === undefined || header[field] === null ? undefined : stringField(header, field);
}

function labelsField(header: RequestHeader): Record<string, string> {
  const labels = header.labels;
  if (labels === undefined || labels === null) return {};
  if (typeof labels !== 'object' || Array.isArray(labels) || !Object.values(labels).every((v) => typeof v === 'string')) {
    throw KeelError.protocol(`'${header.op}' labels must be a map of strings`);
  }
  return labels as Record<string, string>;
}

function scrubState(driver: VolumeDriver, snapshots: VolumeSnapshots): ScrubState {
  return { userMapChanges: driver.stats().userMapChanges, snapshotIds: snapshots.list().map((info) => info.id) };
}
