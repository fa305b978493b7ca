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

/** Writes frames `from..to-1` through the batch, each as `parts` one-byte buffers. */
function writeFrames(batch: WritevBatch, socket: net.Socket, from: number, to: number, parts = 1, afterEach?: (i: number) => void) {
  for (let i = from; i < to; i++) {
    batch.beginFrame();
    for (let part = 0; part < parts; part++) socket.write(Buffer.from([i + 100 * part]));
    batch.endFrame();
    afterEach?.(i);
  }
}

const endOfTurn = () => new Promise((resolve) => setImmediate(resolve));

describe('WritevBatch', () => {
  let pair: Awaited<ReturnType<typeof socketPair>> | undefined;
  afterEach(() => pair?.close());

  it('holds the frames of one turn for one writev at the end of the turn', async () => {
    pair = await socketPair();
    writeFrames(new WritevBatch(pair.client, 8), pair.client, 0, 5);
    expect(pair.sends).toEqual([]); // nothing left yet: the socket is corked until the turn ends
    await endOfTurn();
    expect(pair.sends).toEqual([5]);
  });

  it('sends every framesMax frames mid-turn, then the rest at the end of the turn, in order', async () => {
    const { client, sends, received } = (pair = await socketPair());
    writeFrames(new WritevBatch(client, 8), client, 0, 20, 1, (i) => {
      if (i === 7) expect(sends).toEqual([8]);
    });
    expect(sends).toEqual([8, 8]);
    await endOfTurn();
    expect(sends).toEqual([8, 8, 4]);
    while (Buffer.concat(received).length < 20) await new Promise((resolve) => setTimeout(resolve, 5));
    expect([...Buffer.concat(received)]).toEqual(Array.from({ length: 20 }, (_, i) => i));
  });

  it('a frame of several buffers counts once, and a later turn batches afresh', async () => {
    pair = await socketPair();
    const batch = new WritevBatch(pair.client, 2);
    writeFrames(batch, pair.client, 0, 3, 2);
    expect(pair.sends).toEqual([4]);
    await endOfTurn();
    expect(pair.sends).toEqual([4, 2]);
    writeFrames(batch, pair.client, 9, 10);
    expect(pair.sends).toEqual([4, 2]);
    await endOfTurn();
    expect(pair.sends).toEqual([4, 2, 1]);
  });

  it('flush sends the frames held so far at once, and the end of the turn then has nothing to send', async () => {
    pair = await socketPair();
    const batch = new WritevBatch(pair.client, 8);
    writeFrames(batch, pair.client, 0, 3);
    batch.flush();
    expect(pair.sends).toEqual([3]);
    await endOfTurn();
    expect(pair.sends).toEqual([3]);
  });
});
