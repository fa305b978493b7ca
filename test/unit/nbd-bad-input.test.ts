/**
 * Misbehaving NBD clients on raw sockets: each case must be logged, must not crash or hang the server,
 * must clean up (connection gone, export closed), and must leave a well-behaved client next to it working.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { NbdClient } from '../../edge/nbd-client.ts';
import {
  encodeClientFlags,
  encodeInfoRequest,
  encodeOption,
  parseExportNameReply,
  parseInfoReply,
} from '../../edge/nbd-handshake.ts';
import {
  NBD_CMD_DISC,
  NBD_CMD_FLAG_DF,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_EINVAL,
  NBD_EPERM,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_GREETING_BYTES,
  NBD_INFO_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
} from '../../edge/nbd-protocol.ts';
import { NbdServer, type NbdServerBounds } from '../../edge/nbd-server.ts';
import { limits } from '../../shared/limits.ts';
import { silentLogger } from '../../shared/logger.ts';
import { MemoryExportResolver, MemoryVolume } from '../helpers/memory-target.ts';
import { RawNbdSocket, capturingLogger } from '../helpers/raw-nbd-socket.ts';

const MiB = 1024 * 1024;
const cleanups: Array<() => Promise<void> | void> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function startServer(bounds: Partial<NbdServerBounds> = {}) {
  const resolver = new MemoryExportResolver();
  const volume = resolver.add('vol', new MemoryVolume(4 * MiB));
  resolver.add('ro', new MemoryVolume(1 * MiB, true));
  const { logger, lines } = capturingLogger();
  const server = new NbdServer({ host: '127.0.0.1', port: 0, resolver, logger, bounds: { requestBytesMax: MiB, ...bounds } });
  await server.start();
  cleanups.push(() => server.stop());
  // A well-behaved client that must keep working through every misbehaviour.
  const good = await NbdClient.connect({ host: '127.0.0.1', port: server.port, exportName: 'vol', logger: silentLogger() });
  cleanups.push(() => good.destroy());
  const raw = async () => {
    const socket = await RawNbdSocket.connect(server.port);
    cleanups.push(() => socket.destroy());
    return socket;
  };
  const rawInTransmission = async (exportName = 'vol', options: { allowHalfOpen?: boolean } = {}) => {
    const socket = await RawNbdSocket.inTransmission(server.port, exportName, options);
    cleanups.push(() => socket.destroy());
    return socket;
  };
  const goodClientStillWorks = async () => {
    const data = Buffer.from(`still fine ${Math.random()}`);
    await good.write(12345, data);
    expect((await good.read(12345, data.length)).equals(data)).toBe(true);
  };
  /** Everything the bad connection held is released: only the good client remains, its export open. */
  const cleanedUp = async () => {
    await waitFor(() => server.connectionCount === 1 && resolver.opened - resolver.closed === 1, 'the server to clean up');
  };
  const logged = (pattern: RegExp) => lines.some((l) => l.level === 40 && pattern.test(String(l.msg)));
  return { server, resolver, volume, raw, rawInTransmission, goodClientStillWorks, cleanedUp, logged, lines };
}

