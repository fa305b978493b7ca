/**
 * The volumes this router owns, each with one VolumeDriver (single writer). Implements the VolumeHost the
 * wire service calls; `reconcile` follows coordination (resize, delete, a change of owner).
 */
import { access, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { OpenBlockTarget } from '../shared/block-target.ts';
import { ownerHasFailed, type Coordination, type VolumeRecord } from '../shared/coordination.ts';
import { isKeelError, KeelError } from '../shared/errors.ts';
import { limits } from '../shared/limits.ts';
import type { Logger } from '../shared/logger.ts';
import { checkWriteBufferHoldsTlog } from '../backend/backend-config.ts';
import { volumeObjectPrefix } from './backend-object-names.ts';
import { cloneFileName } from './clone-format.ts';
import { deleteVolumeObjects } from './backend-volume-objects.ts';
import type { RouterBackend, VolumeBackend } from './volume-backend.ts';
import { VolumeDriver } from './volume-driver.ts';
import type { VolumeHost } from './volume-service.ts';
import type { VolumeUnderlay } from './volume-underlay.ts';
import type { VolumeLifecycle } from './volume-lifecycle.ts';
import type { ClusterRamCache } from './cluster-ram-cache.ts';

interface OwnedVolume {
  driver: VolumeDriver;
  /** VolumeRecord.id: names its backend objects. */
  volumeId: string;
  /** Epoch at which we own it: if coordination moves past it, we were fenced out. */
  ownerEpoch: number;
  sessions: number;
}

export class VolumeRegistry implements VolumeHost {
  private readonly owned = new Map<string, OwnedVolume>();
  /** Opens in progress, so that concurrent sessions share one recovery. */
  private readonly opening = new Map<string, Promise<OwnedVolume>>();
  /** Clones: the parent snapshot a volume's unwritten clusters fall through to (router/snapshot-service.ts). */
  underlaySource: ((volumeName: string) => Promise<VolumeUnderlay | undefined>) | undefined;
  /** DTL, takeover and handover (router/volume-ha.ts); undefined: plain single owner. */
  lifecycle: VolumeLifecycle | undefined;
  /**
   * Runs in a graceful handover once the driver is closed and before the ownership moves, while this
   * router's epoch still holds: what else of the volume must reach the backend (its catalog copy).
   */
  beforeTransfer: ((volumeName: string, driver: VolumeDriver) => Promise<void>) | undefined;
  /** Volumes being handed over: opens wait for the handover, then find the new owner. */
  private readonly handingOver = new Map<string, Promise<void>>();
  /** Volume ids found missing from coordination without a tombstone, logged once. */
  private readonly missingLogged = new Set<string>();
  /** Volumes whose driver failed here, by the epoch it failed at: not reopened here at that epoch. */
  private readonly failedAtEpoch = new Map<string, number>();
  /** Set by closeAll: the router is stopping. */
  private closing = false;

  constructor(
    private readonly routerId: string,
    private readonly routerDir: string,
    private readonly coordination: Coordination,
    private readonly logger: Logger,
    /** Where volumes' data lives beyond the local write buffer; undefined: local disk only. */
    private readonly backend?: RouterBackend,
    /** The router's RAM tier of cluster data, shared by its volumes (router/cluster-ram-cache.ts). */
    private readonly ramCache?: ClusterRamCache,
  ) {}

  /** The driver of a volume open here, without opening a session; undefined when it is not open. */
  openDriverOf(volumeName: string): VolumeDriver | undefined {
    return this.owned.get(volumeName)?.driver;
  }

  /** The router's backend with a volume's id: what reads of that volume's objects need (no epoch: no puts). */
  volumeBackendFor(volumeId: string): VolumeBackend | undefined {
    return this.backend === undefined ? undefined : { ...this.backend, volumeId };
  }

  /** A clone made before coordination recorded `cloneOf` is known by its origin file here. */
  async localClonePin(name: string): Promise<string | undefined> {
    const isClone = await access(path.join(this.volumeDir(name), cloneFileName)).then(() => true, () => false);
    return isClone ? `volume '${name}' is a clone and reads its parent's data on its router` : undefined;
  }

  volumeDir(name: string): string {
    return path.join(this.routerDir, 'volumes', name);
  }

  async openVolume(volumeName: string): Promise<OpenBlockTarget> {
    await this.handingOver.get(volumeName);
    await this.dropIfReplaced(volumeName);
    const owned = this.owned.get(volumeName) ?? (await this.claimAndOpen(volumeName));
    owned.sessions += 1;
    return owned.driver;
  }

  releaseVolume(volumeName: string): void {
    const owned = this.owned.get(volumeName);
    if (owned && owned.sessions > 0) owned.sessions -= 1;
  }

  /**
   * Opens (and so recovers) every volume coordination says we own: a restart serves them without waiting
   * for a client. A volume whose driver failed here before the restart is ours again once it opens. Runs
   * once the router listens and heartbeats, volumesOpeningAtStartMax at a time: one volume whose recovery
   * waits on a slow backend must neither keep the others from being served nor make this router look
   * dead (a router that opened every volume before listening took 245 s to answer with S3 stalled).
   * A client's open of a volume still opening here shares its recovery (ensureOpen).
   */
  async openOwnedVolumes(): Promise<{ opened: number; failed: number; elapsedMs: number }> {
    const startedMs = Date.now();
    const records = (await this.coordination.listVolumes()).filter((record) => record.owner === this.routerId);
    let next = 0;
    let failed = 0;
    const worker = async (): Promise<void> => {
      while (next < records.length && !this.closing) {
        const record = records[next++]!;
        if (!(await this.openAtStart(record))) failed++;
      }
    };
    await Promise.all(Array.from({ length: Math.min(limits.volumesOpeningAtStartMax, records.length) }, worker));
    return { opened: records.length - failed, failed, elapsedMs: Date.now() - startedMs };
  }

  private async openAtStart(listed: VolumeRecord): Promise<boolean> {
    try {
      // The list is as old as the start: another router may have taken the volume over since (this one
      // was down long enough), and opening it here at the old epoch only loads the router until reconcile.
      const record = await this.coordination.getVolume(listed.name);
      if (record?.owner !== this.routerId || record.ownerEpoch !== listed.ownerEpoch || record.id !== listed.id) return true;
      await this.openAndClearFailure(record);
      return true;
    } catch (err) {
      // One volume that cannot be recovered now (its backend unreachable, a corrupt TLog) must not keep
      // the router, and every other volume it owns, from starting: its clients' opens retry it and get its error.
      if (!isKeelError(err)) throw err;
      this.logger.error({ volume: listed.name, code: err.code, err: err.message }, 'volume could not be opened at start: it stays closed, and each open tries again');
      return false;
    }
  }

  /** Names of the volumes being opened (recovered) here now. */
  openingNames(): string[] {
    return [...this.opening.keys()];
  }

  /**
   * `keel volume takeover VOL --to THIS` for a volume this router owns. If its driver failed here and no
   * other router took it over (its DTL was out of sync, say), the operator has mended the disk: open it
   * again, as a restart would. False when the volume is not ours (any more).
   */
  async openByOperator(volumeName: string): Promise<boolean> {
    const record = await this.coordination.getVolume(volumeName);
    if (record?.owner !== this.routerId) return false;
    const failed = this.failedAtEpoch.get(volumeName) === record.ownerEpoch || ownerHasFailed(record);
    this.failedAtEpoch.delete(volumeName);
    await this.openAndClearFailure(record);
    if (failed) this.logger.warn({ volume: volumeName, ownerEpoch: record.ownerEpoch }, 'failed volume reopened by an operator');
    return true;
  }

  private async openAndClearFailure(record: VolumeRecord): Promise<void> {
    await this.ensureOpen(record);
    if (ownerHasFailed(record)) await this.coordination.setVolumeDtl(record.name, record.ownerEpoch, { ownerFailedEpoch: 0 });
  }

  /** Applies coordination's view: resizes, deletes, and gives up volumes another router now owns. */
  async reconcile(): Promise<void> {
    // Only volumes open before the list is read: one opened meanwhile is missing from a list read before
    // it was created, and must not be taken for deleted (that would destroy its data).
    const openBefore = [...this.owned];
    const records = new Map((await this.coordination.listVolumes()).map((v) => [v.name, v]));
    for (const [name, owned] of openBefore) {
      if (this.owned.get(name) !== owned) continue; // closed or handed over meanwhile
      const record = records.get(name);
      if (!record || record.id !== owned.volumeId) await this.dropIfDeleted(name, owned, record);
      else if (record.owner !== this.routerId || record.ownerEpoch !== owned.ownerEpoch) await this.dropFenced(name, owned);
      else if (record.sizeBytes !== owned.driver.sizeBytes) await this.resize(name, owned, record.sizeBytes);
    }
  }

  list(): Array<{ name: string; sessions: number; stats: ReturnType<VolumeDriver['stats']> }> {
    return [...this.owned].map(([name, o]) => ({ name, sessions: o.sessions, stats: o.driver.stats() }));
  }

  /** The router is stopping: openOwnedVolumes starts no more opens (a drain and a stop must not wait on them). */
  stopOpening(): void {
    this.closing = true;
  }

  async closeAll(): Promise<void> {
    this.stopOpening();
    await Promise.allSettled([...this.opening.values()]);
    // In parallel: with a backend each close waits (bounded) for its uploads, and a stop must stay short.
    const closing = [...this.owned].map(async ([name, owned]) => {
      this.owned.delete(name);
      await owned.driver.close().catch((err) => this.logger.error({ err, volume: name }, 'closing volume failed'));
      await this.lifecycle?.closed(name);
    });
    await Promise.all(closing);
  }

  private async claimAndOpen(volumeName: string): Promise<OwnedVolume> {
    const record = await this.coordination.getVolume(volumeName);
    if (!record) throw KeelError.volumeNotFound(volumeName);
    if (record.owner === this.routerId) {
      // Failed here at this epoch: another router takes it over (giveUpFailed); a restart reopens it (openOwnedVolumes).
      if (this.failedAtEpoch.get(volumeName) === record.ownerEpoch || ownerHasFailed(record)) throw KeelError.notOwner(volumeName);
      return this.ensureOpen(record);
    }
    if (record.owner !== '') {
      const takenOver = await this.lifecycle?.takeOver(record);
      if (takenOver === undefined) throw KeelError.notOwner(volumeName, record.owner);
      return this.ensureOpen(takenOver);
    }
    const claimed = await this.coordination.claimVolume(volumeName, this.routerId, record.ownerEpoch);
    if (!claimed) {
      const now = await this.coordination.getVolume(volumeName);
      throw KeelError.notOwner(volumeName, now?.owner);
    }
    this.logger.info({ volume: volumeName, ownerEpoch: claimed.ownerEpoch }, 'claimed unowned volume');
    return this.ensureOpen(claimed);
  }

  private ensureOpen(record: VolumeRecord): Promise<OwnedVolume> {
    const existing = this.owned.get(record.name);
    if (existing) return Promise.resolve(existing);
    let opening = this.opening.get(record.name);
    if (!opening) {
      opening = this.openDriver(record).finally(() => this.opening.delete(record.name));
      this.opening.set(record.name, opening);
    }
    return opening;
  }

  private async openDriver(record: VolumeRecord): Promise<OwnedVolume> {
    if (this.owned.size >= limits.volumesPerRouterMax) throw KeelError.busy(`router ${this.routerId} (volumesPerRouterMax)`);
    const startedMs = Date.now();
    if (this.backend) checkWriteBufferHoldsTlog(this.backend.writeBuffer.bytesMax, record.scoSizeBytes);
    // Another router may have owned it since this one read its objects, and deleted some (a scrub).
    this.backend?.store.forgetPrefix?.(volumeObjectPrefix(record.id));
    await this.claimDirectory(record);
    await this.lifecycle?.beforeOpen(record, this.volumeDir(record.name));
    const underlay = await this.underlaySource?.(record.name);
    const driver = await VolumeDriver.open({
      ...(underlay ? { underlay } : {}),
      dir: this.volumeDir(record.name),
      volumeName: record.name,
      sizeBytes: record.sizeBytes,
      scoSizeBytes: record.scoSizeBytes,
      logger: this.logger.child({ volume: record.name }),
      ...(this.ramCache ? { ramCache: this.ramCache } : {}),
      ...(this.backend ? { backend: { ...this.backend, volumeId: record.id, ownerEpoch: record.ownerEpoch, store: this.lifecycle?.fencedStore(record, this.backend.store) ?? this.backend.store } } : {}),
    });
    try {
      await this.lifecycle?.afterOpen(record, driver);
    } catch (err) {
      await driver.close().catch(() => undefined);
      await this.lifecycle?.closed(record.name);
      throw err;
    }
    const owned: OwnedVolume = { driver, volumeId: record.id, ownerEpoch: record.ownerEpoch, sessions: 0 };
    this.owned.set(record.name, owned);
    // Only with HA is there a router to take a failed volume over; without it, the volume stays failed here.
    if (this.lifecycle !== undefined) driver.onFailed = (cause) => void this.giveUpFailed(record.name, owned, cause);
    this.logger.info(
      { volume: record.name, ownerEpoch: record.ownerEpoch, openMs: Date.now() - startedMs, ...driver.stats() },
      'volume open',
    );
    return owned;
  }

  /**
   * A volume missing from coordination is destroyed only when coordination holds its tombstone. A store
   * that lost its state (a Redis restarted without persistence, a replaced coordination.json) lists no
   * volumes at all, and taking that for deletions destroyed every volume's data, locally and in the backend.
   */
  private async dropIfDeleted(name: string, owned: OwnedVolume, record: VolumeRecord | undefined): Promise<void> {
    if (await this.coordination.volumeDeleted(owned.volumeId)) return this.dropDeleted(name, owned);
    if (record !== undefined && record.id !== owned.volumeId) {
      // The name now belongs to a new volume (coordination lost the old one): stop serving the old data
      // under it. The next open moves the old directory aside (claimDirectory); nothing is destroyed.
      this.owned.delete(name);
      await owned.driver.close().catch((err) => this.logger.error({ err, volume: name }, 'closing replaced volume failed'));
      await this.lifecycle?.closed(name);
      this.logger.error({ volume: name, volumeId: owned.volumeId, newVolumeId: record.id }, 'volume name now names another volume, and the old one was never deleted: closed here, its data kept');
      return;
    }
    if (this.missingLogged.has(owned.volumeId)) return;
    this.missingLogged.add(owned.volumeId);
    this.logger.error(
      { volume: name, volumeId: owned.volumeId },
      'volume is missing from coordination but was never deleted there: its data is kept and it is still served (did coordination lose its state?)',
    );
  }

  private async dropDeleted(name: string, owned: OwnedVolume): Promise<void> {
    this.owned.delete(name);
    await owned.driver.close().catch((err) => this.logger.error({ err, volume: name }, 'closing deleted volume failed'));
    await this.lifecycle?.closed(name);
    // The directory is the deleted volume's unless a new volume of the same name opened there meanwhile.
    if (((await this.directoryOwner(name)) ?? owned.volumeId) === owned.volumeId) {
      await VolumeDriver.destroy(this.volumeDir(name));
      await rm(`${this.volumeDir(name)}.id`, { force: true });
    }
    this.logger.info({ volume: name }, 'volume deleted, local data removed');
    const backend = this.backend;
    if (backend) {
      backend.readCache.invalidatePrefix(volumeObjectPrefix(owned.volumeId));
      // In the background: a large volume has many objects, and reconcile must keep its pace.
      deleteVolumeObjects({ ...backend, volumeId: owned.volumeId }, this.logger).catch((err) =>
        this.logger.error({ err, volume: name, volumeId: owned.volumeId }, 'deleting the volume objects from the backend failed'),
      );
    }
  }

  /**
   * An I/O error failed the volume's driver (docs/high-availability.md, "A volume whose disk fails"): the
   * failure goes to coordination at our epoch, so that the DTL peer may take the volume over although this
   * router lives, and the driver closes here. Its DTL stream stays on the peer (the journal drops it only
   * once everything is on the backend), and every request already failed with CLOSED, which the edges
   * re-send to the new owner.
   */
  private async giveUpFailed(name: string, owned: OwnedVolume, cause: KeelError): Promise<void> {
    if (this.owned.get(name) !== owned) return;
    this.owned.delete(name);
    this.failedAtEpoch.set(name, owned.ownerEpoch);
    this.logger.error({ volume: name, ownerEpoch: owned.ownerEpoch, err: cause.message }, 'volume driver failed: handing the volume to another router');
    await this.coordination
      .setVolumeDtl(name, owned.ownerEpoch, { ownerFailedEpoch: owned.ownerEpoch })
      .catch((err) => this.logger.error({ err, volume: name }, 'recording the failed volume in coordination failed'));
    await owned.driver.close().catch((err) => this.logger.error({ err, volume: name }, 'closing the failed volume failed'));
    await this.lifecycle?.closed(name);
  }

  private async dropFenced(name: string, owned: OwnedVolume): Promise<void> {
    this.owned.delete(name);
    await owned.driver.close().catch((err) => this.logger.error({ err, volume: name }, 'closing fenced volume failed'));
    await this.lifecycle?.closed(name);
    this.logger.warn({ volume: name, ownerEpoch: owned.ownerEpoch }, 'volume now owned elsewhere: closed here');
  }

  /**
   * Graceful handover (docs/high-availability.md): new opens wait; the driver closes (in-flight requests
   * finish, later ones get CLOSED and the edge re-sends them), seals and uploads its open SCO and TLog;
   * only when all of it is on the backend does `transfer` move the ownership (epoch compare-and-set).
   * Throws BUSY (ownership unchanged, the volume reopens here at the next open) when the upload did not finish.
   */
  async handOver(name: string, transfer: (ownerEpoch: number) => Promise<void>): Promise<{ closeMs: number }> {
    const owned = this.owned.get(name);
    if (!owned) throw KeelError.notOwner(name);
    let done!: () => void;
    this.handingOver.set(name, new Promise<void>((resolve) => (done = resolve)));
    const startedMs = Date.now();
    try {
      this.owned.delete(name);
      await owned.driver.close();
      await this.lifecycle?.closed(name);
      const left = owned.driver.stats().backend;
      if (left && left.scosQueued + left.scosUploading + left.tlogsQueued > 0) {
        throw KeelError.busy(`volume '${name}': its last SCOs and TLogs did not reach the backend in time; not handed over`);
      }
      await this.beforeTransfer?.(name, owned.driver);
      await transfer(owned.ownerEpoch);
      return { closeMs: Date.now() - startedMs };
    } finally {
      this.handingOver.delete(name);
      done();
    }
  }

  /**
   * A volume open here under a name that coordination now gives to another volume (deleted and created
   * again within a reconcile, or coordination lost the old one) is closed before the name is opened.
   */
  private async dropIfReplaced(name: string): Promise<void> {
    const owned = this.owned.get(name);
    if (owned === undefined) return;
    const record = await this.coordination.getVolume(name);
    if (record !== undefined && record.id !== owned.volumeId && this.owned.get(name) === owned) await this.dropIfDeleted(name, owned, record);
  }

  /**
   * The volume directory is named after the volume, and a name can be reused: `NAME.id` says whose data
   * is in it. Another volume's directory is destroyed when that volume was deleted (its tombstone), and
   * otherwise moved aside to `volumes/.kept/<id>`, never taken: a re-created name served the deleted
   * volume's data, and lost its own writes at the next takeover.
   */
  private async claimDirectory(record: VolumeRecord): Promise<void> {
    const dir = this.volumeDir(record.name);
    const previous = await this.directoryOwner(record.name);
    if (previous !== undefined && previous !== record.id) {
      if (await this.coordination.volumeDeleted(previous)) {
        await VolumeDriver.destroy(dir);
        this.logger.info({ volume: record.name, volumeId: record.id, previousVolumeId: previous }, 'local data of a deleted volume of the same name removed');
      } else {
        const kept = path.join(this.routerDir, 'volumes', '.kept', previous);
        await mkdir(path.dirname(kept), { recursive: true });
        await rename(dir, kept).catch((err: NodeJS.ErrnoException) => {
          if (err.code !== 'ENOENT') throw err;
        });
        this.logger.error({ volume: record.name, volumeId: record.id, previousVolumeId: previous, keptIn: kept }, 'local data of another volume of the same name, never deleted, moved aside');
      }
      await rm(`${dir}.epoch`, { force: true }); // the other volume's epoch file
    }
    await mkdir(path.dirname(dir), { recursive: true });
    await writeFile(`${dir}.id`, `${record.id}\n`);
  }

  /** Whose data the volume directory of `name` holds (VolumeRecord.id), or undefined when unrecorded. */
  private async directoryOwner(name: string): Promise<string | undefined> {
    const text = await readFile(`${this.volumeDir(name)}.id`, 'utf8').catch(() => undefined);
    return text === undefined ? undefined : text.trim();
  }

  /** Names of the volumes open here. */
  ownedNames(): string[] {
    return [...this.owned.keys()];
  }

  private async resize(name: string, owned: OwnedVolume, sizeBytes: number): Promise<void> {
    await owned.driver.resize(sizeBytes);
    this.logger.info({ volume: name, sizeBytes }, 'volume resized');
  }
}
