/**
 * Picks the coordination implementation a process uses: Redis when a URL is given (clusters on many
 * hosts), else the embedded document under the data directory (one host, `keel up`).
 * See docs/coordination.md.
 */
import type { Coordination } from './coordination.ts';
import { EmbeddedCoordination } from './coordination-embedded.ts';
import { KeelError } from './errors.ts';
import type { Logger } from './logger.ts';

export interface CoordinationOptions {
  /** The cluster's data directory; holds the embedded document when no Redis URL is given. */
  dataDir: string;
  /** redis://[user:password@]host:port[/db] or rediss://...; selects Redis coordination. */
  redisUrl?: string;
  /** Key prefix on Redis, so several clusters can share one Redis (default `keel:`). */
  redisKeyPrefix?: string;
  logger?: Logger;
}

export async function openCoordination(options: CoordinationOptions): Promise<Coordination> {
  if (options.redisUrl === undefined || options.redisUrl === '') return EmbeddedCoordination.open(options.dataDir);
  checkRedisUrl(options.redisUrl);
  // Loaded only when used: ioredis adds megabytes to every process that runs on embedded coordination.
  const { RedisCoordination } = await import('./coordination-redis.ts');
  return RedisCoordination.open(options.redisUrl, { keyPrefix: options.redisKeyPrefix, logger: options.logger });
}

/** Refuses a malformed URL up front: ioredis would otherwise silently fall back to localhost:6379. */
function checkRedisUrl(url: string): void {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw KeelError.badArgument(`not a Redis URL: '${url}'`);
  }
  if (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') {
    throw KeelError.badArgument(`a Redis URL starts with redis:// or rediss://, got '${parsed.protocol}//'`);
  }
}
