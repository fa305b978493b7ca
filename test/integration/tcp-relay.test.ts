/**
 * The bench's Node relay baseline (bench/tcp-relay.ts) as a real process: bytes go both ways unchanged,
 * a bad argument is refused, and SIGTERM stops it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';

const relayScript = fileURLToPath(new URL('../../bench/tcp-relay.ts', import.meta.url));
const children: ChildProcess[] = [];
const servers: net.Server[] = [];

afterEach(() => {
  for (const child of children.splice(0)) child.kill('SIGKILL');
  for (const server of servers.splice(0)) server.close();
});

function startRelay(arg: string): { child: ChildProcess; port: Promise<number>; exited: Promise<number | null> } {
  const child = spawn(process.execPath, ['--import', 'tsx', relayScript, arg], { cwd: path.dirname(relayScript), stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let output = '';
  const port = new Promise<number>((resolve) => {
    child.stdout!.on('data', (chunk: Buffer) => {
      output += chunk.toString();
      const match = /relay listening on 127\.0\.0\.1:(\d+)/.exec(output);
      if (match) resolve(Number(match[1]));
    });
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, port, exited };
}

describe('bench/tcp-relay.ts', () => {
  it('relays bytes both ways unchanged and stops on SIGTERM', async () => {
    // Upstream: answers every chunk with its bytes reversed, so the reply proves a round trip.
    const upstream = net.createServer((socket) => socket.on('data', (chunk) => socket.write(Buffer.from(chunk).reverse())));
    servers.push(upstream);
    await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
    const relay = startRelay(String((upstream.address() as net.AddressInfo).port));
    const client = net.connect({ host: '127.0.0.1', port: await relay.port });
    const reply = await new Promise<Buffer>((resolve) => {
      client.once('connect', () => client.write('hello relay'));
      client.once('data', resolve);
    });
    expect(reply.toString()).toBe('yaler olleh');
    client.destroy();
    relay.child.kill('SIGTERM');
    expect(await relay.exited).toBe(0);
  }, 20_000);

  it('refuses a port that is not one', async () => {
    const relay = startRelay('not-a-port');
    expect(await relay.exited).toBe(2);
  }, 20_000);
});
