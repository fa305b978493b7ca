import { isRouterAlive, type DtlMode, type RouterRecord, type VolumeRecord } from './coordination.ts';
import { limits } from './limits.ts';

/** Routers that accept new volumes now: up (not draining) and heartbeating. */
export function placeableRouters(routers: RouterRecord[], nowMs: number): RouterRecord[] {
  return routers.filter((r) => r.state === 'up' && isRouterAlive(r, nowMs, limits.routerDeadAfterMs));
}

/** The router owning the fewest volumes, ties broken by id so that placement is deterministic. */
export function leastLoadedRouter(routers: RouterRecord[], volumes: VolumeRecord[]): RouterRecord | undefined {
  const load = new Map(routers.map((r) => [r.id, 0]));
  for (const v of volumes) if (load.has(v.owner)) load.set(v.owner, load.get(v.owner)! + 1);
  return [...routers].sort((a, b) => load.get(a.id)! - load.get(b.id)! || a.id.localeCompare(b.id))[0];
}

/**
 * The DTL peer for a volume: among the candidates, the one that is the DTL peer of the fewest volumes, ties
 * broken by id. A router that missed two heartbeats may be frozen (a forced takeover's old owner often is),
 * and sync writes would wait for it until the request times out: it is chosen only when nothing else is left.
 */
export function leastLoadedDtlPeer(candidates: RouterRecord[], volumes: VolumeRecord[], nowMs: number): RouterRecord | undefined {
  const load = new Map(candidates.map((r) => [r.id, 0]));
  for (const v of volumes) if (v.dtlPeer && load.has(v.dtlPeer)) load.set(v.dtlPeer, load.get(v.dtlPeer)! + 1);
  const silent = (r: RouterRecord) => (nowMs - r.heartbeatAtMs > 2 * limits.heartbeatIntervalMs ? 1 : 0);
  return [...candidates].sort((a, b) => silent(a) - silent(b) || load.get(a.id)! - load.get(b.id)! || a.id.localeCompare(b.id))[0];
}

/**
 * A new volume's DTL mode when none is asked for: `sync` needs a peer on another router, so a cluster with
 * one router gets `none` (a sync volume there could never acknowledge a write). With no router registered
 * yet the choice is left to the default (sync).
 */
export function defaultDtlMode(placeableRouterCount: number, registeredRouterCount: number): DtlMode | undefined {
  if (registeredRouterCount === 0) return undefined;
  return placeableRouterCount >= 2 ? 'sync' : 'none';
}
