/**
 * The router process: serves the wire protocol to edges, owns volumes (one VolumeDriver each), heartbeats
 * to coordination and follows it (resize, delete, ownership). SIGTERM/SIGINT: stop accepting, flush and
 * close every volume, mark the router down, exit 0.
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { isKeelError } from '../shared/errors.ts';
import { acquirePidLock, runsKeelCommand } from '../shared/pid-lock.ts';
import { openCoordination } from '../shared/coordination-factory.ts';
import type { Coordination, RouterState } from '../shared/coordination.ts';
import { BufferPool } from '../shared/buffer-pool.ts';
import { processInlineIoGate } from '../shared/inline-io-gate.ts';
import { checkLimits, limits } from '../shared/limits.ts';
import { createLogger, logProcessWarnings, type Logger } from '../shared/logger.ts';
import { RpcServer } from '../shared/wire/rpc-server.ts';
import { formatAddress } from '../shared/wire/tcp-transport.ts';
import { TcpTransport } from '../shared/wire/tcp-transport.ts';
import { waitForStopSignal } from '../shared/stop-signal.ts';
import { pinThisProcess } from '../shared/cpu-affinity.ts';
import { warnIfUntuned } from '../shared/v8-tuning.ts';
import { openVpoolBackend, parseVpoolDataSettings, describeBackend, type VpoolBackend } from '../backend/backend-config.ts';
import { MgmtServer } from './mgmt-server.ts';
import { RouterMetrics } from './router-metrics.ts';
import { ReadCache } from './read-cache.ts';
import type { RouterBackend } from './volume-backend.ts';
import { createVolumeService } from './volume-service.ts';
import { SnapshotService } from './snapshot-service.ts';
import { VolumeRegistry } from './volume-registry.ts';
import { WriteBuffer } from './write-buffer.ts';
import { ClusterRamCache } from './cluster-ram-cache.ts';
import { DtlStore } from './dtl-store.ts';
import { withHaOps } from './ha-service.ts';
import { VolumeHa } from './volume-ha.ts';
import { dtlRecordSlabPool } from './dtl-record-arena.ts';
import { scoUploadBufferStats } from './sco-uploader.ts';
import { processDirectWriteStaging } from '../backend/direct-write.ts';

export interface RouterOptions {
  id: string;
  dataDir: string;
  host: string;
  port: number;
  /** Redis coordination URL; none: the embedded document under dataDir. */
  redisUrl?: string;
  /** CPUs to pin the process to (docs/cpu-affinity.md); none: wherever the scheduler puts it. */
  cpus?: number[];
  /** Bytes of the RAM tier of cluster data (router/cluster-ram-cache.ts); default limits.ramCacheBytesDefault, 0: off. */
  ramCacheBytes?: number;
}

export async function runRouter(options: RouterOptions): Promise<void> {
  checkLimits();
  const logger = createLogger('router', { router: options.id });
  logProcessWarnings(logger);
  warnIfUntuned('router', logger);
  if (options.cpus !== undefined) await pinThisProcess(options.cpus, logger);
  const coordination = await openCoordination({ dataDir: options.dataDir, redisUrl: options.redisUrl, logger: logger.child({ component: 'coordination' }) });
  const routerDir = path.join(options.dataDir, 'routers', options.id);
  await mkdir(routerDir, { recursive: true });
  // A second router with this id would fence this one's volumes and append to its SCOs and DTL segments.
  const lock = await acquirePidLock(path.join(routerDir, 'router.pid'), `router ${options.id} on ${options.dataDir}`, runsKeelCommand('router', { '--id': options.id }));

  const { backend, vpoolBackend } = await openRouterBackend(coordination, routerDir, logger);
  const ramCache = new ClusterRamCache(options.ramCacheBytes ?? limits.ramCacheBytesDefault);
  const registry = new VolumeRegistry(options.id, routerDir, coordination, logger, backend, ramCache);
  const transport = new TcpTransport();
  const ha = new VolumeHa(options.id, registry, coordination, transport, logger.child({ component: 'ha' }), backend !== undefined);
  registry.lifecycle = ha;
  const dtl = await DtlStore.open(path.join(routerDir, 'dtl'), logger.child({ component: 'dtl' }));
  const snapshots = new SnapshotService(registry, coordination, options.id, logger.child({ component: 'snapshots' })); // before any volume opens: clones need their underlay
  const replyBuffers = new BufferPool();
  let server: RpcServer | undefined; // listens below, once the mgmt server is up
  const mgmt = await MgmtServer.listen(options.host, 0, () => ({ ...(routerStatus(options.id, registry, backend, vpoolBackend) as object), ha: ha.stats(), dtl: dtl.stats(), ramCache: ramCache.stats(), inlineIo: processInlineIoGate.stats(), replyBuffers: replyBuffers.stats(), wireGatherBuffers: server?.gatherPoolStats(), wireFrameBytes: server?.frameBudgetStats(), wireConnections: server && { open: server.connectionCount, refused: server.refusedConnectionCount }, dtlSlabs: dtlRecordSlabPool.stats(), uploadBuffers: scoUploadBufferStats(), directWriteStaging: processDirectWriteStaging.stats() }), logger, new RouterMetrics(options.id));

  snapshots.startBackgroundScrubber();
  const drain = async () => {
    await setState(coordination, options.id, 'draining', logger);
    return ha.drain();
  };
  const handler = withHaOps(createVolumeService(registry, logger, snapshots, replyBuffers), { dtl, ha, drain });
  server = new RpcServer({ transport, handler, logger, routerId: options.id });
  const address = await server.listen(formatAddress(options.host, options.port));
  const startedAtMs = Date.now();
  const register = () => coordination.registerRouter({ id: options.id, address, mgmtAddress: mgmt.address, pid: process.pid, startedAtMs, heartbeatAtMs: Date.now(), state: 'up' });
  await register();
  logger.info({ address, mgmtAddress: mgmt.address, dataDir: options.dataDir }, 'router up');

  const ticker = startHeartbeat(options.id, coordination, registry, ha, logger, register);
  // After listening and heartbeating: see openOwnedVolumes. A programmer error in it still crashes the process.
  void registry.openOwnedVolumes().then((opened) => logger.info(opened, 'owned volumes opened'));
  const reason = await waitForStopSignal();
  logger.info({ reason }, 'router stopping');
  registry.stopOpening(); // volumes not opened yet stay closed: a hung backend made a stop take 6 minutes
  snapshots.stopBackgroundScrubber();
  // A rolling upgrade: hand every volume to another router first, so edges switch without an error.
  if (backend) {
    const drained = await drain().catch((err) => logger.error({ err }, 'drain failed'));
    logger.info({ ...drained }, 'volumes handed over before the stop');
  }
  ticker.stop();
  await server.close();
  await registry.closeAll();
  await dtl.close();
  await mgmt.close();
  await backend?.readCache.close();
  await setState(coordination, options.id, 'down', logger);
  await coordination.close();
  await lock.release();
  logger.info('router stopped');
  logger.flush();
}

