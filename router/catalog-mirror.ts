/**
 * The backend copy of a volume's snapshot catalog and clone origin (docs/snapshots.md, "Catalog in the
 * backend"). snapshots.jsonl and clone.json are files in the owner's volume directory; the TLogs say only
 * which snapshot ids exist. Without this copy, a router that took the volume over, or restored it from the
 * backend, showed `snap-<id>` without names, labels or sizes, lost the template mark and the list of
 * clones, and a restored clone no longer knew its parent.
 *
 * Object: vol/<volumeId>/catalog/<ms>-<epoch> (backend-object-names.ts), content encodeCatalogMirror.
 * Objects are never rewritten: each change puts a new one, then deletes the older ones. One put is in
 * flight per volume, and puts are spaced: a put starts at least limits.catalogCopyIntervalMinMs after
 * the previous one started, and at least catalogCopyPutDurationsBetweenPutsMin times the previous put's
 * duration after it ended. Changes meanwhile coalesce into the next put. A put re-encodes the whole
 * catalog, so back-to-back puts after every change made a create O(number of snapshots) (30 000
 * snapshots: ~50 creates/s instead of ~400, the router's event loop busy encoding). A change after a
 * quiet interval is put at once; an urgent one (a clone, the template mark) and a graceful handover
 * (flush) do not wait for the spacing. After a crash the new owner gets the copy of the last finished
 * put, and the TLogs add what came after it (snapshots named `snap-<id>`, without labels).
 */
import { listObjectNames } from '../backend/object-listing.ts';
import { isKeelError } from '../shared/errors.ts';
import type { Logger } from '../shared/logger.ts';
import { parseVolumeObjectName, volumeObjectKindPrefix, volumeObjectName } from './backend-object-names.ts';
import { limits } from '../shared/limits.ts';
import { decodeCatalogMirror, type CatalogMirrorContent } from './snapshot-catalog-format.ts';
import type { VolumeBackend } from './volume-backend.ts';

export class CatalogMirror {
  private putting: Promise<void> | undefined;
  private dirty = false;
  /** Skip the spacing for the next put (an urgent change, a flush). */
  private hurry = false;
  /** Ends the wait before a spaced put early (set while waiting). */
  private wake: (() => void) | undefined;
  /** When the next put may start (Date.now() ms), unless hurried. */
  private nextPutAtMs = 0;
  /** Puts made (tests count them). */
  putCount = 0;
  /** The ms of this mirror's newest copy (0: none yet); the copy before it is deleted after each put. */
  private lastPutMs = 0;
  /** Copies of earlier epochs (or of this epoch before a restart) are listed and deleted once. */
  private othersDeleted = false;

  constructor(
    /** The volume's backend at the owner's epoch (its store fenced: an old owner's puts fail). */
    readonly backend: VolumeBackend & { ownerEpoch: number },
    /** The copy's bytes (encodeCatalogMirror, or encodeCatalogMirrorSlices), encoded when a put starts. */
    private readonly content: () => Promise<Buffer | readonly Buffer[]>,
    private readonly logger: Logger,
    private readonly spacing: { intervalMinMs: number; putDurationsMin: number } = { intervalMinMs: limits.catalogCopyIntervalMinMs, putDurationsMin: limits.catalogCopyPutDurationsBetweenPutsMin },
  ) {}

  /** The catalog changed: put a new copy (now, after the put in flight, or when the spacing allows; `urgent`: without spacing). */
  changed(urgent = false): void {
    this.dirty = true;
    if (urgent) {
      this.hurry = true;
      this.wake?.();
    }
    this.putting ??= this.putWhileDirty().finally(() => (this.putting = undefined));
  }

  /** Resolves once the latest change is in the backend (or its put failed: logged, and the TLogs remain). */
  async flush(): Promise<void> {
    if (this.lastPutMs === 0) this.dirty = true; // nothing of this epoch in the backend yet
    if (this.dirty) this.changed(true);
    await this.putting;
  }

  private async putWhileDirty(): Promise<void> {
    while (this.dirty) {
      const waitMs = this.nextPutAtMs - Date.now();
      if (waitMs > 0 && !this.hurry) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(() => this.wake?.(), waitMs);
          timer.unref();
          this.wake = () => {
            clearTimeout(timer);
            this.wake = undefined;
            resolve();
          };
        });
      }
      this.hurry = false;
      this.dirty = false;
      const startedMs = Date.now();
      try {
        await this.put();
        const endedMs = Date.now();
        this.nextPutAtMs = Math.max(startedMs + this.spacing.intervalMinMs, endedMs + this.spacing.putDurationsMin * (endedMs - startedMs));
      } catch (err) {
        // Fenced (another owner now) or the backend is down: the next change, or the handover's flush, tries again.
        this.logger.warn({ err: (err as Error).message, volumeId: this.backend.volumeId }, 'catalog copy not put in the backend');
        return;
      }
    }
  }

  private async put(): Promise<void> {
    this.putCount += 1;
    const bytes = await this.content();
    const putMs = Math.max(Date.now(), this.lastPutMs + 1); // names grow even when the clock does not
    const name = this.nameOf(putMs);
    await this.backend.store.putObject(name, bytes);
    const previousMs = this.lastPutMs;
    this.lastPutMs = putMs;
    if (!this.othersDeleted) this.othersDeleted = await this.deleteAllBut(name);
    else if (previousMs !== 0) this.othersDeleted = await this.deleteCopy(this.nameOf(previousMs));
  }

  private nameOf(putMs: number): string {
    return volumeObjectName(this.backend.volumeId, 'catalog', putMs, this.backend.ownerEpoch);
  }

  /** True when every other copy of this epoch or an older one is gone (a newer owner's copies are never touched). */
  private async deleteAllBut(newest: string): Promise<boolean> {
    const { names } = await listObjectNames(this.backend.asds, volumeObjectKindPrefix(this.backend.volumeId, 'catalog'));
    let all = true;
    for (const name of names) {
      const parsed = parseVolumeObjectName(this.backend.volumeId, name);
      if (name !== newest && parsed?.kind === 'catalog' && parsed.epoch <= this.backend.ownerEpoch) all = (await this.deleteCopy(name)) && all;
    }
    return all;
  }

  private async deleteCopy(name: string): Promise<boolean> {
    try {
      await this.backend.store.deleteObject(name);
      return true;
    } catch (err) {
      if (isKeelError(err, 'OBJECT_NOT_FOUND')) return true;
      this.logger.warn({ err: (err as Error).message, name }, 'old catalog copy not deleted (a later put tries again)');
      return false;
    }
  }
}

/** The newest catalog copy of the volume in the backend (highest epoch, then newest), or undefined. */
export async function fetchCatalogMirror(backend: VolumeBackend): Promise<CatalogMirrorContent | undefined> {
  const { names } = await listObjectNames(backend.asds, volumeObjectKindPrefix(backend.volumeId, 'catalog'));
  let newest: { name: string; epoch: number; ms: number } | undefined;
  for (const name of names) {
    const parsed = parseVolumeObjectName(backend.volumeId, name);
    if (parsed?.kind !== 'catalog') continue;
    if (newest === undefined || parsed.epoch > newest.epoch || (parsed.epoch === newest.epoch && parsed.seq > newest.ms)) newest = { name, epoch: parsed.epoch, ms: parsed.seq };
  }
  if (newest === undefined) return undefined;
  const { sizeBytes } = await backend.store.statObject(newest.name);
  return decodeCatalogMirror(await backend.store.readRange(newest.name, 0, sizeBytes), newest.name);
}
