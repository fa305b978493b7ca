/**
 * NbdServer + NbdClient round trips against the in-memory target.
 */
import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { NbdClient, parseNbdUri } from '../../edge/nbd-client.ts';
import { NbdServer, type NbdServerBounds } from '../../edge/nbd-server.ts';
import { KeelError, isKeelError } from '../../shared/errors.ts';
import { silentLogger } from '../../shared/logger.ts';
import { MemoryExportResolver, MemoryVolume } from '../helpers/memory-target.ts';

const MiB = 1024 * 1024;
const cleanups: Array<() => Promise<void> | void> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function startServer(bounds: Partial<NbdServerBounds> = {}) {
  const resolver = new MemoryExportResolver();
  const volume = resolver.add('vol', new MemoryVolume(16 * MiB), 'the test volume');
  const readOnly = resolver.add('ro', new MemoryVolume(1 * MiB, true));
  const server = new NbdServer({ host: '127.0.0.1', port: 0, resolver, defaultExport: 'vol', logger: silentLogger(), bounds });
  await server.start();
  cleanups.push(() => server.stop());
  return { server, resolver, volume, readOnly, port: server.port };
}

async function connect(port: number, exportName = 'vol', extra: { requestsInFlightMax?: number } = {}): Promise<NbdClient> {
  const client = await NbdClient.connect({ host: '127.0.0.1', port, exportName, logger: silentLogger(), ...extra });
  cleanups.push(() => client.destroy());
  return client;
}

async function errorOf(work: Promise<unknown>): Promise<KeelError> {
  try {
    await work;
  } catch (err) {
    if (isKeelError(err)) return err;
    throw err;
  }
  throw new Error('expected a KeelError');
}

