import path from 'node:path';
import { EmbeddedCoordination } from '../shared/coordination-embedded.ts';
import type { Coordination } from '../shared/coordination.ts';

/** The cluster's data directory: --data, else $KEEL_DATA, else ./data. */
export function resolveDataDir(option?: string): string {
  return path.resolve(option ?? process.env.KEEL_DATA ?? 'data');
}

export async function openCoordination(dataDir: string): Promise<Coordination> {
  return EmbeddedCoordination.open(dataDir);
}
