/**
 * A client that pipelines handshake options and never reads the replies must not grow the edge: the
 * connection stops reading options while more than limits.nbdHandshakeReplyBytesMax of replies wait in
 * its send buffer (before, such a client grew the edge to 2.9 GB in 30 s). The connection runs on a socket
 * the test accepts itself, so the edge side's unsent bytes (socket.writableLength) can be looked at.
 */
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { ByteBudget } from '../../shared/byte-budget.ts';
import { NbdConnection, type NbdConnectionSettings } from '../../edge/nbd-connection.ts';
import { encodeClientFlags, encodeOption, parseServerEntry } from '../../edge/nbd-handshake.ts';
import { NBD_FLAG_C_FIXED_NEWSTYLE, NBD_GREETING_BYTES, NBD_OPT_LIST, NBD_REP_ACK, NBD_REP_SERVER } from '../../edge/nbd-protocol.ts';
import { limits } from '../../shared/limits.ts';
import { LogRateLimit } from '../../shared/log-rate-limit.ts';
import { silentLogger } from '../../shared/logger.ts';
import { MemoryExportResolver, MemoryVolume } from '../helpers/memory-target.ts';
import { RawNbdSocket } from '../helpers/raw-nbd-socket.ts';

const MiB = 1024 * 1024;
const cleanups: Array<() => Promise<void> | void> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** Exports with long descriptions: one 16-byte NBD_OPT_LIST earns about 1 MiB of replies. */
function bigListResolver(): { resolver: MemoryExportResolver; listReplyBytes: number; listCalls: () => number } {
  const resolver = new MemoryExportResolver();
  const description = 'd'.repeat(4096);
  for (let i = 0; i < 256; i++) resolver.add(`export-${i}`, new MemoryVolume(4096), description);
  let calls = 0;
  const list = resolver.list.bind(resolver);
  resolver.list = () => {
    calls += 1;
    return list();
  };
  // Each NBD_REP_SERVER: 20-byte reply header, u32 name length, name, description; then a 20-byte ACK.
  const listReplyBytes = [...resolver.volumes.keys()].reduce((sum, name) => sum + 24 + name.length + description.length, 20);
  return { resolver, listReplyBytes, listCalls: () => calls };
}

/** Accepts one socket and runs an NbdConnection on it; returns the edge side's socket once accepted. */
async function serveOneConnection(resolver: MemoryExportResolver) {
  let edgeSocket: net.Socket | undefined;
  const server = net.createServer((socket) => {
    edgeSocket = socket;
    const settings: NbdConnectionSettings = {
      resolver,
      defaultExport: undefined,
      requestsInFlightMax: limits.nbdRequestsInFlightMax,
      requestBytesInFlightMax: limits.nbdRequestBytesInFlightMax,
      edgeRequestBytes: new ByteBudget(limits.nbdEdgeRequestBytesInFlightMax),
      logLimit: new LogRateLimit(silentLogger(), { linesMax: limits.logLinesPerKeyMax, intervalMs: limits.logRateIntervalMs, keysMax: limits.logRateKeysMax }),
      requestBytesMax: limits.nbdRequestBytesMax,
      optionBytesMax: limits.nbdOptionBytesMax,
      handshakeTimeoutMs: 30_000,
      closeLingerMs: 100,
      payloadReceiveTimeoutMs: limits.nbdPayloadReceiveTimeoutMs,
      replyDrainTimeoutMs: limits.nbdReplyDrainTimeoutMs,
    };
    new NbdConnection(socket, settings, silentLogger());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
  cleanups.push(() => void edgeSocket?.destroy());
  const port = (server.address() as net.AddressInfo).port;
  return { port, edgeSocket: () => edgeSocket! };
}

async function untilStable(value: () => number, quietMs: number): Promise<void> {
  let last = value();
  let since = Date.now();
  while (Date.now() - since < quietMs) {
    await new Promise((resolve) => setTimeout(resolve, 20));
    if (value() !== last) {
      last = value();
      since = Date.now();
    }
  }
}

describe('NBD handshake backpressure', () => {
  it('stops answering options while a client leaves more than nbdHandshakeReplyBytesMax of replies unread', async () => {
    const { resolver, listReplyBytes, listCalls } = bigListResolver();
    expect(listReplyBytes).toBeGreaterThan(MiB);
    const { port, edgeSocket } = await serveOneConnection(resolver);
    const raw = await RawNbdSocket.connect(port);
    cleanups.push(() => raw.destroy());
    await raw.read(NBD_GREETING_BYTES);
    raw.write(encodeClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE));
    raw.stopReading();
    // 1.6 KB of options asking for about 100 MiB of replies: far beyond what the kernel's socket buffers
    // (a few MiB on loopback for a socket nobody reads) can hide.
    const options = 100;
    raw.write(Buffer.concat(Array.from({ length: options }, () => encodeOption(NBD_OPT_LIST))));
    await untilStable(listCalls, 300);

    // The edge keeps at most the bound plus the replies of the one option that crossed it.
    expect(edgeSocket().writableLength).toBeLessThanOrEqual(limits.nbdHandshakeReplyBytesMax + listReplyBytes);
    expect(listCalls()).toBeLessThan(options);

    // Once the client reads, every option is answered, in order and complete: nothing was lost or stuck.
    raw.socket.resume();
    for (let i = 0; i < options; i++) {
      let entries = 0;
      for (let reply = await raw.readOptionReply(); reply.replyType !== NBD_REP_ACK; reply = await raw.readOptionReply()) {
        expect(reply.replyType).toBe(NBD_REP_SERVER);
        expect(parseServerEntry(reply.data).name).toBe(`export-${entries}`);
        entries += 1;
      }
      expect(entries).toBe(256);
    }
    expect(listCalls()).toBe(options);
  });
});
