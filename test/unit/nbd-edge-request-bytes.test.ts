/**
 * The edge-wide bound on request payload bytes (limits.nbdEdgeRequestBytesInFlightMax, here a small
 * injected one): every connection draws from one budget, partly received WRITE payloads and unread READ
 * replies included; at the bound connections stop reading (backpressure), nothing fails, nothing deadlocks.
 */
import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { NbdClient } from '../../edge/nbd-client.ts';
import { NBD_CMD_READ, NBD_CMD_WRITE, NBD_REQUEST_HEADER_BYTES } from '../../edge/nbd-protocol.ts';
import { encodeRequestHeader } from '../../edge/nbd-requests.ts';
import { NbdServer, type NbdServerBounds } from '../../edge/nbd-server.ts';
import { silentLogger } from '../../shared/logger.ts';
import { MemoryExportResolver, MemoryVolume } from '../helpers/memory-target.ts';
import { RawNbdSocket } from '../helpers/raw-nbd-socket.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const cleanups: Array<() => Promise<void> | void> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** Counts the payload bytes the target works on at once: what the edge holds beyond its socket buffers. */
class MeteredVolume extends MemoryVolume {
  bytesRunning = 0;
  bytesRunningMax = 0;

  override async read(offset: number, length: number): Promise<Buffer> {
    this.enterBytes(length);
    try {
      return await super.read(offset, length);
    } finally {
      this.bytesRunning -= length;
    }
  }

  override async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    this.enterBytes(data.length);
    try {
      await super.write(offset, data, fua);
    } finally {
      this.bytesRunning -= data.length;
    }
  }

  private enterBytes(bytes: number): void {
    this.bytesRunning += bytes;
    this.bytesRunningMax = Math.max(this.bytesRunningMax, this.bytesRunning);
  }
}

async function startServer(bounds: Partial<NbdServerBounds>) {
  const resolver = new MemoryExportResolver();
  const volume = resolver.add('vol', new MeteredVolume(64 * MiB)) as MeteredVolume;
  const server = new NbdServer({ host: '127.0.0.1', port: 0, resolver, logger: silentLogger(), bounds });
  await server.start();
  cleanups.push(() => server.stop());
  const connect = async () => {
    const client = await NbdClient.connect({ host: '127.0.0.1', port: server.port, exportName: 'vol', logger: silentLogger() });
    cleanups.push(() => client.destroy());
    return client;
  };
  const raw = async () => {
    const socket = await RawNbdSocket.inTransmission(server.port, 'vol');
    cleanups.push(() => socket.destroy());
    return socket;
  };
  return { server, resolver, volume, connect, raw };
}

