/**
 * A real S3 HTTP server (s3rver) on loopback for tests: port 0, N buckets, data in a temp directory.
 * `stop()` + `restart()` simulate an outage on the same port (connections refused meanwhile);
 * `stall()` / `resume()` keep accepting requests but never answer them (a hung endpoint).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';

interface S3rverInstance {
  httpServer?: Server;
  middleware: unknown[];
  run(): Promise<AddressInfo>;
  close(): Promise<void>;
}
type S3rverClass = new (options: Record<string, unknown>) => S3rverInstance;
// s3rver ships no type declarations.
const S3rver = createRequire(import.meta.url)('s3rver') as S3rverClass;

export interface TestS3Server {
  endpoint: string;
  port: number;
  buckets: string[];
  directory: string;
  stop(): Promise<void>;
  restart(): Promise<void>;
  stall(): void;
  resume(): void;
  close(): Promise<void>;
}

export async function startS3Server(bucketCount: number): Promise<TestS3Server> {
  const directory = await mkdtemp(path.join(os.tmpdir(), 'keel-s3rver-'));
  const buckets = Array.from({ length: bucketCount }, (_, i) => `asd${i}`);
  let stalled = false;
  const stalledResolvers: (() => void)[] = [];
  let port = 0;
  let server: S3rverInstance | undefined;

  const start = async () => {
    const s = new S3rver({
      port,
      address: '127.0.0.1',
      silent: true,
      directory,
      configureBuckets: buckets.map((name) => ({ name })),
    });
    // Runs before s3rver's own middleware: a stalled server holds every request until resumed.
    s.middleware.unshift(async (_ctx: unknown, next: () => Promise<void>) => {
      if (stalled) await new Promise<void>((resolve) => stalledResolvers.push(resolve));
      await next();
    });
    const address = await s.run();
    port = address.port;
    server = s;
  };

  const stop = async () => {
    const s = server;
    server = undefined;
    if (!s?.httpServer) return;
    const closed = s.close();
    s.httpServer.closeAllConnections();
    await closed;
  };

  await start();
  const handle: TestS3Server = {
    endpoint: `http://127.0.0.1:${port}`,
    port,
    buckets,
    directory,
    stop,
    restart: start,
    stall: () => {
      stalled = true;
    },
    resume: () => {
      stalled = false;
      for (const resolve of stalledResolvers.splice(0)) resolve();
    },
    close: async () => {
      handle.resume();
      await stop();
      await rm(directory, { recursive: true, force: true });
    },
  };
  return handle;
}
