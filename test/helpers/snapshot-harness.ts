/**
 * Volumes with snapshots and clones on VolumeDriver-level objects, without a router: the same pieces
 * router/snapshot-service.ts composes (VolumeDriver + VolumeSnapshots + CloneUnderlay + scrubber), with
 * small SCOs so that scrubbing and SCO rollover happen in a few hundred clusters.
 */
import path from 'node:path';
import { NodeDisk } from '../../shared/disk.ts';
import { KeelError } from '../../shared/errors.ts';
import { silentLogger } from '../../shared/logger.ts';
import { cloneFileName, decodeCloneOrigin, encodeCloneOrigin } from '../../router/clone-format.ts';
import { CloneUnderlay, ParentSnapshotReader } from '../../router/clone-underlay.ts';
import { scrubVolume, type ScrubReport } from '../../router/scrubber.ts';
import { replayTrimMask } from '../../router/snapshot-map-builder.ts';
import { SnapshotTarget } from '../../router/snapshot-target.ts';
import type { VolumeBackend } from '../../router/volume-backend.ts';
import { VolumeDriver } from '../../router/volume-driver.ts';
import { VolumeSnapshots } from '../../router/volume-snapshots.ts';

export interface HarnessVolume {
  name: string;
  driver: VolumeDriver;
  snapshots: VolumeSnapshots;
  underlay: CloneUnderlay | undefined;
}

export class SnapshotHarness {
  readonly volumes = new Map<string, HarnessVolume>();
  private readonly disk = new NodeDisk();
  /** Creation order, so a restart opens parents before their clones. */
  private readonly order: string[] = [];

  constructor(
    private readonly root: string,
    readonly sizeBytes: number,
    readonly scoSizeBytes: number,
    /** A backend per volume (uploads, eviction, remote reads); none by default. */
    private readonly backendFor?: (name: string) => Promise<VolumeBackend>,
  ) {}

  dir(name: string): string {
    return path.join(this.root, name);
  }

  get(name: string): HarnessVolume {
    const volume = this.volumes.get(name);
    if (!volume) throw KeelError.volumeNotFound(name);
    return volume;
  }

  async create(name: string): Promise<HarnessVolume> {
    this.order.push(name);
    return this.open(name);
  }

  async clone(parent: string, snapshot: string, name: string): Promise<HarnessVolume> {
    const source = this.get(parent);
    const info = source.snapshots.find(snapshot);
    await this.disk.mkdirp(this.dir(name));
    await this.disk.writeFileAtomic(path.join(this.dir(name), cloneFileName), encodeCloneOrigin({ parentVolume: parent, parentSnapshotId: info.id, parentSnapshotName: info.name }));
    await source.snapshots.addClone(name, info.id);
    this.order.push(name);
    return this.open(name);
  }

  async deleteClone(name: string): Promise<void> {
    const volume = this.get(name);
    const origin = decodeCloneOrigin((await this.disk.readFile(path.join(this.dir(name), cloneFileName)))!, name);
    if (volume.snapshots.clones().length > 0) throw KeelError.hasDependents(`volume '${name}'`, volume.snapshots.clones().map((c) => c.clone));
    await volume.driver.close();
    this.volumes.delete(name);
    this.order.splice(this.order.indexOf(name), 1);
    await VolumeDriver.destroy(this.dir(name));
    await this.get(origin.parentVolume).snapshots.removeClone(name);
  }

  async openSnapshot(name: string, snapshot: string): Promise<SnapshotTarget> {
    const volume = this.get(name);
    const info = volume.snapshots.find(snapshot);
    const image = await volume.snapshots.image(info);
    const parent = volume.underlay?.parent;
    return new SnapshotTarget(info.sizeBytes, image, { readScoClusters: (s, slot, b) => volume.driver.readScoClusters(s, slot, b), ...(parent ? { parent } : {}) }, `${name}@${snapshot}`, () => undefined);
  }

  scrub(name: string, pace: { clustersPerSecondMax?: number; clustersPerSecondBusyMax?: number; defrag?: boolean } = {}): Promise<ScrubReport> {
    const volume = this.get(name);
    return scrubVolume({ disk: this.disk, dir: this.dir(name), driver: volume.driver, snapshots: volume.snapshots, logger: silentLogger(), garbageFractionMin: 0.25, ...pace });
  }

  /** Closes every driver cleanly (crash: false) or abandons them (crash: true, like kill -9), then reopens all. */
  async restart(crash = false): Promise<void> {
    for (const volume of [...this.volumes.values()].reverse()) if (!crash) await volume.driver.close();
    this.volumes.clear();
    for (const name of this.order) await this.open(name);
  }

  async closeAll(): Promise<void> {
    for (const volume of [...this.volumes.values()].reverse()) await volume.driver.close().catch(() => undefined);
    this.volumes.clear();
  }

  private async open(name: string): Promise<HarnessVolume> {
    const dir = this.dir(name);
    const originBytes = await this.disk.readFile(path.join(dir, cloneFileName));
    let underlay: CloneUnderlay | undefined;
    if (originBytes !== undefined) {
      const origin = decodeCloneOrigin(originBytes, dir);
      const parent = this.get(origin.parentVolume);
      const info = parent.snapshots.list().find((s) => s.id === origin.parentSnapshotId)!;
      const image = await parent.snapshots.pinImage(info);
      const grand = parent.underlay?.parent;
      const reader = { readScoClusters: (s: number, slot: number, b: Buffer) => parent.driver.readScoClusters(s, slot, b), ...(grand ? { parent: grand } : {}) };
      underlay = new CloneUnderlay(new ParentSnapshotReader(image, reader, info.sizeBytes), await replayTrimMask(this.disk, dir));
    }
    const driver = await VolumeDriver.open({
      dir,
      volumeName: name,
      sizeBytes: this.sizeBytes,
      scoSizeBytes: this.scoSizeBytes,
      scoSizeBytesMinOverride: 4096,
      ...(underlay ? { underlay } : {}),
      ...(this.backendFor ? { backend: await this.backendFor(name) } : {}),
    });
    const snapshots = await VolumeSnapshots.load(this.disk, name, dir, underlay !== undefined);
    const volume: HarnessVolume = { name, driver, snapshots, underlay };
    this.volumes.set(name, volume);
    return volume;
  }
}
