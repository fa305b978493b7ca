/**
 * The edge-wide bound on request payload bytes (limits.nbdEdgeRequestBytesInFlightMax, here a small
 * injected one): every connection draws from one budget, partly received WRITE payloads and unread READ
 * replies included; at the bound connections stop reading (backpressure), nothing fails, nothing deadlocks.
 * Bytes held must move: a stalled payload or unread replies cut their connection after a deadline (here a
 * small injected one), so a few clients cannot hang all others; a slow but steady client is kept.
 */
import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { NbdClient } from '../../edge/nbd-client.ts';
import { NBD_CMD_READ, NBD_CMD_WRITE, NBD_REQUEST_HEADER_BYTES } from '../../edge/nbd-protocol.ts';
import { encodeRequestHeader } from '../../edge/nbd-requests.ts';
import { NbdServer, type NbdServerBounds } from '../../edge/nbd-server.ts';
import { type Logger, silentLogger } from '../../shared/logger.ts';
import { MemoryExportResolver, MemoryVolume } from '../helpers/memory-target.ts';
import { RawNbdSocket, capturingLogger } from '../helpers/raw-nbd-socket.ts';

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

async function startServer(bounds: Partial<NbdServerBounds>, logger: Logger = silentLogger()) {
  const resolver = new MemoryExportResolver();
  const volume = resolver.add('vol', new MeteredVolume(64 * MiB)) as MeteredVolume;
  const server = new NbdServer({ host: '127.0.0.1', port: 0, resolver, logger, bounds });
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

function readHeader(handle: number, offset: number, length: number): Buffer {
  const header = Buffer.alloc(NBD_REQUEST_HEADER_BYTES);
  encodeRequestHeader(header, 0, { type: NBD_CMD_READ, flags: 0, handleHi: 0, handleLo: handle, offset, length });
  return header;
}

/** Lets `raw` take about `bytesPerTick` from the kernel every `tickMs`: a client that reads slowly but steadily. */
function readSlowly(raw: RawNbdSocket, bytesPerTick: number, tickMs: number): () => void {
  let allowance = 0;
  raw.socket.pause();
  raw.socket.on('data', (chunk: Buffer) => {
    allowance -= chunk.length;
    if (allowance <= 0) raw.socket.pause();
  });
  const timer = setInterval(() => {
    allowance = bytesPerTick;
    raw.socket.resume();
  }, tickMs);
  return () => clearInterval(timer);
}

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

describe('deadlines on bytes held in the edge-wide budget', () => {
  it('cuts connections whose held WRITE payload stalls, and the clients waiting behind them go on', async () => {
    const { logger, lines } = capturingLogger();
    const timeoutMs = 300;
    const t = await startServer(
      { requestBytesMax: 256 * KiB, requestBytesInFlightMax: 256 * KiB, edgeRequestBytesInFlightMax: MiB, payloadReceiveTimeoutMs: timeoutMs },
      logger,
    );
    // Four headers of 256 KiB and one byte each: 1 KB of traffic holds the whole edge budget.
    const stallers = await Promise.all(Array.from({ length: 4 }, () => t.raw()));
    const sentAt = Date.now();
    stallers.forEach((raw, i) => raw.write(Buffer.concat([writeHeader(i, i * 256 * KiB, 256 * KiB), Buffer.alloc(1, 7)])));
    await waitFor(() => t.server.requestBytesInFlight === MiB, 'the stalled payloads to hold the budget');
    const other = await t.connect();
    const small = randomBytes(4 * KiB);
    let otherDone = false;
    const otherWrite = other.write(2 * MiB, small).then(() => (otherDone = true));
    await sleep(timeoutMs / 3);
    expect(otherDone).toBe(false); // waits in line behind the stalled payloads
    await Promise.all(stallers.map((raw) => raw.expectClosed()));
    expect(Date.now() - sentAt).toBeGreaterThanOrEqual(timeoutMs - 20); // not before the deadline
    await otherWrite;
    expect(t.volume.peek(2 * MiB, small.length).equals(small)).toBe(true);
    expect(t.volume.calls.write).toBe(1); // no stalled payload reached the target
    const cut = lines.filter((l) => l.msg === 'nbd connection closed: request payload not received in time');
    expect(cut.length).toBeGreaterThan(0);
    expect((cut[0].err as { code: string }).code).toBe('TIMEOUT');
    await waitFor(() => t.server.requestBytesInFlight === 0, 'every byte to be given back');
  });

  it('keeps a client whose payloads each arrive within the deadline, however long the stream lasts', async () => {
    const timeoutMs = 300;
    const t = await startServer({ requestBytesMax: 256 * KiB, requestBytesInFlightMax: 256 * KiB, edgeRequestBytesInFlightMax: MiB, payloadReceiveTimeoutMs: timeoutMs });
    const slow = await t.raw();
    const blocks = Array.from({ length: 4 }, () => randomBytes(256 * KiB));
    // Each payload in four pieces over ~180 ms: the stream takes ~3 deadlines, no payload takes one.
    for (const [i, block] of blocks.entries()) {
      slow.write(writeHeader(i, i * 256 * KiB, block.length));
      for (let piece = 0; piece < 4; piece++) {
        await sleep(timeoutMs / 5);
        slow.write(block.subarray((piece * block.length) / 4, ((piece + 1) * block.length) / 4));
      }
      expect(await slow.readSimpleReply()).toMatchObject({ error: 0, handleLo: i });
    }
    expect(slow.isClosed).toBe(false);
    expect(t.volume.peek(0, MiB).equals(Buffer.concat(blocks))).toBe(true);
  });

  it('cuts connections that hold READ replies they do not read, and the others\' writes go through', async () => {
    const { logger, lines } = capturingLogger();
    const timeoutMs = 600;
    const t = await startServer(
      { requestBytesMax: MiB, requestBytesInFlightMax: MiB, edgeRequestBytesInFlightMax: 2 * MiB, replyDrainTimeoutMs: timeoutMs },
      logger,
    );
    const readers = await Promise.all([t.raw(), t.raw()]);
    for (const reader of readers) {
      reader.stopReading();
      // 32 MiB of replies: far more than the kernel's socket buffers take, so one stays at the edge.
      for (let i = 0; i < 32; i++) reader.write(readHeader(i, 0, MiB));
    }
    await waitFor(() => t.server.requestBytesInFlight === 2 * MiB, 'unread replies to hold the budget');
    const other = await t.connect();
    const small = randomBytes(4 * KiB);
    let otherDone = false;
    const otherWrite = other.write(8 * MiB, small).then(() => (otherDone = true));
    await sleep(100);
    expect(otherDone).toBe(false); // no bytes left at the edge for it until the non-readers are gone
    await otherWrite;
    expect(t.volume.peek(8 * MiB, small.length).equals(small)).toBe(true);
    expect(lines.filter((l) => l.msg === 'nbd connection closed: replies not read by the client in time')).toHaveLength(2);
    // A paused socket does not see the close; reading now finds the stream cut short.
    for (const reader of readers) {
      reader.socket.resume();
      await reader.expectClosed();
      expect(reader.bufferedBytes).toBeLessThan(32 * (MiB + 16));
    }
    await waitFor(() => t.server.requestBytesInFlight === 0, 'every byte to be given back');
  });

  it('keeps a client that reads its replies slowly but steadily, even when one batch takes longer than the deadline', async () => {
    const timeoutMs = 500;
    const bytes = 4 * MiB;
    const t = await startServer({ requestBytesMax: bytes, requestBytesInFlightMax: 8 * bytes, edgeRequestBytesInFlightMax: 8 * bytes, replyDrainTimeoutMs: timeoutMs });
    const pattern = randomBytes(bytes);
    await (await t.connect()).write(0, pattern);
    const reader = await t.raw();
    // 512 KiB every 30 ms (~17 MB/s): the replies leave as one 32 MiB writev (writevFramesMax of them), which
    // takes ~4 deadlines to go, so no write completes within one. Each period the client takes far more than
    // the kernel's socket buffers hold, which is what the edge can see of a client reading.
    cleanups.push(readSlowly(reader, 512 * KiB, 30));
    const reads = 8;
    for (let i = 0; i < reads; i++) reader.write(readHeader(i, 0, bytes));
    for (let i = 0; i < reads; i++) {
      const reply = await reader.readSimpleReply(bytes);
      expect(reply).toMatchObject({ error: 0, handleLo: i });
      expect(reply.data.equals(pattern)).toBe(true);
    }
    expect(reader.isClosed).toBe(false);
    await waitFor(() => t.server.requestBytesInFlight === 0, 'every byte to be given back');
  });
});
