/**
 * `keel up`: a whole local cluster on embedded defaults — embedded coordination, N routers and one edge,
 * each its own OS process (so one can be killed or upgraded alone), a demo volume, and the NBD URI.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { VpoolConfig } from '../shared/coordination.ts';
import type { Command } from 'commander';
import { isRouterAlive, type Coordination, type VolumeRecord } from '../shared/coordination.ts';
import { acquirePidLock, runsKeelCommand } from '../shared/pid-lock.ts';
import { makeDataDir } from '../shared/coordination-embedded.ts';
import { checkLimits, limits } from '../shared/limits.ts';
import { createLogger, logProcessWarnings, type Logger } from '../shared/logger.ts';
import { formatSize, parseSize } from '../shared/sizes.ts';
import { checkScoSize, checkVolumeName, checkVolumeSize } from '../shared/volume-name.ts';
import { defaultDtlMode, leastLoadedRouter, placeableRouters } from '../shared/placement.ts';
import { loadBackendConfig, type BackendConfigModule } from './backend-loader.ts';
import { SupervisedChild } from './child-process-supervisor.ts';
import { openCoordination, resolveDataDir, resolveRedisUrl } from './data-dir.ts';
import { KeelError } from '../shared/errors.ts';
import { allowedCpus } from '../shared/cpu-affinity.ts';
import { spreadOverCpus } from '../shared/cpu-list.ts';
import { checkPortFree, waitForEdge } from './edge-readiness.ts';
import { parseRamCacheSize } from './router-commands.ts';

interface UpOptions {
  data?: string;
  routers: string;
  host: string;
  port: string;
  volume: string;
  volumeSize: string;
  scoSize: string;
  s3?: string;
  s3AccessKey?: string;
  s3SecretKey?: string;
  config?: string;
  writeBuffer?: string;
  readCache?: string;
  ramCache?: string;
  redis?: string;
  cpuAffinity: string;
}

const readyTimeoutMs = 30_000;

export function addUpCommand(program: Command): void {
  program
    .command('up')
    .description('run a whole local cluster: embedded coordination, routers, one edge, a demo volume')
    .option('--data <dir>', 'cluster data directory (default ./data or $KEEL_DATA)')
    .option('--routers <n>', 'number of router processes', '3')
    .option('--host <host>', 'address the edge listens on', '127.0.0.1')
    .option('--port <port>', 'NBD port of the edge', '10809')
    .option('--volume <name>', 'volume created if absent', 'demo')
    .option('--volume-size <size>', 'size of that volume', '8G')
    .option('--sco-size <size>', 'SCO size of that volume', '64M')
    .option('--s3 <urls>', 'backend on S3: http(s)://host:port/bucket (6 prefixes asd-1/..asd-6/ in it), or a comma-separated list of bucket URLs, one ASD each')
    .option('--s3-access-key <key>', 'S3 access key (default: $AWS_ACCESS_KEY_ID in the routers)')
    .option('--s3-secret-key <key>', 'S3 secret key (default: $AWS_SECRET_ACCESS_KEY in the routers)')
    .option('--config <file>', 'vPool settings as JSON: { "backend": { "asds": [...], "preset": {...} }, "writeBufferBytesMax": ..., "readCacheBytesMax": ... }')
    .option('--write-buffer <size>', 'write buffer bound per router (local bytes not yet on the backend)')
    .option('--read-cache <size>', 'read cache size per router')
    .option('--ram-cache <size>', 'RAM each router keeps for copies of recently read clusters (0: off)')
    .option('--redis <url>', 'coordination on Redis (redis://host:port) instead of the embedded document; default $KEEL_REDIS_URL')
    .option('--cpu-affinity <mode>', 'off: the scheduler places every process; spread: the edge on the lowest CPU (run NBD clients there too), each router on one CPU from the highest down', 'off')
    .action(async (options: UpOptions) => runUp(options));
}

async function runUp(options: UpOptions): Promise<void> {
  checkLimits();
  const routerCount = parsePositiveInt(options.routers, '--routers', 16);
  const port = parsePositiveInt(options.port, '--port', 65535);
  const volumeName = checkVolumeName(options.volume);
  const volumeSizeBytes = checkVolumeSize(parseSize(options.volumeSize));
  const scoSizeBytes = checkScoSize(parseSize(options.scoSize));
  const dataDir = resolveDataDir(options.data);
  const cpuPlan = planCpus(options.cpuAffinity, routerCount);
  const ramCacheArgs = options.ramCache === undefined ? [] : ['--ram-cache', String(parseRamCacheSize(options.ramCache))];
  await checkPortFree(options.host, port); // before any router starts: a second `keel up` fails here, at once
  await makeDataDir(dataDir);
  const lock = await acquirePidLock(path.join(dataDir, upLockFileName), `keel up on ${dataDir}`, runsKeelCommand('up'));
  try {
    await runLockedUp(options, { routerCount, port, volumeName, volumeSizeBytes, scoSizeBytes, dataDir, cpuPlan, ramCacheArgs });
  } finally {
    await lock.release();
  }
}

/** A second `keel up` on the same data directory, even on another port, would take the first one's routers' ids. */
const upLockFileName = 'keel-up.pid';

