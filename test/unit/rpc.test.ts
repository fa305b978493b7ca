import { afterEach, describe, expect, it } from 'vitest';
import { KeelError } from '../../shared/errors.ts';
import { silentLogger } from '../../shared/logger.ts';
import { encodeFrame, FrameDecoder, type Frame } from '../../shared/wire/frame-codec.ts';
import { RpcClient } from '../../shared/wire/rpc-client.ts';
import { RpcServer, type RpcHandler, type RpcRequest, type RpcResult, type RpcServerOptions } from '../../shared/wire/rpc-server.ts';
import { TcpTransport } from '../../shared/wire/tcp-transport.ts';
import type { Transport, TransportConnection } from '../../shared/wire/transport.ts';
import { wireMagic, wireVersion } from '../../shared/wire/wire-format.ts';
import { createVolumeService } from '../../router/volume-service.ts';
import { BufferPool } from '../../shared/buffer-pool.ts';
import { crc32c } from '../../shared/checksum.ts';
import { checkLimits, limits, type Limits } from '../../shared/limits.ts';
import { until } from '../helpers/until.ts';
import { capturingLogger, delay, MemoryVolume, MemoryVolumeHost, patternBytes } from '../helpers/wire-test-volumes.ts';

const transport = new TcpTransport();
const logger = silentLogger();
const cleanups: Array<() => unknown> = [];

afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()!();
});

async function startServer(handler: RpcHandler, options: Partial<Omit<RpcServerOptions, 'handler' | 'transport' | 'logger'>> & { log?: typeof logger } = {}) {
  const server = new RpcServer({ transport, handler, logger: options.log ?? logger, routerId: 'r1', ...options });
  await server.listen('127.0.0.1:0');
  cleanups.push(() => server.close());
  return server;
}

async function connect(address: string, options: { requestsInFlightMax?: number; requestTimeoutMs?: number } = {}) {
  const client = await RpcClient.connect(address, { transport, logger, ...options });
  cleanups.push(() => client.close());
  return client;
}

/** A raw connection that speaks frames by hand, to send what a well-behaved client never would. */
async function rawConnection(address: string) {
  const connection = await transport.connect(address);
  cleanups.push(() => connection.destroy());
  const decoder = new FrameDecoder();
  const frames: Frame[] = [];
  let closed = false;
  const waiters: Array<() => void> = [];
  const wake = () => waiters.splice(0).forEach((w) => w());
  connection.onData((chunk) => {
    decoder.push(chunk);
    for (let f = decoder.next(); f; f = decoder.next()) frames.push(f);
    wake();
  });
  connection.onClose(() => {
    closed = true;
    wake();
  });
  const until = async (done: () => boolean) => {
    while (!done()) await new Promise<void>((resolve) => waiters.push(resolve));
  };
  return { connection, frames, isClosed: () => closed, until };
}

/** A handler with one op, 'echo', that answers after `delayMs` and counts concurrency. */
function echoHandler(delayFor: (value: number) => number = () => 0) {
  const stats = { running: 0, maxRunning: 0, sessionsClosed: 0 };
  const handler: RpcHandler = {
    openSession: () => ({
      handle: async (request: RpcRequest): Promise<RpcResult> => {
        const value = request.header.value as number;
        if (request.header.op === 'fail') throw KeelError.outOfRange(value, 1, 10);
        if (request.header.op === 'crash') throw new TypeError('not a Keel error');
        if (request.header.op === 'hang') return new Promise(() => {});
        stats.running++;
        stats.maxRunning = Math.max(stats.maxRunning, stats.running);
        await delay(delayFor(value));
        stats.running--;
        return { fields: { value }, payload: request.payload };
      },
      close: () => stats.sessionsClosed++,
    }),
  };
  return { handler, stats };
}

describe('handshake', () => {
  it('connects and learns the router id', async () => {
    const server = await startServer(echoHandler().handler);
    const client = await connect(server.address);
    expect(client.currentStatus).toEqual({ state: 'ready', routerId: 'r1', version: wireVersion });
  });

  it('refuses a wrong version with a clear error frame, logs it, and closes', async () => {
    const { logger: log, records } = capturingLogger();
    const server = await startServer(echoHandler().handler, { log });
    const raw = await rawConnection(server.address);
    raw.connection.write(encodeFrame({ op: 'hello', id: 0, magic: wireMagic, version: 99, role: 'edge' }));
    await raw.until(() => raw.isClosed());
    expect(raw.frames).toHaveLength(1);
    const err = raw.frames[0]!.header.err as { code: string; message: string };
    expect(err.code).toBe('VERSION_MISMATCH');
    expect(err.message).toMatch(new RegExp(`version 99.*we speak ${wireVersion}`));
    expect(records.some((r) => r.code === 'VERSION_MISMATCH' && r.level === 40)).toBe(true);
    await delay(20);
    expect(server.connectionCount).toBe(0);
  });

  it('refuses a wrong magic or a request before the hello', async () => {
    const server = await startServer(echoHandler().handler);
    for (const first of [
      { op: 'hello', id: 0, magic: 'NOPE', version: wireVersion, role: 'edge' },
      { op: 'echo', id: 1, value: 1 },
    ]) {
      const raw = await rawConnection(server.address);
      raw.connection.write(encodeFrame(first));
      await raw.until(() => raw.isClosed());
      expect((raw.frames[0]!.header.err as { code: string }).code).toBe('PROTOCOL');
    }
  });

  it('makes the client fail clearly when the router speaks another version', async () => {
    const fakeRouter = await transport.listen('127.0.0.1:0', (connection: TransportConnection) => {
      connection.onData(() => connection.write(encodeFrame({ id: 0, ok: true, version: wireVersion + 1, routerId: 'future' })));
    });
    cleanups.push(() => fakeRouter.close());
    const attempt = RpcClient.connect(fakeRouter.address, { transport, logger });
    await expect(attempt).rejects.toMatchObject({ code: 'VERSION_MISMATCH', details: { ours: wireVersion, theirs: wireVersion + 1 } });
  });

  it('surfaces the router refusal to RpcClient.connect', async () => {
    const fakeRouter = await transport.listen('127.0.0.1:0', (connection: TransportConnection) => {
      connection.onData(() => {
        connection.write(encodeFrame({ id: 0, err: { code: 'VERSION_MISMATCH', message: 'peer speaks protocol version 1, we speak 7' } }));
        connection.close();
      });
    });
    cleanups.push(() => fakeRouter.close());
    await expect(RpcClient.connect(fakeRouter.address, { transport, logger })).rejects.toMatchObject({
      code: 'VERSION_MISMATCH',
      message: expect.stringContaining('we speak 7'),
    });
  });

  it('fails connect with IO when nothing listens', async () => {
    const server = await startServer(echoHandler().handler);
    const address = server.address;
    await server.close();
    await expect(RpcClient.connect(address, { transport, logger })).rejects.toMatchObject({ code: 'IO' });
  });
});

