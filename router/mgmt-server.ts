/**
 * The router's management HTTP server (node:http, loopback by default): GET /metrics is the Prometheus
 * exposition of the same counters (router-metrics.ts); GET /status answers JSON with
 * the router's volumes and their counters, and the backend's per-ASD and store counters, the write buffer
 * and the read cache. Its address is registered in coordination (RouterRecord.mgmtAddress) so that
 * `keel backend status` can collect every router's live counters. Read-only; every response is bounded
 * by the number of volumes (limits.volumesPerRouterMax).
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { limits } from '../shared/limits.ts';
import type { Logger } from '../shared/logger.ts';
import type { MetricsStatus, RouterMetrics } from './router-metrics.ts';

export type StatusSource = () => unknown;

export class MgmtServer {
  private constructor(
    private readonly server: http.Server,
    readonly address: string,
  ) {}

  static async listen(host: string, port: number, status: StatusSource, logger: Logger, metrics?: RouterMetrics): Promise<MgmtServer> {
    const server = http.createServer((request, response) => {
      response.setTimeout(limits.mgmtRequestTimeoutMs, () => response.destroy());
      const url = new URL(request.url ?? '/', 'http://localhost');
      if (request.method === 'GET' && url.pathname === '/metrics' && metrics) {
        metrics
          .render(status() as MetricsStatus)
          .then((text) => response.writeHead(200, { 'content-type': metrics.contentType }).end(text))
          .catch((err: unknown) => {
            logger.warn({ err }, 'metrics request failed');
            response.writeHead(500).end();
          });
        return;
      }
      if (request.method !== 'GET' || url.pathname !== '/status') {
        response.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'not found: GET /status or /metrics' }));
        return;
      }
      try {
        response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(status()));
      } catch (err) {
        logger.warn({ err }, 'status request failed');
        response.writeHead(500, { 'content-type': 'application/json' }).end(JSON.stringify({ error: (err as Error).message }));
      }
    });
    server.requestTimeout = limits.mgmtRequestTimeoutMs;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
    const address = server.address() as AddressInfo;
    return new MgmtServer(server, `${address.address}:${address.port}`);
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeAllConnections();
    await closed;
  }
}
