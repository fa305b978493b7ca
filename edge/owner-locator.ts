/**
 * Finds the router that serves a volume, through coordination. A volume nobody has claimed yet goes to the
 * live router with the fewest volumes; that router claims it (epoch 0 -> 1) when the edge opens it.
 * When the recorded owner looks gone (marked down, silent for takeoverHeartbeatAgeMinMs, or reporting that
 * its volume driver failed: ownerFailedEpoch), the edge is
 * sent to a live router — the volume's DTL peer first, it holds the DTL — which takes the volume over if
 * the owner is really unreachable and the DTL allows it (docs/high-availability.md), else answers
 * NOT_OWNER / TAKEOVER_REFUSED and the edge keeps looking until ownerWaitMaxMs.
 */
import { ownerHasFailed, type Coordination, type RouterRecord } from '../shared/coordination.ts';
import { KeelError } from '../shared/errors.ts';
import { limits } from '../shared/limits.ts';
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
    const owner = volume.owner ? routers.find((r) => r.id === volume.owner) : undefined;
    const nowMs = this.nowMs();
    const ownerGone =
      volume.owner !== '' && (owner === undefined || owner.state === 'down' || nowMs - owner.heartbeatAtMs > limits.takeoverHeartbeatAgeMinMs || ownerHasFailed(volume));
    let router = volume.owner && !ownerGone ? owner : undefined;
    if (ownerGone) {
      const candidates = placeableRouters(routers, nowMs).filter((r) => r.id !== volume.owner);
      router = candidates.find((r) => r.id === volume.dtlPeer) ?? (await this.leastLoaded(candidates)) ?? owner;
    } else if (!volume.owner) router = await this.leastLoaded(routers);
    if (!router) throw KeelError.noOwner(volumeName, 0);
    return { routerId: router.id, address: router.address };
  }

  private async leastLoaded(routers: RouterRecord[]): Promise<RouterRecord | undefined> {
    return leastLoadedRouter(placeableRouters(routers, this.nowMs()), await this.coordination.listVolumes());
  }
}