interface UpPlan {
  routerCount: number;
  port: number;
  volumeName: string;
  volumeSizeBytes: number;
  scoSizeBytes: number;
  dataDir: string;
  cpuPlan: ReturnType<typeof planCpus>;
  ramCacheArgs: string[];
}

async function runLockedUp(options: UpOptions, { routerCount, port, volumeName, volumeSizeBytes, scoSizeBytes, dataDir, cpuPlan, ramCacheArgs }: UpPlan): Promise<void> {
  const logger = createLogger('keel-up');
  logProcessWarnings(logger);
  const redisUrl = resolveRedisUrl(options.redis);
  const coordination = await openCoordination(dataDir, redisUrl, { createDataDir: true });
  const redisArgs = redisUrl ? ['--redis', redisUrl] : [];
  const vpool = await ensureVpool(coordination, dataDir, options, scoSizeBytes, logger);

  const routers = Array.from({ length: routerCount }, (_, i) => {
    const id = `r${i + 1}`;
    return new SupervisedChild(`router ${id}`, ['router', '--id', id, '--data', dataDir, ...redisArgs, ...ramCacheArgs, ...cpuArgs(cpuPlan.routers[i])], logger);
  });
  const edge = new SupervisedChild('edge', ['edge', '--data', dataDir, ...redisArgs, '--host', options.host, '--port', String(port), ...cpuArgs(cpuPlan.edge)], logger);
  const stopAll = installStopHandlers(logger, [edge, ...routers], () => markRoutersDraining(coordination, logger));

  let volume: VolumeRecord;
  try {
    for (const router of routers) router.start();
    await waitForRouters(coordination, routers);
    volume = await ensureVolume(coordination, volumeName, volumeSizeBytes, scoSizeBytes);
    edge.start();
    await waitForEdge(options.host, port, readyTimeoutMs);
  } catch (err) {
    await stopAll.stop('start failed'); // no orphaned routers or edge behind the error
    throw err;
  }

  const uri = `nbd://${options.host}:${port}/${volumeName}`;
  console.log('');
  console.log(`Keel is up: ${routerCount} routers and an edge, data in ${dataDir}`);
  console.log(`  backend: ${vpool}`);
  console.log(`  CPUs: ${describeCpuPlan(cpuPlan)}`);
  console.log(`  volume '${volumeName}' (${formatSize(volume.sizeBytes)}) at ${uri}`);
  console.log(`  try:  nbdinfo ${uri}`);
  console.log(`        qemu-img convert -n -O raw disk.img ${uri}`);
  console.log(`        fio --name=t --ioengine=nbd --uri=${uri} --rw=randwrite --bs=4k --iodepth=32 --size=1G`);
  console.log('Ctrl-C stops the cluster; `keel up` again finds the data.');
  await stopAll.done;
}

/**
 * The vPool (backend ASDs + preset, write buffer, read cache) is set once, before any router starts:
 * routers read it at start. An existing vPool is kept (its data lives there).
 */
async function ensureVpool(coordination: Coordination, dataDir: string, options: UpOptions, scoSizeBytes: number, logger: Logger): Promise<string> {
  const backendConfig = await loadBackendConfig();
  const { checkWriteBufferHoldsTlog, defaultDirectoryBackend, openVpoolBackend, parseVpoolDataSettings, s3Backend } = backendConfig;
  const existing = await coordination.getVpool();
  if (existing?.backend) {
    if (options.s3 || options.config || options.writeBuffer || options.readCache)
      logger.warn('the vPool is already configured in this data directory: --s3/--config/--write-buffer/--read-cache are ignored');
    return summarizeVpool(existing, backendConfig);
  }
  let config: VpoolConfig = { name: 'default' };
  if (options.config) {
    let raw: unknown;
    try {
      raw = JSON.parse(await readFile(options.config, 'utf8'));
    } catch (err) {
      throw KeelError.badConfig(`--config ${options.config}: ${(err as Error).message}`);
    }
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw KeelError.badConfig(`--config ${options.config}: must be a JSON object`);
    config = { ...config, ...(raw as Record<string, unknown>) };
  }
  if (options.s3) {
    if ((options.s3AccessKey === undefined) !== (options.s3SecretKey === undefined))
      throw KeelError.badArgument('give both --s3-access-key and --s3-secret-key, or neither (environment)');
    const credentials = options.s3AccessKey ? { accessKeyId: options.s3AccessKey, secretAccessKey: options.s3SecretKey! } : undefined;
    config.backend = s3Backend(options.s3.split(',').map((u) => u.trim()).filter(Boolean), credentials);
  }
  config.backend ??= defaultDirectoryBackend(dataDir);
  if (options.writeBuffer) config.writeBufferBytesMax = parseSize(options.writeBuffer);
  if (options.readCache) config.readCacheBytesMax = parseSize(options.readCache);
  openVpoolBackend(config); // validates everything, credentials included, before anything is stored
  checkWriteBufferHoldsTlog(parseVpoolDataSettings(config).writeBufferBytesMax, scoSizeBytes);
  await coordination.setVpool(config);
  return summarizeVpool(config, backendConfig);
}

