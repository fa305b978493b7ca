/**
 * Whether `keel up`'s edge owns its NBD port. The port is checked free before anything starts (a second
 * `keel up` on the same port fails at once), and the cluster counts as up only once the port greets as
 * an NBD server: another program that took the port in between is an error, not a cluster that is up.
 */
import net from 'node:net';
import { NBD_INIT_MAGIC_HI, NBD_INIT_MAGIC_LO } from '../edge/nbd-protocol.ts';
import { KeelError } from '../shared/errors.ts';

/** An NBD server greets at once; a listener silent this long is some other program. */
const greetingTimeoutMs = 2_000;
const probeIntervalMs = 100;

/** BAD_CONFIG when something already listens on host:port. */
export async function checkPortFree(host: string, port: number): Promise<void> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(
        err.code === 'EADDRINUSE'
          ? KeelError.badConfig(`${host}:${port} is in use (another keel up or NBD server?): stop it or choose another --port`)
          : KeelError.badConfig(`cannot listen on ${host}:${port}: ${err.message}`),
      ),
    );
    server.listen(port, host, () => server.close(() => resolve()));
  });
}

/** Resolves once host:port greets as NBD; BAD_CONFIG if something else answers, TIMEOUT if nothing does. */
export async function waitForEdge(host: string, port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const answer = await probeNbdGreeting(host, port);
    if (answer === 'nbd') return;
    if (answer === 'other') {
      throw KeelError.badConfig(`${host}:${port} is answered by a program that is not Keel's edge (no NBD greeting): choose another --port`);
    }
    await new Promise((resolve) => setTimeout(resolve, probeIntervalMs));
  }
  throw KeelError.timeout(`waiting for the edge on ${host}:${port}`, timeoutMs);
}

/** 'nbd' when the port greets with NBDMAGIC, 'none' when nothing listens, 'other' for anything else. */
function probeNbdGreeting(host: string, port: number): Promise<'nbd' | 'none' | 'other'> {
  return new Promise((resolve) => {
    let connected = false;
    let received = Buffer.alloc(0);
    const socket = net.connect({ host, port }, () => (connected = true));
    const done = (answer: 'nbd' | 'none' | 'other') => {
      socket.destroy();
      clearTimeout(timer);
      resolve(answer);
    };
    const timer = setTimeout(() => done(connected ? 'other' : 'none'), greetingTimeoutMs);
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (received.length < 8) return;
      const nbd = received.readUInt32BE(0) === NBD_INIT_MAGIC_HI && received.readUInt32BE(4) === NBD_INIT_MAGIC_LO;
      done(nbd ? 'nbd' : 'other');
    });
    socket.once('error', () => done(connected ? 'other' : 'none'));
    socket.once('close', () => done(connected ? 'other' : 'none'));
  });
}
