/**
 * Coordination: which routers exist, which volumes exist, who owns each volume and at which epoch.
 * Never on the data path: the edge asks it where a volume lives, routers ask it what they own.
 * Implementations: embedded (one host, a file under the data directory: coordination-embedded.ts) and,
 * for clusters, Redis (coordination-redis.ts). Both honour the same contract, checked by one test.
 */
import { randomUUID } from 'node:crypto';

export type RouterState = 'up' | 'draining' | 'down';

/** How a volume's writes not yet on the backend are protected (docs/dtl.md). */
export type DtlMode = 'none' | 'async' | 'sync';
export const dtlModes: readonly DtlMode[] = ['none', 'async', 'sync'];

/** The DTL state of a volume, written by its owner (conditional on its epoch), read by a taking-over router. */
export interface VolumeDtlState {
  dtlMode?: DtlMode;
  /** Router holding the owner's DTL stream ('' while none). */
  dtlPeer?: string;
  /** True while every acknowledged write not yet on the backend is held by dtlPeer. */
  dtlInSync?: boolean;
  /**
   * The DTL stream of the owner's latest run (at ownerEpoch) that was in sync. Streams of that epoch
   * older than it are obsolete (their writes were on the backend when it got in sync): a takeover
   * replays none of them. '' or absent: no run of this epoch has been in sync yet.
   */
  dtlStream?: string;
  /**
   * The owner epoch at which the owner's volume driver failed (an I/O error on its disk), 0 or absent: it
   * has not. While it equals ownerEpoch, another router may take the volume over although the owner is
   * alive (docs/high-availability.md, "A volume whose disk fails"); any new epoch leaves it stale.
   */
  ownerFailedEpoch?: number;
}

export interface RouterRecord {
  id: string;
  /** Wire protocol address, host:port, where edges connect. */
  address: string;
  /** Management HTTP address, host:port (status, metrics), when the router serves one. */
  mgmtAddress?: string;
  pid: number;
  startedAtMs: number;
  heartbeatAtMs: number;
  state: RouterState;
}

export interface VolumeRecord {
  /** Unique for the life of the cluster: backend object names use it, so a re-created name never collides. */
  id: string;
  name: string;
  sizeBytes: number;
  scoSizeBytes: number;
  /** Router id of the single writer, or '' while no router has claimed it. */
  owner: string;
  /** Grows at every change of owner; fences out an old owner. */
  ownerEpoch: number;
  createdAtMs: number;
  /** DTL mode (absent: the cluster default, sync) and state (docs/dtl.md). */
  dtlMode?: DtlMode;
  dtlPeer?: string;
  dtlInSync?: boolean;
  /** See VolumeDtlState.dtlStream. */
  dtlStream?: string;
  /** See VolumeDtlState.ownerFailedEpoch. */
  ownerFailedEpoch?: number;
  /**
   * For a clone, its parent volume's name: set at creation, never changed. A clone reads its parent's
   * snapshot through the parent's driver on the same router, so the two never move apart (see cloneFamilyPin).
   */
  cloneOf?: string;
}

/** True while the volume's owner reported, at its current epoch, that its volume driver failed. */
export function ownerHasFailed(record: VolumeRecord): boolean {
  return record.owner !== '' && record.ownerFailedEpoch === record.ownerEpoch;
}

export interface VolumeSpec {
  name: string;
  sizeBytes: number;
  scoSizeBytes: number;
  owner?: string;
  dtlMode?: DtlMode;
  cloneOf?: string;
}

/**
 * A vPool: routers sharing one backend (ASDs + preset) and data-path settings. `backend` is validated by
 * the backend module that reads it (backend/backend-config.ts); coordination only stores it.
 */
export interface VpoolConfig {
  name: string;
  backend?: Record<string, unknown>;
  writeBufferBytesMax?: number;
  [setting: string]: unknown;
}