describe('requests', () => {
  it('runs many requests concurrently, replies out of order, and honours the server window', async () => {
    const { handler, stats } = echoHandler((value) => (value * 37) % 11);
    const server = await startServer(handler, { requestsInFlightMax: 8 });
    const client = await connect(server.address, { requestsInFlightMax: 64 });
    const completionOrder: number[] = [];
    const requests = Array.from({ length: 300 }, (_, value) =>
      client.request({ op: 'echo', value }, patternBytes(100 + value, value)).then((response) => {
        completionOrder.push(value);
        expect(response.header.value).toBe(value);
        expect(response.payload.equals(patternBytes(100 + value, value))).toBe(true);
      }),
    );
    await Promise.all(requests);
    expect(completionOrder).toHaveLength(300);
    expect(completionOrder).not.toEqual([...completionOrder].sort((a, b) => a - b));
    expect(stats.maxRunning).toBe(8);
  });

  it('keeps at most the client window in flight and queues the rest', async () => {
    const { handler, stats } = echoHandler(() => 2);
    const server = await startServer(handler, { requestsInFlightMax: 512 });
    const client = await connect(server.address, { requestsInFlightMax: 5 });
    const requests = Array.from({ length: 100 }, (_, value) => client.request({ op: 'echo', value }));
    expect(client.pendingCount).toBe(100);
    await Promise.all(requests);
    expect(stats.maxRunning).toBe(5);
    expect(client.pendingCount).toBe(0);
  });

  it('returns a handler KeelError with its code and details; other errors become IO', async () => {
    const server = await startServer(echoHandler().handler);
    const client = await connect(server.address);
    await expect(client.request({ op: 'fail', value: 42 })).rejects.toMatchObject({
      code: 'OUT_OF_RANGE',
      details: { offset: 42, length: 1, sizeBytes: 10 },
    });
    await expect(client.request({ op: 'crash' })).rejects.toMatchObject({ code: 'IO', message: /not a Keel error/ });
    // The connection survives both.
    await expect(client.request({ op: 'echo', value: 7 })).resolves.toMatchObject({ header: { value: 7 } });
  });

  it('replies at once to a request the handler finished in its turn (a plain result, or a throw)', async () => {
    const handler: RpcHandler = {
      openSession: () => ({
        handle: (request: RpcRequest): Promise<RpcResult> | RpcResult => {
          const value = request.header.value as number;
          if (request.header.op === 'now') return { fields: { value } };
          if (request.header.op === 'refuse') throw KeelError.outOfRange(value, 1, 10);
          return delay(50).then(() => ({ fields: { value } }));
        },
        close: () => undefined,
      }),
    };
    const server = await startServer(handler);
    const client = await connect(server.address);
    const order: string[] = [];
    const later = client.request({ op: 'later', value: 1 }).then((response) => order.push(`later ${String(response.header.value)}`));
    const now = client.request({ op: 'now', value: 2 }).then((response) => order.push(`now ${String(response.header.value)}`));
    await expect(client.request({ op: 'refuse', value: 3 })).rejects.toMatchObject({ code: 'OUT_OF_RANGE' });
    await Promise.all([later, now]);
    expect(order).toEqual(['now 2', 'later 1']);
  });

  it('times a request out, frees its slot, and keeps the connection', async () => {
    const server = await startServer(echoHandler().handler);
    const client = await connect(server.address, { requestTimeoutMs: 150, requestsInFlightMax: 1 });
    const started = Date.now();
    await expect(client.request({ op: 'hang' })).rejects.toMatchObject({ code: 'TIMEOUT' });
    expect(Date.now() - started).toBeGreaterThanOrEqual(140);
    await expect(client.request({ op: 'echo', value: 1 })).resolves.toMatchObject({ header: { value: 1 } });
  });

  it('fails pending requests with CONNECTION_CLOSED when the router goes away', async () => {
    const { handler, stats } = echoHandler();
    const server = await startServer(handler);
    const client = await connect(server.address);
    // Observe the rejection from the start: it lands while server.close() is still being awaited.
    const failure = client.request({ op: 'hang' }).then(() => undefined, (err: unknown) => err);
    await delay(20);
    await server.close();
    expect(await failure).toMatchObject({ code: 'CONNECTION_CLOSED' });
    expect(client.currentStatus.state).toBe('closed');
    await expect(client.request({ op: 'echo', value: 1 })).rejects.toMatchObject({ code: 'CONNECTION_CLOSED' });
    expect(stats.sessionsClosed).toBe(1);
  });
});

