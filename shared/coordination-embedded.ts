/**
 * Embedded coordination for one host: a JSON document (`coordination.json`) under the data directory,
 * shared by the `keel up` processes. Writers take a lock file (proper-lockfile), read, modify and replace
 * the document atomically (write to a temp file, fsync, rename), so readers never see a torn document and
 * a writer killed mid-update leaves the previous version. Not for more than one host: use Redis there.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import lockfile from 'proper-lockfile';
import { KeelError } from './errors.ts';
import { limits } from './limits.ts';
import { newVolumeRecord, type Coordination, type RouterRecord, type RouterState, type VolumeDtlState, type VolumeRecord, type VolumeSpec, type VpoolConfig } from './coordination.ts';

const documentVersion = 1;

interface CoordinationDocument {
  version: number;
  routers: Record<string, RouterRecord>;
  volumes: Record<string, VolumeRecord>;
  /** Ids of deleted volumes, oldest first (Coordination.deleteVolume). */
  deletedVolumeIds?: string[];
  vpool?: VpoolConfig;
}

/** Creates the cluster's data directory if needed, with one clear error when the path cannot be one. */
export async function makeDataDir(dataDir: string): Promise<void> {
  try {
    await fs.mkdir(dataDir, { recursive: true });
  } catch (err) {
    throw KeelError.io(`cannot use ${dataDir} as the data directory: ${(err as Error).message}`, err);
  }
}

/** Keyed by names users choose: without a prototype, `constructor` or `__proto__` is a name like any other. */
const dictionary = <T>(entries: Record<string, T> = {}): Record<string, T> => Object.assign(Object.create(null) as Record<string, T>, entries);

const emptyDocument = (): CoordinationDocument => ({ version: documentVersion, routers: dictionary(), volumes: dictionary() });

export class EmbeddedCoordination implements Coordination {
  private readonly file: string;

  private constructor(readonly dataDir: string) {
    this.file = path.join(dataDir, 'coordination.json');
  }

  static async open(dataDir: string): Promise<EmbeddedCoordination> {
    await makeDataDir(dataDir);
    const coordination = new EmbeddedCoordination(dataDir);
    try {
      await fs.writeFile(coordination.file, JSON.stringify(emptyDocument(), null, 2), { flag: 'wx' });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw KeelError.io(`cannot create ${coordination.file}: ${(err as Error).message}`, err);
    }
    await coordination.read(); // validates an existing document early
    return coordination;
  }

  async registerRouter(record: RouterRecord): Promise<void> {
    await this.update((doc) => {
      doc.routers[record.id] = { ...record };
    });
  }

  async heartbeat(routerId: string, nowMs: number): Promise<void> {
    await this.update((doc) => {
      this.router(doc, routerId).heartbeatAtMs = nowMs;
    });
  }

  async setRouterState(routerId: string, state: RouterState): Promise<void> {
    await this.update((doc) => {
      this.router(doc, routerId).state = state;
    });
  }

  async listRouters(): Promise<RouterRecord[]> {
    const doc = await this.read();
    return Object.values(doc.routers).sort((a, b) => a.id.localeCompare(b.id));
  }

  async createVolume(spec: VolumeSpec, nowMs: number): Promise<VolumeRecord> {
    return this.update((doc) => {
      if (doc.volumes[spec.name]) throw KeelError.volumeExists(spec.name);
      const record = newVolumeRecord(spec, nowMs);
      doc.volumes[spec.name] = record;
      return { ...record };
    });
  }

  async getVolume(name: string): Promise<VolumeRecord | undefined> {
    const doc = await this.read();
    const record = doc.volumes[name];
    return record && { ...record };
  }

  async listVolumes(): Promise<VolumeRecord[]> {
    const doc = await this.read();
    return Object.values(doc.volumes).sort((a, b) => a.name.localeCompare(b.name));
  }

  async resizeVolume(name: string, sizeBytes: number): Promise<VolumeRecord> {
    return this.update((doc) => {
      const record = this.volume(doc, name);
      record.sizeBytes = sizeBytes;
      return { ...record };
    });
  }

  async deleteVolume(name: string): Promise<void> {
    await this.update((doc) => {
      const { id } = this.volume(doc, name);
      delete doc.volumes[name];
      doc.deletedVolumeIds = [...(doc.deletedVolumeIds ?? []), id].slice(-limits.volumeTombstonesMax);
    });
  }

