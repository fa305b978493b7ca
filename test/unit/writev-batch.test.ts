import net from 'node:net';
import { once } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import { WritevBatch } from '../../shared/writev-batch.ts';

/** A connected loopback pair; counts the chunks of every writev/write the client socket makes. */
async function socketPair() {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const accepted = once(server, 'connection');
  const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  await once(client, 'connect');
  const [peer] = (await accepted) as [net.Socket];
  const received: Buffer[] = [];
  peer.on('data', (chunk: Buffer) => received.push(chunk));
  const sends: number[] = []; // chunks per syscall-level write
  const socket = client as unknown as { _writev: (chunks: unknown[], cb: unknown) => void; _write: (...args: unknown[]) => void };
  const writev = socket._writev.bind(client);
  const write = socket._write.bind(client);
  socket._writev = (chunks, cb) => (sends.push(chunks.length), writev(chunks, cb));
  socket._write = (...args) => (sends.push(1), write(...args));
  const close = () => {
    client.destroy();
    peer.destroy();
    server.close();
  };
  return { client, received, sends, close };
}

const frame = (i: number) => Buffer.from([i]);

describe('WritevBatch', () => {
  let close: (() => void) | undefined;
  afterEach(() => close?.());

  it('holds the frames of one turn for one writev at the end of the turn', async () => {
    const pair = await socketPair();
    close = pair.close;
    const batch = new WritevBatch(pair.client, 8);
    for (let i = 0; i < 5; i++) {
      batch.beginFrame();
      pair.client.write(frame(i));
      batch.endFrame();
    }
    expect(pair.sends).toEqual([]); // nothing left yet: the socket is corked until the turn ends
    await new Promise((resolve) => setImmediate(resolve));
    expect(pair.sends).toEqual([5]);
  });

  it('sends every framesMax frames mid-turn, then the rest at the end of the turn, in order', async () => {
    const pair = await socketPair();
    close = pair.close;
    const batch = new WritevBatch(pair.client, 8);
    for (let i = 0; i < 20; i++) {
      batch.beginFrame();
      pair.client.write(frame(i));
      batch.endFrame();
      if (i === 7) expect(pair.sends).toEqual([8]);
    }
    expect(pair.sends).toEqual([8, 8]);
    await new Promise((resolve) => setImmediate(resolve));
    expect(pair.sends).toEqual([8, 8, 4]);
    while (Buffer.concat(pair.received).length < 20) await new Promise((resolve) => setTimeout(resolve, 5));
    expect([...Buffer.concat(pair.received)]).toEqual(Array.from({ length: 20 }, (_, i) => i));
  });

  it('a frame of several buffers counts once, and a later turn batches afresh', async () => {
    const pair = await socketPair();
    close = pair.close;
    const batch = new WritevBatch(pair.client, 2);
    for (let i = 0; i < 3; i++) {
      batch.beginFrame();
      pair.client.write(frame(i));
      pair.client.write(frame(100 + i));
      batch.endFrame();
    }
    expect(pair.sends).toEqual([4]);
    await new Promise((resolve) => setImmediate(resolve));
    expect(pair.sends).toEqual([4, 2]);
    batch.beginFrame();
    pair.client.write(frame(9));
    batch.endFrame();
    expect(pair.sends).toEqual([4, 2]);
    await new Promise((resolve) => setImmediate(resolve));
    expect(pair.sends).toEqual([4, 2, 1]);
  });
});