describe('joined request frames', () => {
  it('come from a pool and go back once a request whose op is done with its payload settles; other ops keep theirs', async () => {
    const seen: Buffer[] = [];
    const handler: RpcHandler = {
      openSession: () => ({
        payloadDoneWhenSettled: (op: string) => op === 'consume',
        handle: async (request: RpcRequest): Promise<RpcResult> => {
          seen.push(request.payload);
          return { fields: { crc: crc32c(request.payload) } };
        },
        close: () => undefined,
      }),
    };
    const server = await startServer(handler);
    const client = await connect(server.address);
    for (let i = 0; i < 5; i++) {
      const payload = patternBytes(1 << 20, i); // 1 MiB arrives in many socket chunks: joined
      expect((await client.request({ op: 'consume', value: i }, payload)).header.crc).toBe(crc32c(payload));
    }
    expect(server.gatherPoolStats()).toMatchObject({ allocated: 1, outstanding: 0 }); // one buffer for all five
    expect(seen[4]!.buffer).toBe(seen[0]!.buffer);
    for (let i = 0; i < 3; i++) await client.request({ op: 'keep', value: i }, patternBytes(1 << 20, 10 + i));
    // The first 'keep' takes the free buffer and never gives it back; the next two allocate.
    expect(server.gatherPoolStats()).toMatchObject({ allocated: 3, outstanding: 0 });
    expect(seen.slice(5).map((payload, i) => payload.equals(patternBytes(1 << 20, 10 + i)))).toEqual([true, true, true]);
  });

  it('a joined frame with a bad header closes its connection and its buffer goes back to the pool', async () => {
    const server = await startServer(echoHandler().handler);
    const raw = await rawConnection(server.address);
    raw.connection.write(encodeFrame({ op: 'hello', id: 0, magic: wireMagic, version: wireVersion, role: 'edge' }));
    await raw.until(() => raw.frames.length === 1);
    const body = Buffer.alloc(512 * 1024, 0xc1); // 0xc1 is never valid msgpack: the header fails to decode
    const preamble = Buffer.alloc(8);
    preamble.writeUInt32BE(4 + body.length, 0);
    preamble.writeUInt32BE(16, 4);
    raw.connection.write([preamble, body]);
    await raw.until(() => raw.isClosed());
    expect((raw.frames[1]!.header.err as { code: string }).code).toBe('PROTOCOL');
    expect(server.gatherPoolStats()).toMatchObject({ acquired: 1, outstanding: 0 });
  });
});

describe('TCP connections this side dialled', () => {
  it('hand out every read as its own copy, also the bytes that came before anyone listened', async () => {
    const sent = patternBytes(3 << 20, 7); // 3 MiB: many reads into the connection's one read buffer
    const listener = await transport.listen('127.0.0.1:0', (accepted) => {
      accepted.write([sent]);
      accepted.close();
    });
    cleanups.push(() => listener.close());
    const connection = await transport.connect(listener.address);
    cleanups.push(() => connection.destroy());
    const closed = new Promise<void>((resolve) => connection.onClose(() => resolve()));
    await delay(200); // the first read waits, and reading stops, until someone listens
    const chunks: Buffer[] = [];
    connection.onData((chunk) => chunks.push(chunk));
    expect(chunks).toHaveLength(1);
    await closed;
    expect(chunks.length).toBeGreaterThan(1);
    expect(Buffer.concat(chunks).equals(sent)).toBe(true);
  });

  it('report a close that happened before anyone asked', async () => {
    const listener = await transport.listen('127.0.0.1:0', (accepted) => accepted.destroy());
    cleanups.push(() => listener.close());
    const connection = await transport.connect(listener.address);
    await delay(200); // the peer's FIN is read at once: nothing waits for a 'data' listener
    await new Promise<void>((resolve) => connection.onClose(() => resolve()));
  });
});