function summarizeVpool(vpool: VpoolConfig, { describeBackend, openVpoolBackend, parseVpoolDataSettings }: BackendConfigModule): string {
  const backend = describeBackend(openVpoolBackend(vpool).config);
  const asds = backend.asds as Array<{ type: string }>;
  const preset = backend.preset as { k?: number; m?: number };
  const settings = parseVpoolDataSettings(vpool);
  return `${asds.length} ${asds[0]?.type} ASDs, preset ${preset.k ?? 4}+${preset.m ?? 2}, write buffer ${formatSize(settings.writeBufferBytesMax)}`;
}

/**
 * A router stopped with SIGTERM hands its volumes to other routers (rolling upgrade). When the whole
 * cluster stops there is nowhere to go: marking every router draining first makes each stop at once.
 */
async function markRoutersDraining(coordination: Coordination, logger: Logger): Promise<void> {
  const routers = await coordination.listRouters().catch(() => []);
  await Promise.all(routers.map((r) => coordination.setRouterState(r.id, 'draining').catch((err) => logger.warn({ err, router: r.id }, 'could not mark the router draining'))));
}

function installStopHandlers(
  logger: Logger,
  children: SupervisedChild[],
  beforeStop: () => Promise<void>,
): { done: Promise<void>; stop: (reason: string) => Promise<void> } {
  let stopping = false;
  let finish!: () => void;
  const done = new Promise<void>((resolve) => (finish = resolve));
  const stop = async (reason: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ reason }, 'stopping the cluster');
    for (const child of children) child.holdRestarts();
    await beforeStop();
    // Edge first, so that clients see a clean disconnect rather than errors from vanished routers.
    for (const child of children) await child.stop();
    logger.info('cluster stopped');
    finish();
  };
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));
  return { done, stop };
}

async function waitForRouters(coordination: Coordination, routers: SupervisedChild[]): Promise<void> {
  const deadline = Date.now() + readyTimeoutMs;
  while (Date.now() < deadline) {
    const records = await coordination.listRouters();
    const ready = routers.every((child) =>
      records.some((r) => r.pid === child.pid && r.state === 'up' && isRouterAlive(r, Date.now(), limits.routerDeadAfterMs)),
    );
    if (ready) return;
    if (routers.some((r) => r.status === 'failed')) break;
    await sleep(100);
  }
  throw KeelError.timeout('waiting for the routers to register', readyTimeoutMs);
}

/** The volume `keel up` serves: the existing one (its size stays), else a new one. */
async function ensureVolume(coordination: Coordination, name: string, sizeBytes: number, scoSizeBytes: number): Promise<VolumeRecord> {
  const existing = await coordination.getVolume(name);
  if (existing) return existing;
  const registered = await coordination.listRouters();
  const routers = placeableRouters(registered, Date.now());
  const owner = leastLoadedRouter(routers, await coordination.listVolumes())?.id;
  const dtlMode = defaultDtlMode(routers.length, registered.length);
  return coordination.createVolume({ name, sizeBytes, scoSizeBytes, owner, ...(dtlMode ? { dtlMode } : {}) }, Date.now());
}

function parsePositiveInt(text: string, name: string, max: number): number {
  const value = Number(text);
  if (!Number.isInteger(value) || value < 1 || value > max) throw KeelError.badArgument(`${name} must be a whole number from 1 to ${max}, got '${text}'`);
  return value;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface CpuPlan {
  edge: number | undefined;
  routers: Array<number | undefined>;
}

/**
 * With `spread` (docs/cpu-affinity.md), the edge gets the lowest CPU, where its NBD clients should run
 * too, and each router one CPU in turn from the highest down: on 2 CPUs the edge and r2 run on CPU 0,
 * r1 and r3 on CPU 1.
 */
function planCpus(mode: string, routerCount: number): CpuPlan {
  if (mode !== 'spread' && mode !== 'off') throw KeelError.badArgument(`--cpu-affinity must be spread or off, not '${mode}'`);
  const cpus = mode === 'spread' ? (allowedCpus() ?? []) : [];
  const routers = spreadOverCpus(routerCount, [...cpus].reverse());
  return { edge: routers[0] === undefined ? undefined : cpus[0], routers };
}

function cpuArgs(cpu: number | undefined): string[] {
  return cpu === undefined ? [] : ['--cpus', String(cpu)];
}

function describeCpuPlan(plan: CpuPlan): string {
  const routers = plan.routers[0] === undefined ? 'routers not pinned' : plan.routers.map((cpu, i) => `r${i + 1} on ${cpu}`).join(', ');
  return `${routers}; edge ${plan.edge === undefined ? 'not pinned' : `on ${plan.edge}`}`;
}
