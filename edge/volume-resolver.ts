/**
 * The edge's ExportResolver: an NBD export name is a volume name; sessions are RemoteVolumes that follow
 * the volume's owner from router to router.
 */
import type { ExportResolver, OpenBlockTarget } from '../shared/block-target.ts';
import type { Coordination } from '../shared/coordination.ts';
import { KeelError } from '../shared/errors.ts';
import type { Logger } from '../shared/logger.ts';
import { parseSnapshotRef } from '../shared/snapshot-ref.ts';
import type { Transport } from '../shared/wire/transport.ts';
import { RemoteVolume, type OwnerLocator } from './remote-volume.ts';

export class VolumeResolver implements ExportResolver {
  constructor(
    private readonly coordination: Coordination,
    private readonly locator: OwnerLocator,
    private readonly transport: Transport,
    private readonly logger: Logger,
  ) {}

  async open(exportName: string): Promise<OpenBlockTarget> {
    if (parseSnapshotRef(exportName).snapshot !== undefined) return this.openSnapshot(exportName);
    await this.describe(exportName);
    return RemoteVolume.open(exportName, this.locator, { transport: this.transport, logger: this.logger });
  }

  async describe(exportName: string): Promise<{ sizeBytes: number; readOnly: boolean }> {
    if (parseSnapshotRef(exportName).snapshot !== undefined) {
      // Only the owner knows a snapshot (and its size then): open it briefly.
      const target = await this.openSnapshot(exportName);
      await target.close();
      return { sizeBytes: target.sizeBytes, readOnly: true };
    }
    const volume = await this.coordination.getVolume(exportName);
    if (!volume) throw KeelError.volumeNotFound(exportName);
    return { sizeBytes: volume.sizeBytes, readOnly: false };
  }

  /** `VOL@SNAP`: a read-only RemoteVolume on VOL's owner, which serves the snapshot (docs/snapshots.md). */
  private openSnapshot(exportName: string): Promise<OpenBlockTarget> {
    const locator: OwnerLocator = { locate: () => this.locator.locate(parseSnapshotRef(exportName).volume) };
    return RemoteVolume.open(exportName, locator, { transport: this.transport, logger: this.logger });
  }

  async list(): Promise<Array<{ name: string; description?: string }>> {
    const volumes = await this.coordination.listVolumes();
    return volumes.map((v) => ({ name: v.name, description: `keel volume, ${v.sizeBytes} bytes` }));
  }
}
