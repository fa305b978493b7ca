import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Coordination } from '../../shared/coordination.ts';
import { openCoordination } from '../../shared/coordination-factory.ts';
import { RedisCoordination } from '../../shared/coordination-redis.ts';
import { isKeelError, type KeelError } from '../../shared/errors.ts';
import { limits } from '../../shared/limits.ts';
import { silentLogger } from '../../shared/logger.ts';
import { coordinationContract, coordinationStore } from '../helpers/coordination-contract.ts';
import { freePort } from '../helpers/processes.ts';
import { startRedisServer, type TestRedisServer } from '../helpers/redis-server.ts';

const MiB = 1024 * 1024;
const logger = silentLogger();
let prefixCounter = 0;
const uniquePrefix = () => `test${process.pid}-${++prefixCounter}:`;

/** The error a call rejects with, and how long it took to reject. */
async function failure(call: () => Promise<unknown>): Promise<{ err: KeelError; elapsedMs: number }> {
  const startMs = Date.now();
  const err = await call().then(
    (value) => {
      throw new Error(`expected a failure, got ${JSON.stringify(value)}`);
    },
    (e: unknown) => e,
  );
  expect(isKeelError(err), String(err)).toBe(true);
  return { err: err as KeelError, elapsedMs: Date.now() - startMs };
}

/** Retries `call` until it succeeds or the deadline passes (used while a client reconnects). */
async function eventually<T>(call: () => Promise<T>, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await call();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}

describe('RedisCoordination on a real redis-server', () => {
  let server: TestRedisServer;
  beforeAll(async () => {
    server = await startRedisServer();
  });
  afterAll(async () => {
    await server?.close();
  });

  // Each test's store is a fresh key prefix on the one server: also proves prefixes do not leak.
  coordinationContract('redis (ioredis, Lua scripts)', async () => {
    const keyPrefix = uniquePrefix();
    return coordinationStore(
      () => RedisCoordination.open(server.url, { keyPrefix, logger }),
      async () => {
        const admin = new Redis(server.url);
        const keys = await admin.keys(`${keyPrefix}*`); // test cleanup only: the implementation never scans
        if (keys.length > 0) await admin.del(...keys);
        admin.disconnect();
      },
    );
  });

  describe('key prefixes', () => {
    it('isolates two clusters sharing one Redis', async () => {
      const a = await RedisCoordination.open(server.url, { keyPrefix: uniquePrefix(), logger });
      const b = await RedisCoordination.open(server.url, { keyPrefix: uniquePrefix(), logger });
      try {
        await a.createVolume({ name: 'v', sizeBytes: 4 * MiB, scoSizeBytes: 4 * MiB, owner: 'ra' }, 0);
        await b.createVolume({ name: 'v', sizeBytes: 8 * MiB, scoSizeBytes: 4 * MiB }, 0);
        await a.registerRouter({ id: 'ra', address: 'a:1', pid: 1, startedAtMs: 0, heartbeatAtMs: 0, state: 'up' });
        await a.setVpool({ name: 'pool-a' });
        expect(await b.listRouters()).toEqual([]);
        expect(await b.getVpool()).toBeUndefined();
        await expect(b.heartbeat('ra', 5)).rejects.toMatchObject({ code: 'ROUTER_NOT_FOUND' });
        expect(await b.claimVolume('v', 'rb', 0)).toMatchObject({ owner: 'rb', ownerEpoch: 1 });
        expect(await a.getVolume('v')).toMatchObject({ sizeBytes: 4 * MiB, owner: 'ra', ownerEpoch: 1 });
        await a.deleteVolume('v');
        expect(await b.getVolume('v')).toMatchObject({ sizeBytes: 8 * MiB, owner: 'rb' });
      } finally {
        await a.close();
        await b.close();
      }
    });
  });

  describe('bad state in Redis', () => {
    let admin: Redis;
    beforeAll(() => {
      admin = new Redis(server.url);
    });
    afterAll(() => {
      admin.disconnect();
    });

    it('reports a malformed record as CORRUPT naming the key, and keeps serving other records', async () => {
      const keyPrefix = uniquePrefix();
      const c = await RedisCoordination.open(server.url, { keyPrefix, logger });
      try {
        await c.createVolume({ name: 'good', sizeBytes: 4 * MiB, scoSizeBytes: 4 * MiB }, 0);
        await c.createVolume({ name: 'bad', sizeBytes: 4 * MiB, scoSizeBytes: 4 * MiB }, 0);
        await admin.hset(`${keyPrefix}volume:bad`, 'sizeBytes', 'lots');
        const { err } = await failure(() => c.getVolume('bad'));
        expect(err.code).toBe('CORRUPT');
        expect(err.message).toContain(`${keyPrefix}volume:bad`);
        expect(err.details).toMatchObject({ field: 'sizeBytes' });
        expect((await failure(() => c.listVolumes())).err.code).toBe('CORRUPT');
        expect(await c.getVolume('good')).toMatchObject({ sizeBytes: 4 * MiB });

        await admin.set(`${keyPrefix}vpool`, '{not json');
        expect((await failure(() => c.getVpool())).err.code).toBe('CORRUPT');
        await admin.hset(`${keyPrefix}router:r9`, 'id', 'r9', 'state', 'exploded');
        await admin.sadd(`${keyPrefix}routers`, 'r9');
        expect((await failure(() => c.listRouters())).err.code).toBe('CORRUPT');
      } finally {
        await c.close();
      }
    });

    it('reports a key of the wrong type as IO instead of crashing', async () => {
      const keyPrefix = uniquePrefix();
      const c = await RedisCoordination.open(server.url, { keyPrefix, logger });
      try {
        await admin.set(`${keyPrefix}volume:v`, 'a string, not a hash');
        const { err } = await failure(() => c.claimVolume('v', 'r1', 0));
        expect(err.code).toBe('IO');
        expect(err.message).toMatch(/WRONGTYPE/);
      } finally {
        await c.close();
      }
    });

    it('refuses a prefix written by another layout version', async () => {
      const keyPrefix = uniquePrefix();
      await admin.set(`${keyPrefix}format`, '99');
      const { err } = await failure(() => RedisCoordination.open(server.url, { keyPrefix, logger }));
      expect(err.code).toBe('CORRUPT');
      expect(err.details).toMatchObject({ expected: 1, found: '99' });
    });
  });

  it('rejects every call with CLOSED after close()', async () => {
    const c = await RedisCoordination.open(server.url, { keyPrefix: uniquePrefix(), logger });
    await c.close();
    expect(c.connectionStatus.state).toBe('closed');
    expect((await failure(() => c.listVolumes())).err.code).toBe('CLOSED');
    expect((await failure(() => c.claimVolume('v', 'r', 0))).err.code).toBe('CLOSED');
    await c.close(); // idempotent
  });
});

