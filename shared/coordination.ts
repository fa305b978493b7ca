/**
 * Coordination: which routers exist, which volumes exist, who owns each volume and at which epoch.
 * Never on the data path: the edge asks it where a volume lives, routers ask it what they own.
 * Implementations: embedded (one host, a file under the data directory: coordination-embedded.ts) and,
 * for clusters, Redis (the high-availability issue). Both honour the same contract, checked by one test.
 */
export type RouterState = 'up' | 'draining' | 'down';

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
}

export interface VolumeSpec {
  name: string;
  sizeBytes: number;
  scoSizeBytes: number;
  owner?: string;
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
  /** Throws VOLUME_NOT_FOUND. */
  deleteVolume(name: string): Promise<void>;
  /**
   * Compare-and-set of the owner: succeeds only while the volume's epoch equals expectedEpoch, then
   * sets the owner and increments the epoch. Returns the new record, or undefined when the epoch moved on
   * (someone else changed the owner first). Throws VOLUME_NOT_FOUND.
   */
  claimVolume(name: string, owner: string, expectedEpoch: number): Promise<VolumeRecord | undefined>;

  /** The vPool's configuration, or undefined before one was set. */
  getVpool(): Promise<VpoolConfig | undefined>;
  setVpool(config: VpoolConfig): Promise<void>;

  close(): Promise<void>;
}

/** A router is alive while its heartbeat is recent and it is not marked down. */
export function isRouterAlive(router: RouterRecord, nowMs: number, deadAfterMs: number): boolean {
  return router.state !== 'down' && nowMs - router.heartbeatAtMs <= deadAfterMs;
}