/**
 * Heartbeat and reconcile run on separate loops: a reconcile that closes a fenced volume may wait for its
 * uploads (uploadDrainOnCloseMs), and the heartbeat must not stall meanwhile, or this router would look
 * dead and its other volumes be taken over.
 */
function startHeartbeat(id: string, coordination: Coordination, registry: VolumeRegistry, ha: VolumeHa, logger: Logger, register: () => Promise<void>): { stop(): void } {
  let beating = false; // never stack heartbeats behind a slow coordination store
  let reconciling = false;
  const heartbeat = setInterval(async () => {
    if (beating) return;
    beating = true;
    await coordination.heartbeat(id, Date.now()).catch(async (err: unknown) => {
      logger.warn({ err }, 'heartbeat failed');
      // Our record is gone (coordination lost its state): register again, or edges never find us.
      if (isKeelError(err, 'ROUTER_NOT_FOUND')) await register().then(() => logger.warn('router registered again'), (again: unknown) => logger.warn({ err: again }, 'registering again failed'));
    });
    beating = false;
  }, limits.heartbeatIntervalMs);
  const reconcile = setInterval(async () => {
    if (reconciling) return;
    reconciling = true;
    try {
      await registry.reconcile();
      await ha.reconcileModes(await coordination.listVolumes());
    } catch (err) {
      logger.warn({ err }, 'reconcile failed');
    } finally {
      reconciling = false;
    }
  }, limits.heartbeatIntervalMs);
  return {
    stop: () => {
      clearInterval(heartbeat);
      clearInterval(reconcile);
    },
  };
}

async function setState(coordination: Coordination, id: string, state: RouterState, logger: Logger): Promise<void> {
  await coordination.setRouterState(id, state).catch((err) => logger.warn({ err }, 'could not record router state'));
}

/** The vPool's backend, write buffer and read cache; none when the vPool has no backend (local disk only). */
async function openRouterBackend(
  coordination: Coordination,
  routerDir: string,
  logger: Logger,
): Promise<{ backend?: RouterBackend; vpoolBackend?: VpoolBackend }> {
  const vpool = await coordination.getVpool();
  if (!vpool?.backend) {
    logger.warn('the vPool has no backend: volumes live on local disk only');
    return {};
  }
  const vpoolBackend = openVpoolBackend(vpool, logger.child({ component: 'backend' }));
  const settings = parseVpoolDataSettings(vpool);
  const writeBuffer = new WriteBuffer({ bytesMax: settings.writeBufferBytesMax, logger: logger.child({ component: 'write-buffer' }) });
  const readCache = await ReadCache.open(path.join(routerDir, 'read-cache'), settings.readCacheBytesMax);
  logger.info({ backend: describeBackend(vpoolBackend.config), ...settings }, 'backend configured');
  return { backend: { store: vpoolBackend.store, asds: vpoolBackend.asds, writeBuffer, readCache }, vpoolBackend };
}

function routerStatus(id: string, registry: VolumeRegistry, backend: RouterBackend | undefined, vpoolBackend: VpoolBackend | undefined): unknown {
  return {
    routerId: id,
    pid: process.pid,
    volumes: registry.list(),
    volumesOpening: registry.openingNames(),
    ...(backend && vpoolBackend
      ? {
          backend: {
            asds: vpoolBackend.store.asdStats(),
            store: vpoolBackend.store.stats(),
            writeBuffer: backend.writeBuffer.stats(),
            readCache: backend.readCache.stats(),
          },
        }
      : {}),
  };
}