describe('malformed input', () => {
  it('closes only the connection that sent garbage', async () => {
    const { logger: log, records } = capturingLogger();
    const server = await startServer(echoHandler(() => 5).handler, { log });
    const good = await connect(server.address);
    const background = Array.from({ length: 50 }, (_, value) => good.request({ op: 'echo', value }));

    const raw = await rawConnection(server.address);
    raw.connection.write(encodeFrame({ op: 'hello', id: 0, magic: wireMagic, version: wireVersion, role: 'edge' }));
    await raw.until(() => raw.frames.length === 1);
    expect(raw.frames[0]!.header).toMatchObject({ id: 0, ok: true, routerId: 'r1' });
    raw.connection.write([Buffer.from([0, 0, 0, 12, 0, 0, 0, 8]), Buffer.from('garbage!'), Buffer.alloc(4)]);
    await raw.until(() => raw.isClosed());
    expect((raw.frames[1]!.header.err as { code: string }).code).toBe('PROTOCOL');
    expect(records.some((r) => r.msg === 'closing a wire connection' && r.code === 'PROTOCOL')).toBe(true);

    const values = (await Promise.all(background)).map((r) => r.header.value);
    expect(values).toEqual(Array.from({ length: 50 }, (_, i) => i));
    await expect(good.request({ op: 'echo', value: 99 })).resolves.toMatchObject({ header: { value: 99 } });
  });

  it('closes a connection that announces an oversized frame without waiting for its bytes', async () => {
    const server = await startServer(echoHandler().handler);
    const raw = await rawConnection(server.address);
    raw.connection.write(encodeFrame({ op: 'hello', id: 0, magic: wireMagic, version: wireVersion, role: 'edge' }));
    const huge = Buffer.alloc(8);
    huge.writeUInt32BE(0xffff_fff0, 0);
    huge.writeUInt32BE(10, 4);
    raw.connection.write([huge]);
    await raw.until(() => raw.isClosed());
    expect(raw.frames.at(-1)!.header.err).toMatchObject({ code: 'PROTOCOL', message: expect.stringMatching(/exceeds/) });
  });

  it('closes a connection that never says hello', async () => {
    const server = new RpcServer({ transport, handler: echoHandler().handler, logger, routerId: 'r1', handshakeTimeoutMs: 100 });
    await server.listen('127.0.0.1:0');
    cleanups.push(() => server.close());
    const raw = await rawConnection(server.address);
    await raw.until(() => raw.isClosed());
    expect(raw.frames[0]!.header.err).toMatchObject({ code: 'TIMEOUT' });
  });
});

describe('frames before the hello', () => {
  const hello = { op: 'hello', id: 0, magic: wireMagic, version: wireVersion, role: 'edge' };
  const errorOf = (frame: Frame | undefined) => frame?.header.err as { code: string; message: string } | undefined;

  it('the hello RpcClient sends, in every role, fits wireHelloFrameBytesMax', async () => {
    for (const role of ['edge', 'router', 'tool'] as const) {
      let helloBytes = 0;
      const fakeRouter = await transport.listen('127.0.0.1:0', (connection) => {
        connection.onData((chunk) => {
          helloBytes += chunk.length;
          connection.write(encodeFrame({ id: 0, ok: true, version: wireVersion, routerId: 'fake' }));
        });
      });
      cleanups.push(() => fakeRouter.close());
      const client = await RpcClient.connect(fakeRouter.address, { transport, logger, role });
      cleanups.push(() => client.close());
      expect(helloBytes).toBeGreaterThan(0);
      expect(helloBytes).toBeLessThanOrEqual(limits.wireHelloFrameBytesMax);
    }
    // More than a frame without payload can hold would only let a stranger make the router buffer more.
    expect(() => checkLimits({ ...limits, wireHelloFrameBytesMax: 64 * 1024 } as unknown as Limits)).toThrow(/wireHelloFrameBytesMax/);
  });

  it('refuses a frame larger than wireHelloFrameBytesMax with PROTOCOL and closes, without waiting for its bytes', async () => {
    const server = await startServer(echoHandler().handler);
    // A hello padded past the bound (its header is still within wireHeaderBytesMax)...
    const padded = encodeFrame({ ...hello, padding: 'x'.repeat(limits.wireHelloFrameBytesMax) });
    // ...and a frame of wireFrameBytesMax announced with 1 MiB of it sent: the memory a stranger could pin.
    const declared = Buffer.alloc(8);
    declared.writeUInt32BE(limits.wireFrameBytesMax - 4, 0);
    declared.writeUInt32BE(64, 4);
    for (const buffers of [padded, [declared, Buffer.alloc(1024 * 1024)]]) {
      const raw = await rawConnection(server.address);
      raw.connection.write(buffers);
      // The answer comes at once (the handshake timeout is 10 s); none within 2 s fails the expect below.
      await until(() => raw.frames.length > 0 || raw.isClosed(), 2_000).catch(() => undefined);
      expect(errorOf(raw.frames[0])).toMatchObject({ code: 'PROTOCOL', message: expect.stringMatching(/exceeds the maximum of 4096 for a frame before the hello/) });
      await until(() => raw.isClosed(), 2_000);
    }
    await until(() => server.connectionCount === 0);
  });

  it('lifts the bound once the hello is done, also for a request sent in the same write as the hello', async () => {
    const server = await startServer(echoHandler().handler);
    const raw = await rawConnection(server.address);
    const payload = patternBytes(1024 * 1024, 3);
    raw.connection.write([...encodeFrame(hello), ...encodeFrame({ op: 'echo', id: 1, value: 5 }, payload)]);
    await raw.until(() => raw.frames.length === 2 || raw.isClosed());
    expect(raw.frames.map((f) => f.header)).toEqual([expect.objectContaining({ id: 0, ok: true }), expect.objectContaining({ id: 1, ok: true, value: 5 })]);
    expect(raw.frames[1]!.payload.equals(payload)).toBe(true);
  });

  it('the hello deadline covers a client that sends part of a frame and stalls, or trickles bytes', async () => {
    const server = await startServer(echoHandler().handler, { handshakeTimeoutMs: 200 });
    const helloBytes = Buffer.concat(encodeFrame(hello));
    const stalled = await rawConnection(server.address);
    stalled.connection.write([helloBytes.subarray(0, 5)]);
    const trickling = await rawConnection(server.address);
    let sent = 0;
    const trickle = setInterval(() => sent < helloBytes.length - 1 && trickling.connection.write([helloBytes.subarray(sent, ++sent)]), 20);
    cleanups.push(() => clearInterval(trickle));
    const started = Date.now();
    await until(() => stalled.isClosed() && trickling.isClosed(), 2_000);
    expect(Date.now() - started).toBeLessThan(1_000);
    for (const raw of [stalled, trickling]) expect(errorOf(raw.frames[0])).toMatchObject({ code: 'TIMEOUT' });
  });
});

