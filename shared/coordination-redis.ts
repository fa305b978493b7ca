/**
 * Coordination on Redis (ioredis) for clusters of routers and edges on many hosts. The key layout, the
 * atomic scripts and the failure behaviour are in docs/coordination.md; the layout itself is
 * shared/coordination-redis-format.ts.
 *
 * Calls fail fast instead of waiting for Redis: while the connection is down every call rejects at once
 * with IO, a command that gets no reply within coordinationCommandTimeoutMs rejects with TIMEOUT, and
 * nothing is queued or re-sent behind the caller's back (a re-sent claim could report "epoch moved" for a
 * claim that in fact won). The client keeps reconnecting in the background; callers retry on their own
 * schedule (heartbeats, reconciles, edge owner lookups).
 */
import { Redis } from 'ioredis';
import { KeelError, isKeelError } from './errors.ts';
import { limits } from './limits.ts';
import { createLogger, type Logger } from './logger.ts';
import { newVolumeRecord, type Coordination, type RouterRecord, type RouterState, type VolumeDtlState, type VolumeRecord, type VolumeSpec, type VpoolConfig } from './coordination.ts';
import {
  decodeRouter,
  decodeVolume,
  decodeVpool,
  defaultKeyPrefix,
  fieldsFromFlat,
  redisKeys,
  redisLayoutVersion,
  redisScripts,
  routerFields,
  volumeDtlFields,
  volumeFields,
  type RedisKeys,
} from './coordination-redis-format.ts';

/** The connection as ioredis reports it through its events, one state per event. */
export type RedisConnectionStatus =
  | { state: 'connecting' } // TCP connect in progress
  | { state: 'connected' } // TCP up, ready check (INFO) in progress
  | { state: 'ready' }
  | { state: 'disconnected'; reason: string }
  | { state: 'reconnecting'; delayMs: number }
  | { state: 'closed' };

export interface RedisCoordinationOptions {
  keyPrefix?: string;
  logger?: Logger;
  connectTimeoutMs?: number;
  commandTimeoutMs?: number;
}

/** What ioredis says when a command is issued while disconnected (enableOfflineQueue: false). */
const offlineMessage = "Stream isn't writeable and enableOfflineQueue options is false";

type ScriptName = (typeof redisScripts)[keyof typeof redisScripts]['name'];
type ScriptCaller = (...keysThenArgs: string[]) => Promise<unknown>;

export class RedisCoordination implements Coordination {
  private status: RedisConnectionStatus = { state: 'connecting' };
  private lastError: string | undefined;
  private closing = false;
  private readonly keys: RedisKeys;

  private constructor(
    private readonly redis: Redis,
    private readonly url: string,
    keyPrefix: string,
    private readonly logger: Logger,
    private readonly commandTimeoutMs: number,
  ) {
    this.keys = redisKeys(keyPrefix);
    for (const script of Object.values(redisScripts)) {
      redis.defineCommand(script.name, { numberOfKeys: script.numberOfKeys, lua: script.lua });
    }
    // ioredis emits 'error' on every failed (re)connect; unhandled, it would crash the process.
    redis.on('error', (err: Error) => {
      this.lastError = err.message;
      this.logger.debug({ err: err.message }, 'redis connection error');
    });
    redis.on('connecting', () => this.setStatus({ state: 'connecting' }));
    redis.on('connect', () => this.setStatus({ state: 'connected' }));
    redis.on('ready', () => this.setStatus({ state: 'ready' }));
    redis.on('close', () => this.setStatus({ state: 'disconnected', reason: this.lastError ?? 'connection closed' }));
    redis.on('reconnecting', (delayMs: number) => this.setStatus({ state: 'reconnecting', delayMs }));
    redis.on('end', () => this.setStatus({ state: 'closed' }));
  }

  /**
   * Connects (bounded by connectTimeoutMs), then checks or writes the layout version. Rejects with IO or
   * TIMEOUT when Redis cannot be reached, CORRUPT when the prefix holds another layout version.
   */
  static async open(url: string, options: RedisCoordinationOptions = {}): Promise<RedisCoordination> {
    const connectTimeoutMs = options.connectTimeoutMs ?? limits.coordinationConnectTimeoutMs;
    const commandTimeoutMs = options.commandTimeoutMs ?? limits.coordinationCommandTimeoutMs;
    const logger = options.logger ?? createLogger('coordination-redis');
    const redis = new Redis(url, {
      lazyConnect: true,
      connectTimeout: connectTimeoutMs,
      commandTimeout: commandTimeoutMs,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0, // a connection loss fails the commands in flight at once
      autoResendUnfulfilledCommands: false,
      retryStrategy: (attempt: number) =>
        Math.min(attempt * limits.coordinationReconnectBackoffBaseMs, limits.coordinationReconnectBackoffMaxMs),
    });
    const coordination = new RedisCoordination(redis, redactUrl(url), options.keyPrefix ?? defaultKeyPrefix, logger, commandTimeoutMs);
    try {
      await coordination.connect(connectTimeoutMs);
      await coordination.checkLayoutVersion();
    } catch (err) {
      await coordination.close();
      throw err;
    }
    return coordination;
  }

