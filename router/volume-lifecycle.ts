/**
 * Hooks the VolumeRegistry calls around a volume's life on this router, implemented by the HA layer
 * (router/volume-ha.ts: DTL, takeover, handover; docs/high-availability.md). Without them the registry
 * behaves as before: single owner, no DTL.
 */
import type { VolumeRecord } from '../shared/coordination.ts';
import type { BackendObjectStore } from './volume-backend.ts';
import type { VolumeDriver } from './volume-driver.ts';

export interface VolumeLifecycle {
  /** Before the driver opens `dir`: drops a local copy left by an older ownership of this router. */
  beforeOpen(record: VolumeRecord, dir: string): Promise<void>;
  /** After the driver opened, before it serves anyone: DTL replay after a takeover, DTL journal. A throw closes it. */
  afterOpen(record: VolumeRecord, driver: VolumeDriver): Promise<void>;
  /** The driver was closed (clean stop, handover, fenced, deleted). */
  closed(volumeName: string): Promise<void>;
  /**
   * Another router is recorded as the owner: take the volume over if that owner is gone. Returns the
   * record claimed for this router, undefined when the owner is alive (the caller answers NOT_OWNER), or
   * throws TAKEOVER_REFUSED when taking it would lose acknowledged writes.
   */
  takeOver(record: VolumeRecord): Promise<VolumeRecord | undefined>;
  /** The store the volume's driver uploads through: refuses puts and deletes once our epoch is overtaken (FENCED). */
  fencedStore(record: VolumeRecord, store: BackendObjectStore): BackendObjectStore;
}
