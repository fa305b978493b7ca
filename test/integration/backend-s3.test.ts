import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { S3Asd } from '../../backend/asd-s3.ts';
import { ErasureObjectStore } from '../../backend/object-store.ts';
import { parsePreset } from '../../backend/preset.ts';
import { defineBackendSuite } from '../helpers/backend-suite.ts';
import { startS3Server, type TestS3Server } from '../helpers/s3-server.ts';

function s3Asds(server: TestS3Server, requestTimeoutMs = 10_000): S3Asd[] {
  return server.buckets.map(
    (bucket) =>
      new S3Asd({
        id: `s3-${bucket}`,
        bucket,
        prefix: 'pool1/',
        endpoint: server.endpoint,
        region: 'us-east-1',
        forcePathStyle: true,
        accessKeyId: 'S3RVER',
        secretAccessKey: 'S3RVER',
        requestTimeoutMs,
      }),
  );
}

defineBackendSuite('s3rver buckets (one ASD per bucket)', async () => {
  const server = await startS3Server(6);
  const asds = s3Asds(server);
  return {
    asds,
    cleanup: async () => {
      for (const a of asds) a.destroy();
      await server.close();
    },
  };
});

describe('S3 listing', () => {
  it('lists past one page of 1000 keys, in order, and only under its prefix', async () => {
    const server = await startS3Server(1);
    const [asd] = s3Asds(server);
    try {
      const keys = Array.from({ length: 2345 }, (_, i) => `vol/big/sco/${String(i).padStart(8, '0')}.frag${i % 6}`);
      for (let i = 0; i < keys.length; i += 100) await Promise.all(keys.slice(i, i + 100).map((key) => asd!.put(key, [Buffer.from('f')])));
      await asd!.put('vol/bigger/x.frag0', [Buffer.from('f')]); // shares the prefix's first characters only
      expect(await asd!.list('vol/big/')).toEqual(keys);
    } finally {
      asd!.destroy();
      await server.close();
    }
  }, 60_000);
});

describe('S3 outage', () => {
  let server: TestS3Server;
  let asds: S3Asd[];
  let store: ErasureObjectStore;

  beforeAll(async () => {
    server = await startS3Server(6);
    asds = s3Asds(server, 1_000);
    store = new ErasureObjectStore({
      asds,
      preset: parsePreset({ k: 4, m: 2 }, {}),
      requestTimeoutMs: 1_000,
      retriesMax: 4,
      retryBackoffBaseMs: 100,
      retryBackoffMaxMs: 400,
    });
  });
  afterAll(async () => {
    for (const a of asds ?? []) a.destroy();
    await server?.close();
  });

  it('S3 credentials come from the environment when not configured, and are required', () => {
    expect(() => new S3Asd({ id: 'x', bucket: 'b' }, {})).toThrow(expect.objectContaining({ code: 'BAD_CONFIG' }));
    expect(() => new S3Asd({ id: 'x', bucket: 'b' }, { AWS_ACCESS_KEY_ID: 'a', AWS_SECRET_ACCESS_KEY: 'b' })).not.toThrow();
  });

  it('server stopped: calls fail fast and clearly; restarted: puts succeed, even one started during the outage', async () => {
    const data = randomBytes(3 * 1024 * 1024);
    await store.putObject('v/sco/1', data);
    await server.stop();
    let restarted = false;
    try {
    store.clearCache();
    let t0 = Date.now();
    await expect(store.readRange('v/sco/1', 0, 4096)).rejects.toMatchObject({
      code: 'IO',
      message: expect.stringMatching(/no fragment header could be read.*(ECONNREFUSED|ECONNRESET|socket hang up)/s),
    });
    expect(Date.now() - t0).toBeLessThan(3_000);
    t0 = Date.now();
    await expect(store.putObject('v/sco/2', data)).rejects.toThrow(/put of object v\/sco\/2 failed: 6 of 6 fragments not stored/);
    expect(Date.now() - t0).toBeLessThan(5_000); // 4 retries, backoff capped at 400 ms

    // A put that starts during the outage and outlives it thanks to its retries.
    const pending = store.putObject('v/sco/3', data);
    await new Promise((r) => setTimeout(r, 250));
    await server.restart();
    restarted = true;
    await pending;
    } finally {
      if (!restarted) await server.restart();
    }
    await store.putObject('v/sco/2', data);
    for (const name of ['v/sco/1', 'v/sco/2', 'v/sco/3']) {
      expect((await store.readRange(name, 1_000_000, 5000)).equals(data.subarray(1_000_000, 1_005_000))).toBe(true);
    }
  });

  it('server hung (accepts, never answers): every call times out with a clear error, no hang', async () => {
    const data = randomBytes(1024 * 1024);
    await store.putObject('v/sco/4', data);
    store.clearCache();
    server.stall();
    try {
      const t0 = Date.now();
      await expect(store.readRange('v/sco/4', 0, 4096)).rejects.toThrow(/timed out after 1000 ms/);
      // Headers are tried one fragment after another: 6 timeouts of 1 s at most.
      expect(Date.now() - t0).toBeLessThan(8_000);
      const t1 = Date.now();
      await expect(store.putObject('v/sco/5', data)).rejects.toThrow(/timed out after 1000 ms/);
      expect(Date.now() - t1).toBeLessThan(10_000);
      expect(store.asdStats().reduce((sum, c) => sum + c.timeouts, 0)).toBeGreaterThanOrEqual(6);
      // A GET goes without per-call options (the SDK's handler cache): its own deadline still holds.
      const t2 = Date.now();
      await expect(asds[0]!.getRange('any-key', 0, 4096)).rejects.toMatchObject({ code: 'TIMEOUT' });
      await expect(asds[0]!.get('any-key')).rejects.toMatchObject({ code: 'TIMEOUT' });
      expect(Date.now() - t2).toBeLessThan(5_000);
    } finally {
      server.resume();
    }
    expect((await store.readRange('v/sco/4', 4096, 4096)).equals(data.subarray(4096, 8192))).toBe(true);
  });
});