  async volumeDeleted(volumeId: string): Promise<boolean> {
    return ((await this.read()).deletedVolumeIds ?? []).includes(volumeId);
  }

  async claimVolume(name: string, owner: string, expectedEpoch: number): Promise<VolumeRecord | undefined> {
    return this.update((doc) => {
      const record = this.volume(doc, name);
      if (record.ownerEpoch !== expectedEpoch) return undefined;
      record.owner = owner;
      record.ownerEpoch += 1;
      return { ...record };
    });
  }

  async setVolumeDtl(name: string, expectedEpoch: number, state: VolumeDtlState): Promise<boolean> {
    return this.update((doc) => {
      const record = this.volume(doc, name);
      if (record.ownerEpoch !== expectedEpoch) return false;
      if (state.dtlMode !== undefined) record.dtlMode = state.dtlMode;
      if (state.dtlPeer !== undefined) record.dtlPeer = state.dtlPeer;
      if (state.dtlInSync !== undefined) record.dtlInSync = state.dtlInSync;
      if (state.dtlStream !== undefined) record.dtlStream = state.dtlStream;
      if (state.ownerFailedEpoch !== undefined) record.ownerFailedEpoch = state.ownerFailedEpoch;
      return true;
    });
  }

  async getVpool(): Promise<VpoolConfig | undefined> {
    const doc = await this.read();
    return doc.vpool && structuredClone(doc.vpool);
  }

  async setVpool(config: VpoolConfig): Promise<void> {
    await this.update((doc) => {
      doc.vpool = structuredClone(config);
    });
  }

  async close(): Promise<void> {}

  private router(doc: CoordinationDocument, id: string): RouterRecord {
    const record = doc.routers[id];
    if (!record) throw KeelError.routerNotFound(id);
    return record;
  }

  private volume(doc: CoordinationDocument, name: string): VolumeRecord {
    const record = doc.volumes[name];
    if (!record) throw KeelError.volumeNotFound(name);
    return record;
  }

  private async read(): Promise<CoordinationDocument> {
    let text: string;
    try {
      text = await fs.readFile(this.file, 'utf8');
    } catch (err) {
      throw KeelError.io(`cannot read ${this.file}`, err);
    }
    let doc: CoordinationDocument;
    try {
      doc = JSON.parse(text) as CoordinationDocument;
    } catch (err) {
      throw KeelError.corrupt(`coordination document ${this.file}`, { reason: String(err) });
    }
    if (doc.version !== documentVersion || typeof doc.routers !== 'object' || typeof doc.volumes !== 'object') {
      throw KeelError.corrupt(`coordination document ${this.file}`, { version: doc.version });
    }
    return { ...doc, routers: dictionary(doc.routers), volumes: dictionary(doc.volumes) };
  }

  private async update<T>(mutate: (doc: CoordinationDocument) => T): Promise<T> {
    let release: () => Promise<void>;
    /**
     * Set when proper-lockfile finds our lock gone or taken over as stale (this process stalled longer than
     * coordinationLockStaleMs under load). Its default handler throws from a timer: that crashed a router.
     * Another writer may hold the lock now, so the change must not be written over its change.
     */
    let lost: Error | undefined;
    try {
      release = await lockfile.lock(this.file, {
        stale: limits.coordinationLockStaleMs,
        retries: { retries: limits.coordinationLockRetriesMax, minTimeout: 5, maxTimeout: 100 },
        realpath: false,
        onCompromised: (err) => (lost = err),
      });
    } catch (err) {
      throw KeelError.io(`cannot lock ${this.file}`, err);
    }
    try {
      const doc = await this.read();
      const result = mutate(doc);
      if (lost) throw KeelError.io(`lost the lock on ${this.file} (taken over as stale): the change was not written`, lost);
      await this.replace(doc);
      return result;
    } finally {
      await release().catch(() => {}); // a compromised lock was already reported by proper-lockfile
    }
  }

  private async replace(doc: CoordinationDocument): Promise<void> {
    const temp = `${this.file}.${process.pid}.tmp`;
    const handle = await fs.open(temp, 'w');
    try {
      await handle.writeFile(JSON.stringify(doc, null, 2));
      await handle.sync();
    } finally {
      await handle.close();
    }
    await fs.rename(temp, this.file);
  }
}
