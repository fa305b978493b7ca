/**
 * The edge process: an NBD server whose exports are Keel volumes; every request goes to the volume's
 * owning router over the wire protocol. SIGTERM/SIGINT: close client connections and exit 0.
 */
import { openCoordination } from '../shared/coordination-factory.ts';
import { pinThisProcess } from '../shared/cpu-affinity.ts';
import { checkLimits } from '../shared/limits.ts';
import { createLogger, logProcessWarnings } from '../shared/logger.ts';
import { waitForStopSignal } from '../shared/stop-signal.ts';
import { warnIfUntuned } from '../shared/v8-tuning.ts';
import { TcpTransport } from '../shared/wire/tcp-transport.ts';
import { NbdServer } from './nbd-server.ts';
import { CoordinationOwnerLocator } from './owner-locator.ts';
import { VolumeResolver } from './volume-resolver.ts';

export interface EdgeOptions {
  dataDir: string;
  /** Redis coordination URL; none means the embedded document under dataDir. */
  redisUrl?: string;
  host: string;
  port: number;
  defaultExport?: string;
  /** CPUs to pin the process to (docs/cpu-affinity.md); none: wherever the scheduler puts it. */
  cpus?: number[];
}

export async function runEdge(options: EdgeOptions): Promise<void> {
  checkLimits();
  const logger = createLogger('edge');
  logProcessWarnings(logger);
  warnIfUntuned('edge', logger);
  if (options.cpus !== undefined) await pinThisProcess(options.cpus, logger);
  const coordination = await openCoordination({ dataDir: options.dataDir, redisUrl: options.redisUrl, logger });
  const resolver = new VolumeResolver(coordination, new CoordinationOwnerLocator(coordination), new TcpTransport(), logger);
  const server = new NbdServer({ resolver, logger, host: options.host, port: options.port, defaultExport: options.defaultExport });
  await server.start();
  logger.info({ host: options.host, port: server.port }, 'edge up');
  const reason = await waitForStopSignal();
  logger.info({ reason }, 'edge stopping');
  await server.stop();
  await coordination.close();
  logger.info('edge stopped');
  logger.flush();
}