describe('RedisCoordination when Redis is unreachable', () => {
  const boundMs = limits.coordinationCommandTimeoutMs + 1_000;
  let server: TestRedisServer | undefined;
  let c: RedisCoordination | undefined;
  afterEach(async () => {
    await c?.close();
    await server?.close();
    c = undefined;
    server = undefined;
  });

  it('fails to open with IO within the connect timeout when nothing listens', async () => {
    const port = await freePort();
    const { err, elapsedMs } = await failure(() => RedisCoordination.open(`redis://127.0.0.1:${port}`, { logger }));
    expect(err.code).toBe('IO');
    expect(err.message).toContain(`127.0.0.1:${port}`);
    expect(elapsedMs).toBeLessThan(limits.coordinationConnectTimeoutMs + 1_000);
  });

  it('fails calls fast with IO while Redis is down, and serves again once it is back', async () => {
    server = await startRedisServer();
    c = await RedisCoordination.open(server.url, { keyPrefix: uniquePrefix(), logger });
    await c.createVolume({ name: 'v', sizeBytes: 4 * MiB, scoSizeBytes: 4 * MiB }, 0);
    await c.registerRouter({ id: 'r1', address: 'a:1', pid: 1, startedAtMs: 0, heartbeatAtMs: 0, state: 'up' });

    await server.stop();
    const calls: [string, () => Promise<unknown>][] = [
      ['getVolume', () => c!.getVolume('v')],
      ['listVolumes', () => c!.listVolumes()],
      ['claimVolume', () => c!.claimVolume('v', 'r1', 0)],
      ['createVolume', () => c!.createVolume({ name: 'w', sizeBytes: 4 * MiB, scoSizeBytes: 4 * MiB }, 0)],
      ['heartbeat', () => c!.heartbeat('r1', 1)],
      ['setVpool', () => c!.setVpool({ name: 'p' })],
    ];
    for (const [name, call] of calls) {
      const { err, elapsedMs } = await failure(call);
      expect([name, err.code]).toEqual([name, 'IO']);
      expect(elapsedMs, name).toBeLessThan(boundMs);
    }
    // ioredis reports the lost connection on a later tick than the calls it failed: allow that, bounded.
    await eventually(async () => {
      if (c!.connectionStatus.state === 'ready') throw new Error('still reported ready');
    }, 2_000);
    expect(c.connectionStatus.state).not.toBe('ready');

    // Without persistence the restarted server is empty: the scripts must be loaded again (NOSCRIPT).
    await server.restart();
    await eventually(() => c!.getVolume('v'), 5_000);
    expect(c.connectionStatus.state).toBe('ready');
    const v = await c.createVolume({ name: 'v', sizeBytes: 4 * MiB, scoSizeBytes: 4 * MiB }, 0);
    expect(await c.claimVolume('v', 'r1', v.ownerEpoch)).toMatchObject({ owner: 'r1', ownerEpoch: 1 });
  });

  it('fails a call with TIMEOUT when Redis stops answering, and serves again once it answers', async () => {
    server = await startRedisServer();
    c = await RedisCoordination.open(server.url, { keyPrefix: uniquePrefix(), logger });
    await c.createVolume({ name: 'v', sizeBytes: 4 * MiB, scoSizeBytes: 4 * MiB }, 0);
    server.pause();
    try {
      const { err, elapsedMs } = await failure(() => c!.claimVolume('v', 'r1', 0));
      expect(err.code).toBe('TIMEOUT');
      expect(elapsedMs).toBeGreaterThanOrEqual(limits.coordinationCommandTimeoutMs - 50);
      expect(elapsedMs).toBeLessThan(boundMs);
    } finally {
      server.resume();
    }
    // The timed-out claim may still have run once Redis woke up: its outcome is unknown, so re-read.
    const record = await eventually(() => c!.getVolume('v'), 5_000);
    expect([0, 1]).toContain(record!.ownerEpoch);
    expect(await c.claimVolume('v', 'r2', record!.ownerEpoch)).toMatchObject({ owner: 'r2', ownerEpoch: record!.ownerEpoch + 1 });
  });

  it('keeps records and epochs across a restart of a persistent Redis', async () => {
    server = await startRedisServer({ persistent: true });
    const keyPrefix = uniquePrefix();
    c = await RedisCoordination.open(server.url, { keyPrefix, logger });
    await c.createVolume({ name: 'v', sizeBytes: 4 * MiB, scoSizeBytes: 4 * MiB, owner: 'r1' }, 0);
    await c.claimVolume('v', 'r2', 1);
    await server.stop();
    await server.restart();
    const record = await eventually(() => c!.getVolume('v'), 5_000);
    expect(record).toMatchObject({ owner: 'r2', ownerEpoch: 2 });
    expect(await c.claimVolume('v', 'r1', 1)).toBeUndefined();
  });
});

describe('openCoordination', () => {
  it('opens Redis coordination for a redis:// URL and refuses a malformed one', async () => {
    const server = await startRedisServer();
    let c: Coordination | undefined;
    try {
      c = await openCoordination({ dataDir: '/nonexistent', redisUrl: server.url, redisKeyPrefix: uniquePrefix(), logger });
      expect(c).toBeInstanceOf(RedisCoordination);
      await c.createVolume({ name: 'v', sizeBytes: 4 * MiB, scoSizeBytes: 4 * MiB }, 0);
      expect((await c.listVolumes()).map((v) => v.name)).toEqual(['v']);
    } finally {
      await c?.close();
      await server.close();
    }
    const bad = await openCoordination({ dataDir: '/nonexistent', redisUrl: 'http://127.0.0.1:6379' }).catch((e: unknown) => e);
    expect(isKeelError(bad, 'BAD_ARGUMENT')).toBe(true);
  });
});