async function waitFor(condition: () => boolean, what: string, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

async function negotiateFlags(raw: RawNbdSocket, flags = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES): Promise<void> {
  await raw.read(NBD_GREETING_BYTES);
  raw.write(encodeClientFlags(flags));
}

describe('NBD handshake with bad or unusual input', () => {
  it('closes the connection on a wrong option magic', async () => {
    const t = await startServer();
    const raw = await t.raw();
    await negotiateFlags(raw);
    const bad = encodeOption(NBD_OPT_GO, encodeInfoRequest('vol', []));
    bad.write('IHAVEOPS', 0, 'latin1');
    raw.write(bad);
    await raw.expectClosed();
    expect(t.logged(/bad handshake input/)).toBe(true);
    await t.cleanedUp();
    await t.goodClientStillWorks();
  });

  it('closes the connection on unknown client flags', async () => {
    const t = await startServer();
    const raw = await t.raw();
    await negotiateFlags(raw, 0x80);
    await raw.expectClosed();
    expect(t.logged(/bad handshake input/)).toBe(true);
    await t.goodClientStillWorks();
  });

  it('closes the connection when an option announces more data than allowed', async () => {
    const t = await startServer({ optionBytesMax: 1024 });
    const raw = await t.raw();
    await negotiateFlags(raw);
    raw.write(encodeOption(NBD_OPT_GO, Buffer.alloc(2048)).subarray(0, 100));
    await raw.expectClosed();
    expect(t.logged(/bad handshake input/)).toBe(true);
    await t.goodClientStillWorks();
  });

  it('answers NBD_REP_ERR_UNSUP to unsupported options and carries on', async () => {
    const t = await startServer();
    const raw = await t.raw();
    await negotiateFlags(raw);
    for (const option of [NBD_OPT_STRUCTURED_REPLY, NBD_OPT_STARTTLS, NBD_OPT_SET_META_CONTEXT, 4242]) {
      raw.write(encodeOption(option, Buffer.from('ignored data')));
      const reply = await raw.readOptionReply();
      expect(reply.option).toBe(option);
      expect(reply.replyType).toBe(NBD_REP_ERR_UNSUP);
    }
    raw.write(encodeOption(NBD_OPT_GO, encodeInfoRequest('vol', [])));
    const infos = [];
    for (let reply = await raw.readOptionReply(); reply.replyType !== NBD_REP_ACK; reply = await raw.readOptionReply()) {
      expect(reply.replyType).toBe(NBD_REP_INFO);
      infos.push(parseInfoReply(reply.data));
    }
    expect(infos.map((i) => i.type).sort()).toEqual(['block_size', 'export']);
    raw.request(NBD_CMD_READ, { handle: 5, offset: 0, length: 512 });
    expect((await raw.readSimpleReply(512)).handleLo).toBe(5);
  });

  it('answers unknown exports with NBD_REP_ERR_UNKNOWN and malformed INFO with NBD_REP_ERR_INVALID', async () => {
    const t = await startServer();
    const raw = await t.raw();
    await negotiateFlags(raw);
    raw.write(encodeOption(NBD_OPT_INFO, encodeInfoRequest('nope', [])));
    expect((await raw.readOptionReply()).replyType).toBe(NBD_REP_ERR_UNKNOWN);
    raw.write(encodeOption(NBD_OPT_GO, encodeInfoRequest('nope', [])));
    expect((await raw.readOptionReply()).replyType).toBe(NBD_REP_ERR_UNKNOWN);
    raw.write(encodeOption(NBD_OPT_GO, encodeInfoRequest('', []))); // no default export configured
    expect((await raw.readOptionReply()).replyType).toBe(NBD_REP_ERR_UNKNOWN);
    raw.write(encodeOption(NBD_OPT_GO, Buffer.from([0, 0, 0, 9, 1])));
    expect((await raw.readOptionReply()).replyType).toBe(NBD_REP_ERR_INVALID);
    raw.write(encodeOption(NBD_OPT_LIST, Buffer.from('x')));
    expect((await raw.readOptionReply()).replyType).toBe(NBD_REP_ERR_INVALID);
    // NBD_OPT_INFO describes without opening; NBD_INFO_NAME is answered when asked for.
    raw.write(encodeOption(NBD_OPT_INFO, encodeInfoRequest('ro', [NBD_INFO_NAME])));
    const infos = [];
    for (let reply = await raw.readOptionReply(); reply.replyType !== NBD_REP_ACK; reply = await raw.readOptionReply())
      infos.push(parseInfoReply(reply.data));
    expect(infos).toContainEqual({ type: 'export', sizeBytes: MiB, transmissionFlags: 0x16f });
    expect(infos).toContainEqual({ type: 'name', name: 'ro' });
    expect(t.resolver.opened).toBe(1); // only the good client's
  });

  it('ends the session for NBD_OPT_EXPORT_NAME of an unknown export, as the spec requires', async () => {
    const t = await startServer();
    const raw = await t.raw();
    await negotiateFlags(raw);
    raw.write(encodeOption(NBD_OPT_EXPORT_NAME, Buffer.from('nope')));
    await raw.expectClosed();
    expect(t.logged(/unknown or unavailable export/)).toBe(true);
    await t.goodClientStillWorks();
  });

  it('honours NBD_FLAG_C_NO_ZEROES in the NBD_OPT_EXPORT_NAME answer', async () => {
    const t = await startServer();
    for (const noZeroes of [true, false]) {
      const raw = await t.raw();
      await negotiateFlags(raw, NBD_FLAG_C_FIXED_NEWSTYLE | (noZeroes ? NBD_FLAG_C_NO_ZEROES : 0));
      raw.write(encodeOption(NBD_OPT_EXPORT_NAME, Buffer.from('vol')));
      const answer = await raw.read(noZeroes ? 10 : 134);
      expect(parseExportNameReply(answer)).toEqual({ sizeBytes: 4 * MiB, transmissionFlags: 0x16d });
      raw.request(NBD_CMD_READ, { handle: 1, offset: 0, length: 4 });
      const reply = await raw.readSimpleReply(4);
      expect(reply.error).toBe(0);
      expect(raw.bufferedBytes).toBe(0);
    }
  });

  it('acknowledges NBD_OPT_ABORT and closes', async () => {
    const t = await startServer();
    const raw = await t.raw();
    await negotiateFlags(raw);
    raw.write(encodeOption(NBD_OPT_ABORT));
    expect((await raw.readOptionReply()).replyType).toBe(NBD_REP_ACK);
    await raw.expectClosed();
    await t.goodClientStillWorks();
  });

  it('cuts a client that does not finish the handshake in time', async () => {
    const t = await startServer({ handshakeTimeoutMs: 150 });
    const raw = await t.raw();
    await negotiateFlags(raw);
    const started = Date.now();
    await raw.expectClosed();
    expect(Date.now() - started).toBeLessThan(1500);
    expect(t.logged(/handshake not finished within 150 ms/)).toBe(true);
    await t.goodClientStillWorks();
  });

  it('silent handshakes cannot lock clients out: the oldest makes room, established connections stay', async () => {
    // 6 connection slots: without a separate handshake cap, the good client plus 5 silent sockets fill them all.
    const t = await startServer({ connectionsMax: 6, handshakingConnectionsMax: 3 });
    const silent: RawNbdSocket[] = [];
    for (let i = 0; i < 5; i++) {
      silent.push(await t.raw());
      await silent[i].read(NBD_GREETING_BYTES); // accepted, then says nothing
    }
    const started = Date.now();
    const real = await NbdClient.connect({ host: '127.0.0.1', port: t.server.port, exportName: 'vol', logger: silentLogger() });
    cleanups.push(() => real.destroy());
    expect(Date.now() - started).toBeLessThan(1000); // not after the 30 s handshake timeout
    await real.write(0, Buffer.alloc(4096, 7));
    expect((await real.read(0, 4096)).equals(Buffer.alloc(4096, 7))).toBe(true);
    // Each connection beyond 3 handshakes closed the oldest one: silent 4 and 5 closed 1 and 2, the real client 3.
    for (const i of [0, 1, 2]) await silent[i].expectClosed();
    expect(silent[3].isClosed || silent[4].isClosed).toBe(false);
    expect(t.logged(/nbd handshake evicted/)).toBe(true);
    expect(t.logged(/nbd connection closed: evicted/)).toBe(true);
    await t.goodClientStillWorks(); // established before the flood: never evicted
  });

  it('evicts an idle handshake before one whose export is still opening', async () => {
    const t = await startServer({ handshakingConnectionsMax: 2 });
    let finishOpen!: () => void;
    const open = t.resolver.open.bind(t.resolver);
    t.resolver.open = async (name) => {
      if (name === 'vol') await new Promise<void>((resolve) => (finishOpen = resolve));
      return open(name);
    };
    cleanups.push(() => finishOpen?.());
    const opening = await t.raw(); // older, but the edge is working on its NBD_OPT_GO
    await negotiateFlags(opening);
    opening.write(encodeOption(NBD_OPT_GO, encodeInfoRequest('vol', [])));
    await waitFor(() => finishOpen !== undefined, 'the export to be opening');
    const idle = await t.raw();
    await idle.read(NBD_GREETING_BYTES);
    const newcomer = await t.raw();
    await newcomer.read(NBD_GREETING_BYTES);
    await idle.expectClosed();
    finishOpen();
    expect((await opening.readOptionReply()).replyType).toBe(NBD_REP_INFO);
    expect(opening.isClosed).toBe(false);
  });

  it('cleans up when a client vanishes mid-handshake', async () => {
    const t = await startServer();
    const raw = await t.raw();
    await negotiateFlags(raw);
    raw.write(encodeOption(NBD_OPT_GO, encodeInfoRequest('vol', [])).subarray(0, 9));
    await new Promise((resolve) => setTimeout(resolve, 20));
    raw.destroy();
    await t.cleanedUp();
    await t.goodClientStillWorks();
  });
});

describe('NBD transmission with bad input', () => {
  it('closes the connection on a wrong request magic', async () => {
    const t = await startServer();
    const raw = await t.rawInTransmission();
    const bad = Buffer.alloc(28);
    bad.writeUInt32BE(0x12345678, 0);
    raw.write(bad);
    await raw.expectClosed();
    expect(t.logged(/bad request/)).toBe(true);
    await t.cleanedUp();
    await t.goodClientStillWorks();
  });

  it('answers EINVAL to unknown commands and flags and keeps serving', async () => {
    const t = await startServer();
    const raw = await t.rawInTransmission();
    raw.request(77, { handle: 1, offset: 0, length: 4096 });
    expect(await raw.readSimpleReply()).toMatchObject({ error: NBD_EINVAL, handleLo: 1 });
    raw.request(NBD_CMD_READ, { handle: 2, flags: NBD_CMD_FLAG_DF, offset: 0, length: 4096 });
    expect(await raw.readSimpleReply()).toMatchObject({ error: NBD_EINVAL, handleLo: 2 });
    raw.request(NBD_CMD_READ, { handle: 3, offset: 0, length: MiB + 1 }); // above the maximum block size
    expect(await raw.readSimpleReply()).toMatchObject({ error: NBD_EINVAL, handleLo: 3 });
    raw.request(NBD_CMD_READ, { handle: 4, offset: 2 ** 63, length: 1 });
    expect(await raw.readSimpleReply()).toMatchObject({ error: NBD_EINVAL, handleLo: 4 });
    raw.request(NBD_CMD_READ, { handle: 5, offset: 0, length: 8 });
    const ok = await raw.readSimpleReply(8);
    expect(ok).toMatchObject({ error: 0, handleLo: 5 });
    expect(ok.data.length).toBe(8);
    expect(t.logged(/nbd request rejected/)).toBe(true);
  });

  it('a client looping on bad requests gets every answer, and the log logLinesPerKeyMax lines then one count', async () => {
    const t = await startServer();
    const raw = await t.rawInTransmission();
    const requests = 200;
    for (let handle = 1; handle <= requests; handle++) raw.request(NBD_CMD_READ, { handle, offset: 2 ** 40, length: 4096 }); // past the end
    for (let i = 0; i < requests; i++) expect(await raw.readSimpleReply()).toMatchObject({ error: NBD_EINVAL });
    const rejected = t.lines.filter((l) => l.msg === 'nbd request rejected');
    expect(rejected).toHaveLength(limits.logLinesPerKeyMax);
    await t.server.stop(); // the stop writes the count of the lines held back
    expect(t.lines.filter((l) => l.msg === 'log lines suppressed')).toEqual([
      expect.objectContaining({ suppressed: requests - limits.logLinesPerKeyMax, message: 'nbd request rejected' }),
    ]);
  });

  it('answers EPERM to writes on a read-only export, consuming the payload', async () => {
    const t = await startServer();
    const raw = await t.rawInTransmission('ro');
    raw.request(NBD_CMD_WRITE, { handle: 9, offset: 0, payload: Buffer.alloc(4096, 1) });
    expect(await raw.readSimpleReply()).toMatchObject({ error: NBD_EPERM, handleLo: 9 });
    raw.request(NBD_CMD_READ, { handle: 10, offset: 0, length: 4096 });
    expect((await raw.readSimpleReply(4096)).data.equals(Buffer.alloc(4096))).toBe(true);
  });

  it('closes the connection on a write whose payload exceeds the maximum', async () => {
    const t = await startServer();
    const raw = await t.rawInTransmission();
    raw.request(NBD_CMD_WRITE, { handle: 1, offset: 0, length: MiB + 1 });
    raw.write(Buffer.alloc(64 * 1024));
    await raw.expectClosed();
    expect(t.logged(/bad request/)).toBe(true);
    expect(t.volume.calls.write).toBe(0);
    await t.cleanedUp();
    await t.goodClientStillWorks();
  });

  it('cleans up after a truncated request header', async () => {
    const t = await startServer();
    const raw = await t.rawInTransmission();
    const header = Buffer.alloc(28);
    header.writeUInt32BE(0x25609513, 0);
    raw.write(header.subarray(0, 13));
    await new Promise((resolve) => setTimeout(resolve, 20));
    raw.destroy();
    await t.cleanedUp();
    await t.goodClientStillWorks();
  });

  it('cleans up when a client vanishes in the middle of a write payload', async () => {
    const t = await startServer();
    const raw = await t.rawInTransmission();
    raw.request(NBD_CMD_WRITE, { handle: 1, offset: 0, length: 65536 });
    raw.write(Buffer.alloc(1000, 1));
    await new Promise((resolve) => setTimeout(resolve, 20));
    raw.destroy();
    await t.cleanedUp();
    expect(t.volume.peek(0, 1000).equals(Buffer.alloc(1000))).toBe(true); // a partial write is never applied
    await t.goodClientStillWorks();
  });

  it('finishes in-flight requests of a vanished client before closing its export', async () => {
    const t = await startServer();
    const raw = await t.rawInTransmission();
    const release = t.volume.stallAll();
    raw.request(NBD_CMD_WRITE, { handle: 1, offset: 0, payload: Buffer.alloc(4096, 1) });
    await waitFor(() => t.volume.running === 1, 'the stalled write');
    raw.destroy();
    await raw.closed;
    await new Promise((resolve) => setTimeout(resolve, 30));
    expect(t.resolver.closed).toBe(0); // still in flight: the export stays open
    release();
    await t.cleanedUp();
    await t.goodClientStillWorks();
  });

  it('on NBD_CMD_DISC answers requests in flight, then closes', async () => {
    const t = await startServer();
    const raw = await t.rawInTransmission();
    t.volume.delayMs = (op) => (op === 'write' ? 50 : 0);
    raw.request(NBD_CMD_WRITE, { handle: 1, offset: 0, payload: Buffer.alloc(4096, 6) });
    raw.request(NBD_CMD_DISC, { handle: 2 });
    expect(await raw.readSimpleReply()).toMatchObject({ error: 0, handleLo: 1 });
    await raw.expectClosed();
    expect(t.volume.peek(0, 4096).equals(Buffer.alloc(4096, 6))).toBe(true);
    await t.cleanedUp();
  });

  it('cuts a client that keeps its side open after NBD_CMD_DISC', async () => {
    const t = await startServer({ closeLingerMs: 100 });
    const raw = await t.rawInTransmission('vol', { allowHalfOpen: true });
    raw.request(NBD_CMD_DISC, { handle: 1 });
    await t.cleanedUp(); // the half-open client cannot see this: the server's side is gone
    expect(t.logged(/kept the connection open after our FIN/)).toBe(true);
    await t.goodClientStillWorks();
  });

  it('stops reading from a client that never reads its replies, while another client keeps working', async () => {
    const t = await startServer();
    const raw = await t.rawInTransmission();
    const flood = Array.from({ length: 2000 }, (_, i) => {
      const header = Buffer.alloc(28);
      header.writeUInt32BE(0x25609513, 0);
      header.writeUInt32BE(i, 12);
      header.writeUInt32BE(65536, 24); // READ of 64 KiB at offset 0
      return header;
    });
    raw.stopReading();
    raw.write(Buffer.concat(flood)); // 128 MiB of replies requested, none read
    await new Promise((resolve) => setTimeout(resolve, 100));
    await t.goodClientStillWorks();
    await new Promise((resolve) => setTimeout(resolve, 100));
    const served = t.volume.calls.read;
    // Replies stuck in socket buffers stop the reading: at most a few MiB of kernel buffers plus one
    // window of in-flight requests get served, not the whole flood.
    expect(served).toBeLessThan(600);
    await t.goodClientStillWorks();
    raw.destroy();
    await t.cleanedUp();
  });

  it('replies out of order, matched by handle', async () => {
    const t = await startServer();
    const raw = await t.rawInTransmission();
    t.volume.delayMs = (op, offset) => (op === 'read' && offset === 0 ? 100 : 0);
    raw.request(NBD_CMD_READ, { handle: 1, offset: 0, length: 512 });
    raw.request(NBD_CMD_READ, { handle: 2, offset: 512, length: 512 });
    expect((await raw.readSimpleReply(512)).handleLo).toBe(2);
    expect((await raw.readSimpleReply(512)).handleLo).toBe(1);
  });

  it('answers zero-length requests without touching the target', async () => {
    const t = await startServer();
    const raw = await t.rawInTransmission();
    const readsBefore = t.volume.calls.read;
    raw.request(NBD_CMD_READ, { handle: 1, offset: 100, length: 0 });
    expect(await raw.readSimpleReply()).toMatchObject({ error: 0, handleLo: 1 });
    raw.request(NBD_CMD_WRITE, { handle: 2, offset: 100, length: 0 });
    expect(await raw.readSimpleReply()).toMatchObject({ error: 0, handleLo: 2 });
    expect(t.volume.calls.read).toBe(readsBefore);
    expect(raw.bufferedBytes).toBe(0);
  });
});