describe('connection limit', () => {
  it('closes connections beyond connectionsMax at once, logs them in a bounded number of lines, and serves those it holds', async () => {
    const { logger: log, records } = capturingLogger();
    const server = await startServer(echoHandler().handler, { log, connectionsMax: 3, logRateLimit: { intervalMs: 60_000 } });
    const held = [await connect(server.address), await connect(server.address), await connect(server.address)];
    const floods = 50;
    const raws = await Promise.all(Array.from({ length: floods }, () => rawConnection(server.address)));
    // Closed at once, without a hello sent (the handshake timeout is 10 s); or, with no limit, held open.
    await until(() => raws.every((raw) => raw.isClosed()) || server.connectionCount > 3);
    expect(server.connectionCount).toBe(3);
    expect(raws.every((raw) => raw.frames.length === 0)).toBe(true);
    await expect(RpcClient.connect(server.address, { transport, logger })).rejects.toMatchObject({ code: 'CONNECTION_CLOSED' });
    expect([server.connectionCount, server.refusedConnectionCount]).toEqual([3, floods + 1]);
    const refusals = records.filter((r) => r.msg === 'wire connection refused: wireConnectionsMax connections are open');
    expect(refusals).toHaveLength(limits.logLinesPerKeyMax);
    expect(refusals[0]).toMatchObject({ level: 40, connectionsMax: 3 });
    for (const [value, client] of held.entries()) await expect(client.request({ op: 'echo', value })).resolves.toMatchObject({ header: { value } });

    held[0]!.close(); // a slot frees up: the next client gets in
    await until(() => server.connectionCount === 2);
    const next = await connect(server.address);
    await expect(next.request({ op: 'echo', value: 9 })).resolves.toMatchObject({ header: { value: 9 } });
    await server.close();
    expect(records.filter((r) => r.msg === 'log lines suppressed')).toEqual([
      expect.objectContaining({ logKey: 'wire-connection-refused', suppressed: floods + 1 - limits.logLinesPerKeyMax }),
    ]);
  });

  it('by default holds a DTL stream and an edge connection for every volume a router may own', () => {
    expect(() => checkLimits()).not.toThrow();
    expect(() => checkLimits({ ...limits, wireConnectionsMax: limits.volumesPerRouterMax } as unknown as Limits)).toThrow(/wireConnectionsMax/);
  });
});

describe('log volume a peer can cause', () => {
  const linesOf = (records: Array<Record<string, unknown>>, msg: string) => records.filter((r) => r.msg === msg);

  it('a flood of connections sending bad frames logs logLinesPerKeyMax lines, then one summary with the rest counted', async () => {
    const { logger: log, records } = capturingLogger();
    const server = await startServer(echoHandler().handler, { log, logRateLimit: { intervalMs: 60_000 } });
    const floods = 60;
    for (let n = 0; n < floods; n++) {
      const raw = await rawConnection(server.address);
      raw.connection.write([Buffer.from([0, 0, 0, 12, 0, 0, 0, 8]), Buffer.from('garbage!'), Buffer.alloc(4)]);
      await raw.until(() => raw.isClosed());
      expect((raw.frames[0]!.header.err as { code: string }).code).toBe('PROTOCOL'); // each is still refused, with the reason
    }
    expect(linesOf(records, 'closing a wire connection')).toHaveLength(limits.logLinesPerKeyMax);
    await server.close(); // writes the summary of the interval still open
    expect(linesOf(records, 'log lines suppressed')).toEqual([
      expect.objectContaining({ logKey: 'wire-connection-closed:PROTOCOL', suppressed: floods - limits.logLinesPerKeyMax, message: 'closing a wire connection' }),
    ]);
  });

  it('a flood of requests that fail inside the handler logs a bounded number of lines, and each still gets its error reply', async () => {
    const { logger: log, records } = capturingLogger();
    const server = await startServer(echoHandler().handler, { log });
    const client = await connect(server.address);
    const replies = await Promise.all(Array.from({ length: 200 }, () => client.request({ op: 'crash' }).then(() => 'ok', (err: KeelError) => err.code)));
    expect(replies).toEqual(Array.from({ length: 200 }, () => 'IO'));
    expect(linesOf(records, 'request handler failed with a non-Keel error')).toHaveLength(limits.logLinesPerKeyMax);
  });
});