  get connectionStatus(): RedisConnectionStatus {
    return this.status;
  }

  async registerRouter(record: RouterRecord): Promise<void> {
    await this.script(redisScripts.replaceRouter.name, [this.keys.router(record.id), this.keys.routers], [record.id, ...routerFields(record)]);
  }

  async heartbeat(routerId: string, nowMs: number): Promise<void> {
    await this.setRouterField(routerId, 'heartbeatAtMs', String(nowMs));
  }

  async setRouterState(routerId: string, state: RouterState): Promise<void> {
    await this.setRouterField(routerId, 'state', state);
  }

  async listRouters(): Promise<RouterRecord[]> {
    const ids = await this.command('list routers', () => this.redis.smembers(this.keys.routers));
    const records = await this.readHashes('list routers', ids.map(this.keys.router));
    const routers = records.flatMap(([key, fields]) => (fields ? [decodeRouter(key, fields)] : []));
    return routers.sort((a, b) => a.id.localeCompare(b.id));
  }

  async createVolume(spec: VolumeSpec, nowMs: number): Promise<VolumeRecord> {
    const record = newVolumeRecord(spec, nowMs);
    const created = await this.script(
      redisScripts.createVolume.name,
      [this.keys.volume(spec.name), this.keys.volumes],
      [spec.name, ...volumeFields(record)],
    );
    if (created === 0) throw KeelError.volumeExists(spec.name);
    return record;
  }

  async getVolume(name: string): Promise<VolumeRecord | undefined> {
    const key = this.keys.volume(name);
    const fields = await this.command('get volume', () => this.redis.hgetall(key));
    return Object.keys(fields).length === 0 ? undefined : decodeVolume(key, fields);
  }

  async listVolumes(): Promise<VolumeRecord[]> {
    const names = await this.command('list volumes', () => this.redis.smembers(this.keys.volumes));
    const records = await this.readHashes('list volumes', names.map(this.keys.volume));
    const volumes = records.flatMap(([key, fields]) => (fields ? [decodeVolume(key, fields)] : []));
    return volumes.sort((a, b) => a.name.localeCompare(b.name));
  }

  async resizeVolume(name: string, sizeBytes: number): Promise<VolumeRecord> {
    const key = this.keys.volume(name);
    const reply = await this.script(redisScripts.resizeVolume.name, [key], [String(sizeBytes)]);
    if (reply === null) throw KeelError.volumeNotFound(name);
    return decodeVolume(key, fieldsFromFlat(reply as string[]));
  }

  async deleteVolume(name: string): Promise<void> {
    const keys = [this.keys.volume(name), this.keys.volumes, this.keys.deletedVolumes];
    const deleted = await this.script(redisScripts.deleteVolume.name, keys, [name, String(Date.now()), String(limits.volumeTombstonesMax)]);
    if (deleted === 0) throw KeelError.volumeNotFound(name);
  }

  async volumeDeleted(volumeId: string): Promise<boolean> {
    return (await this.command('volume deleted', () => this.redis.zscore(this.keys.deletedVolumes, volumeId))) !== null;
  }

  async claimVolume(name: string, owner: string, expectedEpoch: number): Promise<VolumeRecord | undefined> {
    const key = this.keys.volume(name);
    const reply = await this.script(redisScripts.claimVolume.name, [key], [owner, String(expectedEpoch)]);
    if (reply === null) throw KeelError.volumeNotFound(name);
    const flat = reply as string[];
    return flat.length === 0 ? undefined : decodeVolume(key, fieldsFromFlat(flat));
  }

  async setVolumeDtl(name: string, expectedEpoch: number, state: VolumeDtlState): Promise<boolean> {
    const fields = volumeDtlFields(state);
    if (fields.length === 0) return (await this.getVolume(name))?.ownerEpoch === expectedEpoch;
    const reply = await this.script(redisScripts.setVolumeFieldsAtEpoch.name, [this.keys.volume(name)], [String(expectedEpoch), ...fields]);
    if (reply === null) throw KeelError.volumeNotFound(name);
    return reply === 1;
  }

  async getVpool(): Promise<VpoolConfig | undefined> {
    const text = await this.command('get vpool', () => this.redis.get(this.keys.vpool));
    return text === null ? undefined : decodeVpool(this.keys.vpool, text);
  }

