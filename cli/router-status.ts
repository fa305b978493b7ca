/**
 * What the CLI reads from the routers' management servers (GET /status at RouterRecord.mgmtAddress):
 * live counters that coordination does not hold, such as how much of each volume is written. A router
 * that does not answer in time counts as unknown, never as an error.
 */
import type { Coordination } from '../shared/coordination.ts';
import { clusterSizeBytes, limits } from '../shared/limits.ts';

export async function fetchRouterStatus(mgmtAddress: string | undefined, timeoutMs: number = limits.mgmtRequestTimeoutMs): Promise<unknown> {
  if (!mgmtAddress) return undefined;
  try {
    const response = await fetch(`http://${mgmtAddress}/status`, { signal: AbortSignal.timeout(timeoutMs) });
    return response.ok ? await response.json() : undefined;
  } catch {
    return undefined;
  }
}

export interface VolumeUsage {
  /** Bytes of the volume's own mapped clusters (what `keel scrub` cannot reclaim). */
  usedBytes: number;
  scoCount: number;
  tlogCount: number;
}

interface StatusVolumes {
  volumes?: Array<{ name: string; stats: { mappedClusters: number; scoCount: number; tlogCount: number } }>;
}

export interface VolumeUsageReport {
  /** Usage of every volume open on the router that owns it, by name; a volume missing here is unknown. */
  byName: Map<string, VolumeUsage>;
  /** Owners that answered: a volume of theirs missing from byName is not open there (no client yet). */
  answered: Set<string>;
}

export async function volumeUsage(coordination: Coordination): Promise<VolumeUsageReport> {
  const ownerOf = new Map((await coordination.listVolumes()).map((v) => [v.name, v.owner]));
  const owners = new Set([...ownerOf.values()].filter((owner) => owner !== ''));
  const routers = (await coordination.listRouters()).filter((r) => owners.has(r.id) && r.state !== 'down');
  const statuses = await Promise.all(routers.map(async (r) => ({ id: r.id, status: (await fetchRouterStatus(r.mgmtAddress, limits.volumeUsageTimeoutMs)) as StatusVolumes | undefined })));
  const usage = new Map<string, VolumeUsage>();
  const answered = new Set(statuses.filter((s) => s.status !== undefined).map((s) => s.id));
  for (const { id, status } of statuses) {
    for (const volume of status?.volumes ?? []) {
      if (ownerOf.get(volume.name) !== id) continue; // a stale copy on a fenced router
      const { mappedClusters, scoCount, tlogCount } = volume.stats;
      usage.set(volume.name, { usedBytes: mappedClusters * clusterSizeBytes, scoCount, tlogCount });
    }
  }
  return { byName: usage, answered };
}