describe('volume service over the wire', () => {
  async function volumeSetup() {
    const volume = new MemoryVolume(Buffer.alloc(1 << 20));
    const host = new MemoryVolumeHost('r1', new Map([['v1', volume]]));
    const server = await startServer(createVolumeService(host, logger));
    const client = await connect(server.address);
    return { volume, host, server, client };
  }

  it('serves open, write, read, flush, trim, zero and close', async () => {
    const { host, client } = await volumeSetup();
    const opened = await client.request({ op: 'open', volume: 'v1' });
    expect(opened.header).toMatchObject({ handle: 1, sizeBytes: 1 << 20, readOnly: false });
    const handle = opened.header.handle;
    const data = patternBytes(8192, 3);
    await client.request({ op: 'write', handle, offset: 4096, fua: true }, data);
    const read = await client.request({ op: 'read', handle, offset: 4096, length: 8192 });
    expect(read.payload.equals(data)).toBe(true);
    await client.request({ op: 'flush', handle });
    await client.request({ op: 'trim', handle, offset: 4096, length: 4096, fua: false });
    await client.request({ op: 'zero', handle, offset: 8192 + 100, length: 50, fua: false });
    const after = (await client.request({ op: 'read', handle, offset: 4096, length: 8192 })).payload;
    const expected = Buffer.from(data);
    expected.fill(0, 0, 4096);
    expected.fill(0, 4096 + 100, 4096 + 150);
    expect(after.equals(expected)).toBe(true);
    await client.request({ op: 'close', handle });
    expect(host.openHandles).toBe(0);
    await expect(client.request({ op: 'read', handle, offset: 0, length: 1 })).rejects.toMatchObject({ code: 'BAD_ARGUMENT' });
  });

  it('passes volume errors through and rejects bad fields', async () => {
    const { host, client } = await volumeSetup();
    await expect(client.request({ op: 'open', volume: 'nope' })).rejects.toMatchObject({ code: 'VOLUME_NOT_FOUND' });
    const handle = (await client.request({ op: 'open', volume: 'v1' })).header.handle;
    await expect(client.request({ op: 'read', handle, offset: 1 << 20, length: 1 })).rejects.toMatchObject({ code: 'OUT_OF_RANGE' });
    await expect(client.request({ op: 'read', handle, offset: -1, length: 1 })).rejects.toMatchObject({ code: 'PROTOCOL' });
    await expect(client.request({ op: 'read', handle, offset: 0, length: 2 ** 40 })).rejects.toMatchObject({ code: 'REQUEST_TOO_LARGE' });
    await expect(client.request({ op: 'frobnicate', handle })).rejects.toMatchObject({ code: 'PROTOCOL' });
    host.owner = 'r2';
    await expect(client.request({ op: 'flush', handle })).rejects.toMatchObject({ code: 'NOT_OWNER', details: { owner: 'r2' } });
    await expect(client.request({ op: 'open', volume: 'v1' })).rejects.toMatchObject({ code: 'NOT_OWNER' });
  });

  it('reads into pooled buffers that go back once sent, or once the connection is gone', async () => {
    const volume = new MemoryVolume(patternBytes(1 << 20, 5));
    const pool = new BufferPool(64 * 1024, 1 << 20);
    const server = await startServer(createVolumeService(new MemoryVolumeHost('r1', new Map([['v1', volume]])), logger, undefined, pool));
    const client = await connect(server.address);
    const handle = (await client.request({ op: 'open', volume: 'v1' })).header.handle;
    for (let i = 0; i < 20; i++) {
      const read = await client.request({ op: 'read', handle, offset: i * 4096, length: 4096 });
      expect(read.payload.equals(volume.bytes.subarray(i * 4096, (i + 1) * 4096))).toBe(true);
    }
    await delay(10);
    expect(pool.stats()).toMatchObject({ acquired: 20, allocated: 1, outstanding: 0 }); // one buffer, used 20 times
    const big = await client.request({ op: 'read', handle, offset: 0, length: 128 * 1024 }); // above the pooled size
    expect(big.payload.equals(volume.bytes.subarray(0, 128 * 1024))).toBe(true);
    expect(pool.stats().acquired).toBe(20);

    let finishRead!: () => void;
    volume.hook = (op) => (op === 'read' ? new Promise<void>((resolve) => (finishRead = resolve)) : undefined);
    const pending = client.request({ op: 'read', handle, offset: 0, length: 4096 });
    await delay(20);
    expect(pool.stats().outstanding).toBe(1);
    client.close();
    await expect(pending).rejects.toMatchObject({ code: 'CONNECTION_CLOSED' });
    finishRead();
    await delay(20);
    expect(pool.stats().outstanding).toBe(0); // the reply had nowhere to go: its buffer came back anyway
  });

  it('releases every handle of a connection when it drops, after running requests finish', async () => {
    const { volume, host, client } = await volumeSetup();
    let releaseWrite!: () => void;
    volume.hook = (op) => (op === 'write' ? new Promise<void>((resolve) => (releaseWrite = resolve)) : undefined);
    const h1 = (await client.request({ op: 'open', volume: 'v1' })).header.handle;
    await client.request({ op: 'open', volume: 'v1' });
    const write = client.request({ op: 'write', handle: h1, offset: 0, fua: false }, Buffer.alloc(4096, 1));
    await delay(30);
    expect(host.openHandles).toBe(2);
    client.close();
    await expect(write).rejects.toMatchObject({ code: 'CONNECTION_CLOSED' });
    await delay(30);
    expect(host.openHandles).toBe(1); // the handle with a running write waits for it
    releaseWrite();
    await delay(10);
    expect(host.openHandles).toBe(0);
  });
});

