/**
 * The router process: serves the wire protocol to edges, owns volumes (one VolumeDriver each), heartbeats
 * to coordination and follows it (resize, delete, ownership). SIGTERM/SIGINT: stop accepting, flush and
 * close every volume, mark the router down, exit 0.
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { EmbeddedCoordination } from '../shared/coordination-embedded.ts';
import type { Coordination, RouterState } from '../shared/coordination.ts';
import { checkLimits, limits } from '../shared/limits.ts';
import { createLogger, type Logger } from '../shared/logger.ts';
import { RpcServer } from '../shared/wire/rpc-server.ts';
import { formatAddress } from '../shared/wire/tcp-transport.ts';
import { TcpTransport } from '../shared/wire/tcp-transport.ts';
import { waitForStopSignal } from '../shared/stop-signal.ts';
import { createVolumeService } from './volume-service.ts';
import { VolumeRegistry } from './volume-registry.ts';

export interface RouterOptions {
  id: string;
  dataDir: string;
  host: string;
  port: number;
}

export async function runRouter(options: RouterOptions): Promise<void> {
  checkLimits();
  const logger = createLogger('router', { router: options.id });
  const coordination = await EmbeddedCoordination.open(options.dataDir);
  const routerDir = path.join(options.dataDir, 'routers', options.id);
  await mkdir(routerDir, { recursive: true });

  const registry = new VolumeRegistry(options.id, routerDir, coordination, logger);
  await registry.openOwnedVolumes();

  const server = new RpcServer({ transport: new TcpTransport(), handler: createVolumeService(registry, logger), logger, routerId: options.id });
  const address = await server.listen(formatAddress(options.host, options.port));
  const startedAtMs = Date.now();
  await coordination.registerRouter({ id: options.id, address, pid: process.pid, startedAtMs, heartbeatAtMs: startedAtMs, state: 'up' });
  logger.info({ address, dataDir: options.dataDir }, 'router up');

  const ticker = startHeartbeat(options.id, coordination, registry, logger);
  const reason = await waitForStopSignal();
  logger.info({ reason }, 'router stopping');
  clearInterval(ticker);
  await server.close();
  await registry.closeAll();
  await setState(coordination, options.id, 'down', logger);
  logger.info('router stopped');
  logger.flush();
}

function startHeartbeat(id: string, coordination: Coordination, registry: VolumeRegistry, logger: Logger): NodeJS.Timeout {
  let busy = false; // never stack heartbeats behind a slow coordination store
  return setInterval(async () => {
    if (busy) return;
    busy = true;
    try {
      await coordination.heartbeat(id, Date.now());
      await registry.reconcile();
    } catch (err) {
      logger.warn({ err }, 'heartbeat or reconcile failed');
    } finally {
      busy = false;
    }
  }, limits.heartbeatIntervalMs);
}

async function setState(coordination: Coordination, id: string, state: RouterState, logger: Logger): Promise<void> {
  await coordination.setRouterState(id, state).catch((err) => logger.warn({ err }, 'could not record router state'));
}
