import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { S3Asd, type S3AsdConfig } from '../../backend/asd-s3.ts';
import { ErasureObjectStore } from '../../backend/object-store.ts';
import { parsePreset } from '../../backend/preset.ts';
import { KeelError } from '../../shared/errors.ts';
import { limits } from '../../shared/limits.ts';
import { defineBackendSuite } from '../helpers/backend-suite.ts';
import { startS3Server, type TestS3Server } from '../helpers/s3-server.ts';

function s3Asd(endpoint: string, bucket: string, overrides: Partial<S3AsdConfig> = {}): S3Asd {
  return new S3Asd({
    id: `s3-${bucket}`,
    bucket,
    prefix: 'pool1/',
    endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    accessKeyId: 'S3RVER',
    secretAccessKey: 'S3RVER',
    ...overrides,
  });
}

function s3Asds(server: TestS3Server, requestTimeoutMs = 10_000): S3Asd[] {
  return server.buckets.map((bucket) => s3Asd(server.endpoint, bucket, { requestTimeoutMs }));
}

/** A TCP server that answers every request with `reply` and then closes: a broken or hostile S3 endpoint. */
async function startRawHttpServer(reply: string): Promise<{ endpoint: string; close: () => Promise<void> }> {
  const server = net.createServer((socket) => {
    socket.once('data', () => socket.end(reply));
    socket.on('error', () => {});
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return { endpoint: `http://127.0.0.1:${port}`, close: () => new Promise((resolve) => server.close(() => resolve())) };
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

describe('S3 GETs (presigned URLs)', () => {
  let server: TestS3Server;
  beforeAll(async () => {
    server = await startS3Server(1);
  });
  afterAll(async () => {
    await server?.close();
  });

  it('ranges, missing keys and the end of an object answer like the SDK did; one presign serves every GET of a key until its reuse period ends', async () => {
    let nowMs = 1_000_000;
    const asd = s3Asd(server.endpoint, server.buckets[0]!, { nowMs: () => nowMs });
    try {
      const data = randomBytes(300_000);
      await asd.put('v/obj+1 a.frag0', [data.subarray(0, 100_000), data.subarray(100_000)]);
      expect((await asd.get('v/obj+1 a.frag0')).equals(data)).toBe(true);
      for (const [offset, length] of [[0, 4096], [123_457, 65_536], [299_000, 5000], [0, 300_000]] as const)
        expect((await asd.getRange('v/obj+1 a.frag0', offset, length)).equals(data.subarray(offset, offset + length))).toBe(true);
      expect(await asd.getRange('v/obj+1 a.frag0', 300_000, 10)).toHaveLength(0);
      expect(await asd.getRange('v/obj+1 a.frag0', 0, 0)).toHaveLength(0);
      expect(asd.presignStats()).toEqual({ urls: 1, presigned: 1 });

      await expect(asd.get('v/missing')).rejects.toMatchObject({ code: 'OBJECT_NOT_FOUND', details: expect.objectContaining({ status: 404 }) });
      await expect(asd.getRange('v/missing', 0, 10)).rejects.toMatchObject({ code: 'OBJECT_NOT_FOUND' });

      nowMs += limits.s3PresignedUrlReuseMs;
      expect((await asd.getRange('v/obj+1 a.frag0', 10, 10)).equals(data.subarray(10, 20))).toBe(true);
      expect(asd.presignStats().presigned).toBe(3); // the missing key's, and the first key's again
    } finally {
      asd.destroy();
    }
  });

  it('wrong credentials: the refused URL is presigned once more, then the GET fails with the server\'s error, not a hang', async () => {
    const good = s3Asd(server.endpoint, server.buckets[0]!);
    // s3rver checks the access key of a V4 request, not its signature.
    const bad = s3Asd(server.endpoint, server.buckets[0]!, { accessKeyId: 'WRONG' });
    try {
      await good.put('v/secret', [Buffer.from('x')]);
      await expect(bad.getRange('v/secret', 0, 1)).rejects.toMatchObject({
        code: 'IO',
        message: expect.stringMatching(/HTTP 403 InvalidAccessKeyId: The AWS Access Key Id you provided does not exist/),
        details: expect.objectContaining({ status: 403 }),
      });
      expect(bad.presignStats().presigned).toBe(2);
    } finally {
      good.destroy();
      bad.destroy();
    }
  });

  it('a body cut short or larger than any object fails clearly, and an abort ends a GET at once', async () => {
    const short = await startRawHttpServer('HTTP/1.1 206 Partial Content\r\nContent-Length: 4096\r\n\r\n' + 'a'.repeat(100));
    const huge = await startRawHttpServer(`HTTP/1.1 200 OK\r\nContent-Length: ${limits.backendObjectSizeBytesMax + 1}\r\n\r\nabc`);
    const asds = [s3Asd(short.endpoint, 'b'), s3Asd(huge.endpoint, 'b', { requestTimeoutMs: 60_000 })];
    try {
      await expect(asds[0]!.getRange('k', 0, 4096)).rejects.toMatchObject({ code: 'IO', message: expect.stringMatching(/cut short after 100 bytes of 4096/) });
      await expect(asds[1]!.get('k')).rejects.toMatchObject({ code: 'IO', message: expect.stringMatching(/more than the \d+ expected/) });
    } finally {
      for (const a of asds) a.destroy();
      await short.close();
      await huge.close();
    }
    const asd = s3Asd(server.endpoint, server.buckets[0]!, { requestTimeoutMs: 60_000 });
    server.stall();
    try {
      const controller = new AbortController();
      const t0 = Date.now();
      const pending = asd.getRange('v/any', 0, 10, controller.signal);
      setTimeout(() => controller.abort(KeelError.closed('test aborted the read')), 200);
      await expect(pending).rejects.toMatchObject({ code: 'CLOSED' });
      expect(Date.now() - t0).toBeLessThan(2_000);
    } finally {
      server.resume();
      asd.destroy();
    }
  });
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
      // A GET to a presigned URL (no SDK call) has the same deadline.
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