  async setVpool(config: VpoolConfig): Promise<void> {
    const text = JSON.stringify(config);
    await this.command('set vpool', () => this.redis.set(this.keys.vpool, text));
  }

  /** Quits politely when Redis answers, else drops the connection; stops reconnecting either way. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    try {
      await this.redis.quit();
    } catch {
      // Redis unreachable or slow: nothing is pending that we must wait for.
    }
    this.redis.disconnect();
    this.setStatus({ state: 'closed' }); // ioredis reports 'end' later, or not at all while it was between reconnects
  }

  private async connect(timeoutMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(KeelError.timeout(`connecting to redis at ${this.url}`, timeoutMs)), timeoutMs);
    });
    try {
      await Promise.race([this.redis.connect(), deadline]);
    } catch (err) {
      if (isKeelError(err)) throw err;
      throw KeelError.io(`cannot connect to redis at ${this.url}: ${this.lastError ?? (err as Error).message}`, err);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Writes the layout version into an empty prefix; refuses a prefix written by another layout. */
  private async checkLayoutVersion(): Promise<void> {
    const version = String(redisLayoutVersion);
    await this.command('write layout version', () => this.redis.set(this.keys.format, version, 'NX'));
    const stored = await this.command('read layout version', () => this.redis.get(this.keys.format));
    if (stored !== version) {
      throw KeelError.corrupt(`coordination layout at ${this.keys.format}`, { expected: redisLayoutVersion, found: stored });
    }
  }

  private async setRouterField(routerId: string, field: string, value: string): Promise<void> {
    const written = await this.script(redisScripts.setFieldIfExists.name, [this.keys.router(routerId)], [field, value]);
    if (written === 0) throw KeelError.routerNotFound(routerId);
  }

  /** HGETALL of many keys, limits.coordinationListBatchMax per round trip; a key gone meanwhile is undefined. */
  private async readHashes(what: string, keys: string[]): Promise<[string, Record<string, string> | undefined][]> {
    const out: [string, Record<string, string> | undefined][] = [];
    for (let start = 0; start < keys.length; start += limits.coordinationListBatchMax) {
      const batch = keys.slice(start, start + limits.coordinationListBatchMax);
      const replies = await this.command(what, async () => {
        const pipeline = this.redis.pipeline();
        for (const key of batch) pipeline.hgetall(key);
        return (await pipeline.exec()) ?? [];
      });
      replies.forEach(([err, fields], i) => {
        if (err) throw this.toKeelError(what, err);
        const record = fields as Record<string, string>;
        out.push([batch[i]!, Object.keys(record).length === 0 ? undefined : record]);
      });
    }
    return out;
  }

  private script(name: ScriptName, keys: string[], args: string[]): Promise<unknown> {
    const caller = (this.redis as unknown as Record<ScriptName, ScriptCaller>)[name];
    return this.command(name, () => caller.call(this.redis, ...keys, ...args));
  }

  /** Runs one Redis call; every failure comes out as a KeelError. */
  private async command<T>(what: string, run: () => Promise<T>): Promise<T> {
    if (this.closing) throw KeelError.closed('redis coordination');
    try {
      return await run();
    } catch (err) {
      throw this.toKeelError(what, err);
    }
  }

  private toKeelError(what: string, err: unknown): KeelError {
    if (isKeelError(err)) return err;
    const message = err instanceof Error ? err.message : String(err);
    if (message === 'Command timed out') return KeelError.timeout(`redis ${what} at ${this.url}`, this.commandTimeoutMs);
    if (this.closing) return KeelError.closed('redis coordination');
    const reason = message === offlineMessage ? `not connected, last error: ${this.lastError ?? 'connection closed'}` : message;
    return KeelError.io(`redis ${what} at ${this.url} failed (${this.status.state}): ${reason}`, err, {
      connection: this.status.state,
      lastError: this.lastError,
    });
  }

  private setStatus(next: RedisConnectionStatus): void {
    const from = this.status.state;
    if (from === 'closed') return; // terminal: events ioredis emits after close() change nothing
    if (JSON.stringify(this.status) === JSON.stringify(next)) return; // e.g. 'connecting' at open and its event
    this.status = next;
    const { state: to, ...details } = next;
    const log = { url: this.url, from, to, ...details };
    if (next.state === 'ready' || next.state === 'closed') {
      this.lastError = undefined;
      this.logger.info(log, 'redis coordination status');
    } else if (next.state === 'disconnected' && from === 'ready' && !this.closing) {
      this.logger.warn(log, 'redis coordination status');
    } else {
      // Reconnect attempts during an outage cycle through connecting/disconnected/reconnecting quickly.
      this.logger.debug(log, 'redis coordination status');
    }
  }
}

/** The URL without its password, for logs and error messages. */
function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    return parsed.toString();
  } catch {
    return url;
  }
}