export async function waitFor(condition: () => boolean, what: string, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

describe('NbdServer with NbdClient', () => {
  it('negotiates size, flags and block sizes with NBD_OPT_GO', async () => {
    const { port } = await startServer();
    const client = await connect(port);
    expect(client.sizeBytes).toBe(16 * MiB);
    expect(client.readOnly).toBe(false);
    expect(client.blockSize).toEqual({ minimumBytes: 512, preferredBytes: 4096, maximumBytes: 32 * MiB });
    // HAS_FLAGS | SEND_FLUSH | SEND_FUA | SEND_TRIM | SEND_WRITE_ZEROES | CAN_MULTI_CONN
    expect(client.transmissionFlags).toBe(0x1 | 0x4 | 0x8 | 0x20 | 0x40 | 0x100);
    expect(client.currentStatus).toBe('ready');
  });

  it('round-trips unaligned writes and reads, and unwritten bytes read as zeros', async () => {
    const { port, volume } = await startServer();
    const client = await connect(port);
    const data = randomBytes(5000);
    await client.write(1000, data);
    expect((await client.read(1000, 5000)).equals(data)).toBe(true);
    expect(volume.peek(1000, 5000).equals(data)).toBe(true);
    expect((await client.read(0, 1000)).equals(Buffer.alloc(1000))).toBe(true);
    expect((await client.read(6000, 3000)).equals(Buffer.alloc(3000))).toBe(true);
    const tail = randomBytes(7);
    await client.write(16 * MiB - 7, tail);
    expect((await client.read(16 * MiB - 7, 7)).equals(tail)).toBe(true);
    expect((await client.read(0, 0)).length).toBe(0);
  });

  it('passes FUA to the target and runs flush', async () => {
    const { port, volume } = await startServer();
    const client = await connect(port);
    await client.write(0, Buffer.alloc(4096, 1));
    expect(volume.fuaCalls).toBe(0);
    await client.write(4096, Buffer.alloc(4096, 2), { fua: true });
    expect(volume.fuaCalls).toBe(1);
    await client.trim(0, 4096, { fua: true });
    await client.writeZeroes(8192, 4096, { fua: true, noHole: true });
    expect(volume.fuaCalls).toBe(3);
    await client.flush();
    expect(volume.calls.flush).toBe(1);
  });

  it('trims and writes zeroes, also across partial clusters, leaving neighbours intact', async () => {
    const { port, volume } = await startServer();
    const client = await connect(port);
    const data = randomBytes(5 * 4096);
    await client.write(0, data);
    await client.trim(1000, 9000); // partial, whole (4096..8191), partial
    const expected = Buffer.from(data);
    expected.fill(0, 1000, 10000);
    expect((await client.read(0, data.length)).equals(expected)).toBe(true);
    expect(volume.clusters.has(1)).toBe(false); // the whole cluster was unmapped
    await client.writeZeroes(12000, 5000);
    expected.fill(0, 12000, 17000);
    expect((await client.read(0, data.length)).equals(expected)).toBe(true);
  });

  it('keeps many requests in flight and matches every reply to its request', async () => {
    const { port, volume } = await startServer();
    const client = await connect(port, 'vol', { requestsInFlightMax: 64 });
    volume.delayMs = (op, offset) => (op === 'write' ? (offset / 4096) % 3 : 0);
    const blocks = Array.from({ length: 400 }, (_, i) => ({ offset: i * 4096 + (i % 5) * 100, data: randomBytes(3000) }));
    await Promise.all(blocks.map((b) => client.write(b.offset, b.data)));
    expect(volume.runningMax).toBeGreaterThan(8);
    const reads = await Promise.all(blocks.map((b) => client.read(b.offset, b.data.length)));
    reads.forEach((read, i) => expect(read.equals(blocks[i].data)).toBe(true));
  });

  it('sends replies out of order as requests complete', async () => {
    const { port, volume } = await startServer();
    const client = await connect(port);
    await client.write(0, Buffer.alloc(8192, 7));
    volume.delayMs = (op, offset) => (op === 'read' && offset === 0 ? 150 : 0);
    const finished: string[] = [];
    const slow = client.read(0, 4096).then((d) => (finished.push('slow'), d));
    const fast = client.read(4096, 4096).then((d) => (finished.push('fast'), d));
    const [slowData, fastData] = await Promise.all([slow, fast]);
    expect(finished).toEqual(['fast', 'slow']);
    expect(slowData.equals(Buffer.alloc(4096, 7))).toBe(true);
    expect(fastData.equals(Buffer.alloc(4096, 7))).toBe(true);
  });

  it('stops reading at the in-flight bound and resumes when requests drain (backpressure)', async () => {
    const { port, volume } = await startServer({ requestsInFlightMax: 4 });
    const client = await connect(port);
    const release = volume.stallAll();
    const writes = Array.from({ length: 20 }, (_, i) => client.write(i * 4096, Buffer.alloc(4096, i)));
    await waitFor(() => volume.running === 4, '4 stalled writes');
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(volume.running).toBe(4); // the other 16 wait in the socket, not in the target
    release();
    await Promise.all(writes);
    expect(volume.runningMax).toBe(4);
    expect(volume.calls.write).toBe(20);
    for (let i = 0; i < 20; i++) expect(volume.peek(i * 4096, 1)[0]).toBe(i);
  });

  it('bounds in-flight payload bytes too', async () => {
    const { port, volume } = await startServer({ requestBytesMax: 64 * 1024, requestBytesInFlightMax: 128 * 1024 });
    const client = await connect(port);
    const release = volume.stallAll();
    const writes = Array.from({ length: 6 }, (_, i) => client.write(i * 65536, Buffer.alloc(65536, i + 1)));
    await waitFor(() => volume.running === 2, '2 stalled writes');
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(volume.running).toBe(2);
    release();
    await Promise.all(writes);
    expect(volume.runningMax).toBe(2);
  });

  it('splits requests above the advertised maximum in the client', async () => {
    const { port, volume } = await startServer({ requestBytesMax: 64 * 1024 });
    const client = await connect(port);
    expect(client.blockSize.maximumBytes).toBe(64 * 1024);
    const data = randomBytes(200 * 1024 + 10);
    await client.write(3, data);
    expect(volume.calls.write).toBe(4);
    expect((await client.read(3, data.length)).equals(data)).toBe(true);
  });

  it('answers errors per request and keeps the connection usable', async () => {
    const { port, volume } = await startServer();
    const client = await connect(port);
    expect((await errorOf(client.read(16 * MiB - 10, 11))).code).toBe('BAD_ARGUMENT'); // EINVAL
    expect((await errorOf(client.write(16 * MiB, Buffer.alloc(1)))).code).toBe('OUT_OF_RANGE'); // ENOSPC
    expect((await errorOf(client.trim(16 * MiB, 4096))).code).toBe('BAD_ARGUMENT');
    for (const error of [
      KeelError.io('disk gone'),
      KeelError.noOwner('vol', 10),
      KeelError.timeout('router', 10),
      KeelError.checksumMismatch('cluster 3'),
    ]) {
      volume.failNext('read', error);
      const err = await errorOf(client.read(0, 4096));
      expect(err.code).toBe('IO');
      expect(err.details.nbdError).toBe(5);
    }
    volume.failNext('write', KeelError.io('disk gone'));
    expect((await errorOf(client.write(0, Buffer.alloc(512)))).code).toBe('IO');
    await client.write(0, Buffer.alloc(512, 9));
    expect((await client.read(0, 512)).equals(Buffer.alloc(512, 9))).toBe(true);
  });

  it('serves read-only exports and refuses writes with EPERM', async () => {
    const { port, readOnly } = await startServer();
    const client = await connect(port, 'ro');
    expect(client.readOnly).toBe(true);
    expect((await errorOf(client.write(0, Buffer.alloc(512)))).code).toBe('READ_ONLY');
    expect((await errorOf(client.trim(0, 4096))).code).toBe('READ_ONLY');
    expect((await errorOf(client.writeZeroes(0, 4096))).code).toBe('READ_ONLY');
    expect(readOnly.calls.write).toBe(0);
    expect((await client.read(0, 512)).equals(Buffer.alloc(512))).toBe(true);
    await client.flush();
  });

  it('serves the default export for an empty name and refuses unknown exports', async () => {
    const { port, volume } = await startServer();
    const client = await connect(port, '');
    await client.write(0, Buffer.alloc(512, 3));
    expect(volume.peek(0, 1)[0]).toBe(3);
    expect((await errorOf(connect(port, 'nope'))).code).toBe('VOLUME_NOT_FOUND');
  });

  it('lists exports', async () => {
    const { port } = await startServer();
    const exports = await NbdClient.list({ host: '127.0.0.1', port, logger: silentLogger() });
    expect(exports).toEqual([
      { name: 'vol', description: 'the test volume' },
      { name: 'ro', description: '' },
    ]);
  });

  it('connects from an nbd:// URI', async () => {
    expect(parseNbdUri('nbd://127.0.0.1:10810/my-vol')).toEqual({ host: '127.0.0.1', port: 10810, exportName: 'my-vol' });
    expect(parseNbdUri('nbd://[::1]/x')).toEqual({ host: '::1', port: 10809, exportName: 'x' });
    expect(() => parseNbdUri('http://x/y')).toThrow(KeelError);
    const { port } = await startServer();
    const client = await NbdClient.connect(`nbd://127.0.0.1:${port}/vol`, { logger: silentLogger() });
    cleanups.push(() => client.destroy());
    expect(client.sizeBytes).toBe(16 * MiB);
  });

  it('close() waits for requests in flight, disconnects and the server closes the export', async () => {
    const { port, server, resolver, volume } = await startServer();
    const client = await connect(port);
    volume.delayMs = () => 50;
    const write = client.write(0, Buffer.alloc(4096, 1));
    await client.close();
    await write;
    expect(client.currentStatus).toBe('closed');
    await waitFor(() => server.connectionCount === 0 && resolver.closed === 1, 'the server to close the export');
    expect(resolver.opened).toBe(1);
    expect((await errorOf(client.read(0, 1))).code).toBe('CONNECTION_CLOSED');
  });

  it('multiple connections see each other’s flushed writes (CAN_MULTI_CONN)', async () => {
    const { port } = await startServer();
    const a = await connect(port);
    const b = await connect(port);
    await a.write(8192, Buffer.alloc(4096, 0x5a));
    await a.flush();
    expect((await b.read(8192, 4096)).equals(Buffer.alloc(4096, 0x5a))).toBe(true);
  });

  it('stop() lets in-flight requests finish, then closes connections and exports', async () => {
    const { port, server, resolver, volume } = await startServer();
    const client = await connect(port);
    const release = volume.stallAll();
    const write = client.write(0, Buffer.alloc(4096, 4));
    await waitFor(() => volume.running === 1, 'a stalled write');
    let stopped = false;
    const stopping = server.stop().then(() => (stopped = true));
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(stopped).toBe(false);
    release();
    await write;
    await stopping;
    expect(resolver.closed).toBe(1);
    await client.closed;
    expect(client.currentStatus).toBe('closed');
  });

  it('refuses connections beyond connectionsMax without disturbing the others', async () => {
    const { port } = await startServer({ connectionsMax: 1 });
    const first = await connect(port);
    expect((await errorOf(connect(port))).code).toMatch(/^(IO|CONNECTION_CLOSED)$/);
    await first.write(0, Buffer.alloc(512, 1));
    expect((await first.read(0, 512))[0]).toBe(1);
  });
});
