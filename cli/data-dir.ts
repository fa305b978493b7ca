import { existsSync } from 'node:fs';
import path from 'node:path';
import { KeelError } from '../shared/errors.ts';
import type { Coordination } from '../shared/coordination.ts';
import { openCoordination as openCoordinationFor } from '../shared/coordination-factory.ts';
import { createLogger } from '../shared/logger.ts';

/** The cluster's data directory: --data, else $KEEL_DATA, else ./data. */
export function resolveDataDir(option?: string): string {
  return path.resolve(option ?? process.env.KEEL_DATA ?? 'data');
}

/** Redis coordination URL: --redis, else $KEEL_REDIS_URL; none means the embedded document under --data. */
export function resolveRedisUrl(option?: string): string | undefined {
  return option ?? (process.env.KEEL_REDIS_URL || undefined);
}

const opened: Coordination[] = [];

/**
 * Opens coordination for one CLI command; `closeCoordinations` releases it (a Redis socket keeps Node alive).
 * Only `keel up` (`createDataDir`) makes a missing data directory: for any other command a missing one is
 * a mistyped --data, which would otherwise become a new, empty cluster that silently lists nothing.
 */
export async function openCoordination(dataDir: string, redisUrl = resolveRedisUrl(), { createDataDir = false } = {}): Promise<Coordination> {
  if (redisUrl === undefined && !createDataDir && !existsSync(dataDir)) {
    throw KeelError.badArgument(`no Keel cluster at ${dataDir} (no such directory): start one with \`keel up --data ${dataDir}\`, or point --data or $KEEL_DATA at an existing one`);
  }
  // A one-shot command only speaks up about problems; KEEL_LOG_LEVEL=info shows the connection's life.
  const logger = createLogger('keel', {}, 'warn');
  const coordination = await openCoordinationFor({ dataDir, redisUrl, logger });
  opened.push(coordination);
  return coordination;
}

export async function closeCoordinations(): Promise<void> {
  await Promise.allSettled(opened.splice(0).map((c) => c.close()));
}