describe('frame budget', () => {
  const helloFrame = (role: 'edge' | 'router' | 'tool' = 'edge') => encodeFrame({ op: 'hello', id: 0, magic: wireMagic, version: wireVersion, role });
  const mib = 1024 * 1024;
  /** Bytes one socket read may bring in beyond the frames the server holds budget for (the start of a frame waiting in line). */
  const readBytesMax = 64 * 1024;

  /** A TCP transport whose accepted connections count the bytes they hand to the server. */
  function countingTransport(onReceived: (bytes: number) => void): Transport {
    return {
      connect: (address, options) => transport.connect(address, options),
      listen: (address, onConnection) =>
        transport.listen(address, (c) =>
          onConnection({
            remoteAddress: c.remoteAddress,
            write: (buffers, onWritten) => c.write(buffers, onWritten),
            flush: () => c.flush(),
            onData: (listener) =>
              c.onData((chunk) => {
                onReceived(chunk.length);
                listener(chunk);
              }),
            onDrain: (listener) => c.onDrain(listener),
            onClose: (listener) => c.onClose(listener),
            pause: () => c.pause(),
            resume: () => c.resume(),
            close: () => c.close(),
            destroy: (error) => c.destroy(error),
          }),
        ),
    };
  }

  async function startBudgetServer(handler: RpcHandler, options: Partial<RpcServerOptions> = {}) {
    const server = new RpcServer({ transport, handler, logger, routerId: 'r1', ...options });
    await server.listen('127.0.0.1:0');
    cleanups.push(() => server.close());
    return server;
  }

  /** Sends `bytes` in pieces of `pieceBytes`, one every `pauseMs`: a slow client, or a trickling one. */
  async function trickle(connection: TransportConnection, bytes: Buffer, pieceBytes: number, pauseMs: number, stop = () => false): Promise<void> {
    for (let at = 0; at < bytes.length && !stop(); at += pieceBytes) {
      connection.write([bytes.subarray(at, at + pieceBytes)]);
      await delay(pauseMs);
    }
  }

  it('holds at most the bound in frames being received or served, over connections sending large frames slowly, and serves every one', async () => {
    const budgetBytes = 3 * mib; // the clients' part: 4 MiB in all, 1 MiB kept for peer routers
    const connections = 6;
    const framesPerConnection = 2;
    const frameSizes = new Map<number, number>();
    let received = 0;
    let served = 0;
    let heldMax = 0;
    const handler: RpcHandler = {
      openSession: () => ({
        payloadDoneWhenSettled: () => true,
        handle: async (request: RpcRequest): Promise<RpcResult> => {
          await delay(20);
          const crc = crc32c(request.payload);
          served += frameSizes.get(request.header.value as number)!;
          return { fields: { crc } };
        },
        close: () => undefined,
      }),
    };
    const server = await startBudgetServer(handler, {
      transport: countingTransport((bytes) => {
        received += bytes;
        heldMax = Math.max(heldMax, received - served);
      }),
      frameBytesInFlightMax: budgetBytes + mib,
      peerFrameBytesInFlightMax: mib,
    });
    const payloads = new Map<number, Buffer>();
    const raws = await Promise.all(Array.from({ length: connections }, () => rawConnection(server.address)));
    await Promise.all(
      raws.map(async (raw, c) => {
        const frames: Buffer[] = [...helloFrame()];
        for (let f = 0; f < framesPerConnection; f++) {
          const value = c * framesPerConnection + f;
          const payload = patternBytes(mib + 4096 * value, value);
          payloads.set(value, payload);
          const frame = encodeFrame({ op: 'sum', id: f + 1, value }, payload);
          frameSizes.set(value, frame.reduce((sum, b) => sum + b.length, 0));
          frames.push(...frame);
        }
        await trickle(raw.connection, Buffer.concat(frames), 128 * 1024, 5);
      }),
    );
    await until(() => raws.every((raw) => raw.frames.length === 1 + framesPerConnection || raw.isClosed()), 10_000);
    for (const [c, raw] of raws.entries()) {
      expect(raw.frames.slice(1).map((f) => f.header)).toEqual(
        Array.from({ length: framesPerConnection }, (_, f) => expect.objectContaining({ id: f + 1, ok: true, crc: crc32c(payloads.get(c * framesPerConnection + f)!) })),
      );
    }
    // Without the bound every connection had its frame in the router at once: about 6 MiB.
    expect(heldMax).toBeGreaterThan(mib);
    expect(heldMax).toBeLessThanOrEqual(budgetBytes + connections * readBytesMax);
    await until(() => server.frameBudgetStats().clients.usedBytes === 0);
    expect(server.frameBudgetStats()).toEqual({
      clients: { capacityBytes: budgetBytes, usedBytes: 0, waiting: 0 },
      peers: { capacityBytes: mib, usedBytes: 0, waiting: 0 },
    });
  });

  it('a connection that holds budget for a frame reads it to its end, while one that cannot get budget waits for it', async () => {
    const order: number[] = [];
    const handler: RpcHandler = {
      openSession: () => ({
        payloadDoneWhenSettled: () => true,
        handle: (request: RpcRequest): RpcResult => {
          order.push(request.header.value as number);
          return { fields: { crc: crc32c(request.payload) } };
        },
        close: () => undefined,
      }),
    };
    const server = await startBudgetServer(handler, { frameBytesInFlightMax: 4 * mib, peerFrameBytesInFlightMax: mib });
    const holder = await rawConnection(server.address);
    const waiter = await rawConnection(server.address);
    for (const raw of [holder, waiter]) {
      raw.connection.write(helloFrame());
      await raw.until(() => raw.frames.length === 1);
    }
    const first = Buffer.concat(encodeFrame({ op: 'sum', id: 1, value: 1 }, patternBytes(2 * mib, 1)));
    const second = Buffer.concat(encodeFrame({ op: 'sum', id: 1, value: 2 }, patternBytes(2 * mib, 2)));
    holder.connection.write([first.subarray(0, 512 * 1024)]); // takes 2 MiB of the 3 at its preamble
    await until(() => server.frameBudgetStats().clients.usedBytes === first.length, 2_000).catch(() => undefined);
    waiter.connection.write([second]); // all of it sent at once, but it does not fit beside the first
    await until(() => server.frameBudgetStats().clients.waiting === 1, 2_000).catch(() => undefined);
    await delay(100);
    expect(order).toEqual([]); // without the bound, the second was served here
    await trickle(holder.connection, first.subarray(512 * 1024), 256 * 1024, 10);
    await until(() => holder.frames.length === 2 && waiter.frames.length === 2);
    expect(order).toEqual([1, 2]);
    expect(holder.frames[1]!.header.crc).toBe(crc32c(patternBytes(2 * mib, 1)));
    expect(waiter.frames[1]!.header.crc).toBe(crc32c(patternBytes(2 * mib, 2)));
    expect(server.frameBudgetStats().clients).toMatchObject({ usedBytes: 0, waiting: 0 });
  });

  it('closes a connection whose frame holding budget stalls or trickles, and gives its budget to the next in line', async () => {
    const { handler } = echoHandler();
    const server = await startBudgetServer(handler, { frameBytesInFlightMax: 4 * mib, peerFrameBytesInFlightMax: mib, frameReceiveTimeoutMs: 300 });
    const stalled = await rawConnection(server.address);
    const trickling = await rawConnection(server.address);
    const waiter = await rawConnection(server.address);
    for (const raw of [stalled, trickling, waiter]) {
      raw.connection.write(helloFrame());
      await raw.until(() => raw.frames.length === 1);
    }
    const frame = (value: number, bytes: number) => Buffer.concat(encodeFrame({ op: 'echo', id: 1, value }, patternBytes(bytes, value)));
    stalled.connection.write([frame(1, mib).subarray(0, 100 * 1024)]); // and nothing more
    void trickle(trickling.connection, frame(2, mib), 4096, 20, () => trickling.isClosed()); // 4 KiB every 20 ms: 5 s for the frame
    await until(() => server.frameBudgetStats().clients.usedBytes > 2 * mib, 2_000).catch(() => undefined);
    const started = Date.now();
    waiter.connection.write(encodeFrame({ op: 'echo', id: 1, value: 3 }, patternBytes(2 * mib, 3))); // waits for both
    await until(() => stalled.isClosed() && trickling.isClosed() && waiter.frames.length === 2, 3_000);
    expect(Date.now() - started).toBeLessThan(1_500);
    for (const raw of [stalled, trickling]) {
      expect(raw.frames[1]!.header.err).toMatchObject({ code: 'TIMEOUT', message: expect.stringMatching(/receiving a request frame/) });
    }
    expect(waiter.frames[1]!.payload.equals(patternBytes(2 * mib, 3))).toBe(true);
    expect(server.frameBudgetStats().clients).toMatchObject({ usedBytes: 0, waiting: 0 });
  });

  it('keeps a share for peer routers: a DTL stream is served while every other frame waits on it', async () => {
    // Writes that hold their frames until a peer's request arrives: an owner's writes waiting for DTL acks.
    let unblock: () => void = () => undefined;
    const peerArrived = new Promise<void>((resolve) => (unblock = resolve));
    const handler: RpcHandler = {
      openSession: () => ({
        handle: async (request: RpcRequest): Promise<RpcResult> => {
          if (request.header.op === 'dtl-append') unblock();
          else await peerArrived;
          return { fields: { bytes: request.payload.length } };
        },
        close: () => undefined,
      }),
    };
    const server = await startBudgetServer(handler, { frameBytesInFlightMax: 3 * mib + 256 * 1024, peerFrameBytesInFlightMax: mib + 128 * 1024 });
    const edge = await connect(server.address);
    const writes = [0, 1, 2].map((i) => edge.request({ op: 'write', value: i }, patternBytes(mib - 1024, i)));
    await until(() => server.frameBudgetStats().clients.waiting === 1); // two fill the clients' share, the third waits
    const peer = await RpcClient.connect(server.address, { transport, logger, role: 'router' });
    cleanups.push(() => peer.close());
    await expect(peer.request({ op: 'dtl-append' }, patternBytes(mib, 9))).resolves.toMatchObject({ header: { bytes: mib } });
    await expect(Promise.all(writes)).resolves.toHaveLength(3);
  });

  it('refuses a frame larger than the whole budget with PROTOCOL; by default the budget holds a largest frame for each share', async () => {
    const server = await startBudgetServer(echoHandler().handler, { frameBytesInFlightMax: 2 * mib, peerFrameBytesInFlightMax: mib });
    const raw = await rawConnection(server.address);
    raw.connection.write([...helloFrame(), ...encodeFrame({ op: 'echo', id: 1 }, Buffer.alloc(mib))]);
    await until(() => raw.isClosed(), 2_000).catch(() => undefined);
    expect(raw.frames[1]!.header.err).toMatchObject({ code: 'PROTOCOL', message: expect.stringMatching(/the clients' frame budget/) });
    expect(() => checkLimits()).not.toThrow();
    expect(() => checkLimits({ ...limits, wireServerPeerFrameBytesInFlightMax: limits.wireFrameBytesMax - 1 } as unknown as Limits)).toThrow(/wireServerFrameBytesInFlightMax/);
    expect(() => checkLimits({ ...limits, wireServerFrameBytesInFlightMax: limits.wireServerPeerFrameBytesInFlightMax + limits.wireFrameBytesMax - 1 } as unknown as Limits)).toThrow(/wireServerFrameBytesInFlightMax/);
  });
});