export interface Coordination {
  /** Adds or replaces this router's record (a restarted router re-registers under its id). */
  registerRouter(record: RouterRecord): Promise<void>;
  /** Refreshes heartbeatAtMs; throws ROUTER_NOT_FOUND if the record is gone. */
  heartbeat(routerId: string, nowMs: number): Promise<void>;
  setRouterState(routerId: string, state: RouterState): Promise<void>;
  listRouters(): Promise<RouterRecord[]>;

  /** Throws VOLUME_EXISTS if the name is taken. */
  createVolume(spec: VolumeSpec, nowMs: number): Promise<VolumeRecord>;
  getVolume(name: string): Promise<VolumeRecord | undefined>;
  listVolumes(): Promise<VolumeRecord[]>;
  /** Throws VOLUME_NOT_FOUND. */
  resizeVolume(name: string, sizeBytes: number): Promise<VolumeRecord>;
  /**
   * Throws VOLUME_NOT_FOUND. Leaves a tombstone of the volume's id (the newest limits.volumeTombstonesMax
   * are kept): its owner destroys the data only on seeing one, never because a record went missing.
   */
  deleteVolume(name: string): Promise<void>;
  /** True when the volume with this id (VolumeRecord.id) was deleted through deleteVolume. */
  volumeDeleted(volumeId: string): Promise<boolean>;
  /**
   * Compare-and-set of the owner: succeeds only while the volume's epoch equals expectedEpoch, then
   * sets the owner and increments the epoch. Returns the new record, or undefined when the epoch moved on
   * (someone else changed the owner first). Throws VOLUME_NOT_FOUND.
   */
  claimVolume(name: string, owner: string, expectedEpoch: number): Promise<VolumeRecord | undefined>;
  /**
   * Sets the given DTL fields, only while the volume's epoch equals expectedEpoch (a fenced owner cannot
   * overwrite its successor's state). False when the epoch moved. Throws VOLUME_NOT_FOUND.
   */
  setVolumeDtl(name: string, expectedEpoch: number, state: VolumeDtlState): Promise<boolean>;

  /** The vPool's configuration, or undefined before one was set. */
  getVpool(): Promise<VpoolConfig | undefined>;
  setVpool(config: VpoolConfig): Promise<void>;

  close(): Promise<void>;
}

/** The record of a new volume: both implementations create exactly this, then store it atomically. */
export function newVolumeRecord(spec: VolumeSpec, nowMs: number): VolumeRecord {
  return {
    id: randomUUID(),
    name: spec.name,
    sizeBytes: spec.sizeBytes,
    scoSizeBytes: spec.scoSizeBytes,
    owner: spec.owner ?? '',
    ownerEpoch: spec.owner ? 1 : 0,
    createdAtMs: nowMs,
    ...(spec.dtlMode ? { dtlMode: spec.dtlMode } : {}),
    ...(spec.cloneOf ? { cloneOf: spec.cloneOf } : {}),
  };
}

/**
 * Why a volume may not change router on its own, or undefined when it may: a clone reads its parent's
 * snapshot through the parent's driver on their router, and its origin and the parent's catalog are
 * files there (docs/snapshots.md, "Clones"). Moving either alone made the clone read zeros, or hang.
 */
export function cloneFamilyPin(record: VolumeRecord, volumes: readonly VolumeRecord[]): string | undefined {
  if (record.cloneOf !== undefined) return `volume '${record.name}' is a clone of '${record.cloneOf}' and reads its data on its router`;
  const clones = volumes.filter((v) => v.cloneOf === record.name).map((v) => v.name);
  if (clones.length > 0) return `volume '${record.name}' has clones that read its data on its router (${clones.join(', ')})`;
  return undefined;
}

/** A router is alive while its heartbeat is recent and it is not marked down. */
export function isRouterAlive(router: RouterRecord, nowMs: number, deadAfterMs: number): boolean {
  return router.state !== 'down' && nowMs - router.heartbeatAtMs <= deadAfterMs;
}

/** A volume's effective DTL mode: sync unless set otherwise. */
export function volumeDtlMode(volume: Pick<VolumeRecord, 'dtlMode'>): DtlMode {
  return volume.dtlMode ?? 'sync';
}
