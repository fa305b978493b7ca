/**
 * Finds the router that serves a volume, through coordination. A volume nobody has claimed yet goes to the
 * live router with the fewest volumes; that router claims it (epoch 0 -> 1) when the edge opens it.
 */
import type { Coordination, RouterRecord } from '../shared/coordination.ts';
import { KeelError } from '../shared/errors.ts';
import { leastLoadedRouter, placeableRouters } from '../shared/placement.ts';
import type { OwnerLocator } from './remote-volume.ts';

export class CoordinationOwnerLocator implements OwnerLocator {
  constructor(
    private readonly coordination: Coordination,
    private readonly nowMs: () => number = Date.now,
  ) {}

  async locate(volumeName: string): Promise<{ routerId: string; address: string }> {
    const volume = await this.coordination.getVolume(volumeName);
    if (!volume) throw KeelError.volumeNotFound(volumeName);
    const routers = await this.coordination.listRouters();
    const router = volume.owner ? routers.find((r) => r.id === volume.owner) : await this.leastLoaded(routers);
    if (!router) throw KeelError.noOwner(volumeName, 0);
    return { routerId: router.id, address: router.address };
  }

  private async leastLoaded(routers: RouterRecord[]): Promise<RouterRecord | undefined> {
    return leastLoadedRouter(placeableRouters(routers, this.nowMs()), await this.coordination.listVolumes());
  }
}

