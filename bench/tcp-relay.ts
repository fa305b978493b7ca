/**
 * A TCP relay that only copies bytes both ways (stream.pipe), one upstream connection per client. The
 * bench puts it in front of nbdkit memory as the `node-relay` baseline: what one extra Node.js process
 * hop costs on this machine with no logic at all, the floor under Keel's edge -> router path
 * (docs/benchmark.md, "Targets and how each is started").
 *
 *   node --import tsx bench/tcp-relay.ts UPSTREAM_PORT     prints "relay listening on 127.0.0.1:PORT"
 */
import net from 'node:net';

const upstreamPort = Number(process.argv[2]);
if (!Number.isInteger(upstreamPort) || upstreamPort <= 0 || upstreamPort > 65535) {
  console.error('usage: tcp-relay.ts UPSTREAM_PORT');
  process.exit(2);
}

const server = net.createServer((client) => {
  const upstream = net.connect({ host: '127.0.0.1', port: upstreamPort });
  client.setNoDelay(true);
  upstream.setNoDelay(true);
  client.pipe(upstream).pipe(client);
  const closeBoth = () => {
    client.destroy();
    upstream.destroy();
  };
  client.on('error', closeBoth).on('close', closeBoth);
  upstream.on('error', closeBoth).on('close', closeBoth);
});
server.listen(0, '127.0.0.1', () => {
  const address = server.address() as net.AddressInfo;
  console.log(`relay listening on 127.0.0.1:${address.port}`);
});
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