async function waitFor(condition: () => boolean, what: string, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

async function untilStable(value: () => number, quietMs: number): Promise<void> {
  let last = value();
  let since = Date.now();
  while (Date.now() - since < quietMs) {
    await sleep(10);
    if (value() !== last) {
      last = value();
      since = Date.now();
    }
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function writeHeader(handle: number, offset: number, length: number): Buffer {
  const header = Buffer.alloc(NBD_REQUEST_HEADER_BYTES);
  encodeRequestHeader(header, 0, { type: NBD_CMD_WRITE, flags: 0, handleHi: 0, handleLo: handle, offset, length });
  return header;
}

describe('edge-wide request bytes in flight', () => {
  it('keeps the payload of all connections together within the bound, and every request completes', async () => {
    const t = await startServer({ requestBytesMax: 256 * KiB, requestBytesInFlightMax: MiB, edgeRequestBytesInFlightMax: MiB });
    const clients = await Promise.all(Array.from({ length: 4 }, () => t.connect()));
    const release = t.volume.stallAll();
    cleanups.push(release);
    const blocks = clients.flatMap((client, c) =>
      Array.from({ length: 8 }, (_, i) => ({ client, offset: (c * 8 + i) * 256 * KiB, data: randomBytes(256 * KiB) })),
    );
    const writes = blocks.map((b) => b.client.write(b.offset, b.data));
    await waitFor(() => t.volume.running > 0, 'the first stalled writes');
    await sleep(200);
    // Each connection alone may hold 1 MiB; without an edge-wide bound the target would hold 4 MiB here.
    expect(t.volume.bytesRunning).toBeLessThanOrEqual(MiB);
    expect(t.server.requestBytesInFlight).toBeLessThanOrEqual(MiB);
    release();
    await Promise.all(writes);
    // Reads of all connections at once, each taking a while in the target: the bound holds for them too.
    t.volume.delayMs = (op) => (op === 'read' ? 2 : 0);
    const reads = await Promise.all(blocks.map((b) => b.client.read(b.offset, b.data.length)));
    reads.forEach((data, i) => expect(data.equals(blocks[i].data)).toBe(true));
    expect(t.volume.bytesRunningMax).toBeLessThanOrEqual(MiB);
    expect(t.volume.peek(0, 32 * 256 * KiB).equals(Buffer.concat(blocks.map((b) => b.data)))).toBe(true);
    await waitFor(() => t.server.requestBytesInFlight === 0, 'every byte to be given back');
  });

  it('counts a partly received write from its header on, and lets that connection finish it', async () => {
    const t = await startServer({ requestBytesMax: MiB, requestBytesInFlightMax: MiB, edgeRequestBytesInFlightMax: MiB });
    const slow = await t.raw();
    const big = randomBytes(MiB);
    slow.write(writeHeader(1, 0, MiB));
    slow.write(big.subarray(0, MiB / 2));
    await sleep(50);
    const other = await t.connect();
    const small = randomBytes(4 * KiB);
    let otherDone = false;
    const otherWrite = other.write(2 * MiB, small).then(() => (otherDone = true));
    await sleep(150);
    expect(t.volume.calls.write).toBe(0); // the other connection waits: the half-sent payload holds the bytes
    expect(otherDone).toBe(false);
    expect(t.server.requestBytesInFlight).toBe(MiB);
    // A third connection that leaves while waiting in line gives nothing back it did not have.
    const quitter = await t.raw();
    quitter.write(writeHeader(3, 4 * MiB, 64 * KiB));
    await sleep(20);
    quitter.destroy();
    slow.write(big.subarray(MiB / 2)); // the connection holding the bytes can always finish its payload
    expect(await slow.readSimpleReply()).toMatchObject({ error: 0, handleLo: 1 });
    await otherWrite;
    expect(t.volume.peek(0, MiB).equals(big)).toBe(true);
    expect(t.volume.peek(2 * MiB, small.length).equals(small)).toBe(true);
    expect(t.volume.peek(4 * MiB, 64 * KiB).equals(Buffer.alloc(64 * KiB))).toBe(true);
    await waitFor(() => t.server.requestBytesInFlight === 0, 'every byte to be given back');
  });

  it('counts READ replies a client has not read, until it reads them', async () => {
    const t = await startServer({ requestBytesMax: MiB, requestBytesInFlightMax: MiB, edgeRequestBytesInFlightMax: MiB });
    const pattern = randomBytes(MiB);
    await (await t.connect()).write(0, pattern);
    const reader = await t.raw();
    reader.stopReading();
    const reads = 32; // 32 MiB of replies: far more than the kernel's socket buffers take
    const header = Buffer.alloc(NBD_REQUEST_HEADER_BYTES);
    for (let i = 0; i < reads; i++) {
      encodeRequestHeader(header, 0, { type: NBD_CMD_READ, flags: 0, handleHi: 0, handleLo: i, offset: 0, length: MiB });
      reader.write(Buffer.from(header));
    }
    // The reader stops at its own bound once its replies pile up; the one stuck unsent holds the edge's bytes.
    await untilStable(() => t.volume.calls.read, 150);
    expect(t.volume.calls.read).toBeLessThan(reads);
    const writesBefore = t.volume.calls.write;
    const other = await t.connect();
    const small = randomBytes(4 * KiB);
    const otherWrite = other.write(8 * MiB, small);
    await sleep(150);
    expect(t.volume.calls.write).toBe(writesBefore); // no bytes left at the edge for the other connection
    expect(t.server.requestBytesInFlight).toBe(MiB);
    reader.socket.resume();
    for (let i = 0; i < reads; i++) {
      const reply = await reader.readSimpleReply(MiB);
      expect(reply).toMatchObject({ error: 0, handleLo: i });
      expect(reply.data.equals(pattern)).toBe(true);
    }
    await otherWrite;
    expect(t.volume.peek(8 * MiB, small.length).equals(small)).toBe(true);
    await waitFor(() => t.server.requestBytesInFlight === 0, 'every byte to be given back');
  });
});
