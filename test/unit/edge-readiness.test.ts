import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { checkPortFree, waitForEdge } from '../../cli/edge-readiness.ts';
import { freePort } from '../helpers/processes.ts';

const nbdGreeting = Buffer.from('NBDMAGICIHAVEOPT\x00\x03', 'latin1');

describe('keel up: does its edge own the NBD port?', () => {
  const servers: net.Server[] = [];
  afterEach(() => {
    for (const server of servers.splice(0)) server.close();
  });

  async function serve(onConnection: (socket: net.Socket) => void): Promise<number> {
    const port = await freePort();
    const server = net.createServer((socket) => {
      socket.on('error', () => undefined);
      onConnection(socket);
    });
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
    return port;
  }

  it('a free port passes the check; a port something listens on is BAD_CONFIG', async () => {
    await expect(checkPortFree('127.0.0.1', await freePort())).resolves.toBeUndefined();
    const taken = await serve(() => undefined);
    await expect(checkPortFree('127.0.0.1', taken)).rejects.toMatchObject({ code: 'BAD_CONFIG', message: expect.stringContaining('is in use') });
  });

  it('the edge is up once the port greets with NBDMAGIC, even if it starts listening late', async () => {
    const port = await freePort();
    setTimeout(() => {
      const server = net.createServer((socket) => socket.end(nbdGreeting));
      servers.push(server);
      server.listen(port, '127.0.0.1');
    }, 300);
    await expect(waitForEdge('127.0.0.1', port, 5_000)).resolves.toBeUndefined();
  });

  it('a program that answers otherwise, or stays silent, is BAD_CONFIG; nothing at all is TIMEOUT', async () => {
    const http = await serve((socket) => socket.end('HTTP/1.1 400 Bad Request\r\n\r\n'));
    await expect(waitForEdge('127.0.0.1', http, 5_000)).rejects.toMatchObject({ code: 'BAD_CONFIG', message: expect.stringContaining("not Keel's edge") });
    const silent = await serve(() => undefined);
    await expect(waitForEdge('127.0.0.1', silent, 5_000)).rejects.toMatchObject({ code: 'BAD_CONFIG' });
    await expect(waitForEdge('127.0.0.1', await freePort(), 400)).rejects.toMatchObject({ code: 'TIMEOUT' });
  });
});
