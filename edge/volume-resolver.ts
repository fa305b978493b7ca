/**
 * The edge's ExportResolver: an NBD export name is a volume name; sessions are RemoteVolumes that follow
 * the volume's owner from router to router.
 */
import type { ExportResolver, OpenBlockTarget } from '../shared/block-target.ts';
import type { Coordination } from '../shared/coordination.ts';
import { KeelError } from '../shared/errors.ts';
import type { Logger } from '../shared/logger.ts';
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
    await this.describe(exportName);
    return RemoteVolume.open(exportName, this.locator, { transport: this.transport, logger: this.logger.child({ volume: exportName }) });
  }

  async describe(exportName: string): Promise<{ sizeBytes: number; readOnly: boolean }> {
    const volume = await this.coordination.getVolume(exportName);
    if (!volume) throw KeelError.volumeNotFound(exportName);
    return { sizeBytes: volume.sizeBytes, readOnly: false };
  }

  async list(): Promise<Array<{ name: string; description?: string }>> {
    const volumes = await this.coordination.listVolumes();
    return volumes.map((v) => ({ name: v.name, description: `keel volume, ${v.sizeBytes} bytes` }));
  }
}
