import type { Command } from 'commander';
import { totalmem } from 'node:os';
import { KeelError } from '../shared/errors.ts';
import { formatSize, parseSize } from '../shared/sizes.ts';
import { isRouterAlive } from '../shared/coordination.ts';
import { parseCpuList } from '../shared/cpu-list.ts';
import { limits } from '../shared/limits.ts';
import { openCoordination, resolveDataDir, resolveRedisUrl } from './data-dir.ts';
import { printJson, printTable } from './output.ts';
import { parsePort } from './parse-port.ts';
import { checkRouterId } from '../shared/volume-name.ts';

export function addRouterCommands(program: Command): void {
  const router = program
    .command('router')
    .description('run a storage router, or list the routers')
    .option('--id <id>', 'router id, unique in the cluster')
    .option('--data <dir>', 'cluster data directory (default ./data or $KEEL_DATA)')
    .option('--host <host>', 'address to listen on for edges', '127.0.0.1')
    .option('--port <port>', 'wire protocol port (0 picks a free one)', '0')
    .option('--redis <url>', 'Redis coordination URL (default $KEEL_REDIS_URL; none: embedded, under --data)')
    .option('--cpus <list>', 'pin the router to these CPUs, e.g. 1 or 2-5 (default: not pinned)')
    .option('--ram-cache <size>', `RAM kept for copies of recently read clusters, e.g. 1G; 0 turns it off (default ${formatSize(limits.ramCacheBytesDefault)})`)
    .action(async (options: { id?: string; data?: string; host: string; port: string; redis?: string; cpus?: string; ramCache?: string }) => {
      if (!options.id) {
        router.help({ error: true });
      }
      checkRouterId(options.id!);
      const cpus = options.cpus === undefined ? undefined : parseCpuList(options.cpus, '--cpus');
      const ramCacheBytes = options.ramCache === undefined ? undefined : parseRamCacheSize(options.ramCache);
      const { runRouter } = await import('../router/main.ts'); // loaded only when running a router
      await runRouter({ id: options.id!, dataDir: resolveDataDir(options.data), host: options.host, port: parsePort(options.port), redisUrl: resolveRedisUrl(options.redis), cpus, ramCacheBytes });
    });

  router
    .command('list')
    .description('list routers, their state and the volumes each owns')
    .option('--data <dir>', 'cluster data directory')
    .option('--redis <url>', 'Redis coordination URL (default $KEEL_REDIS_URL)')
    .option('--json', 'print JSON')
    .action(async (_options: unknown, command: Command) => {
      // `--data` may land on the parent `router` command, which has the same option for running a router.
      const options = command.optsWithGlobals<{ data?: string; redis?: string; json?: boolean }>();
      const coordination = await openCoordination(resolveDataDir(options.data), resolveRedisUrl(options.redis));
      const [routers, volumes] = await Promise.all([coordination.listRouters(), coordination.listVolumes()]);
      const nowMs = Date.now();
      const rows = routers.map((r) => ({
        id: r.id,
        address: r.address,
        state: r.state === 'up' && !isRouterAlive(r, nowMs, limits.routerDeadAfterMs) ? 'unreachable' : r.state,
        pid: r.pid,
        mgmtAddress: r.mgmtAddress ?? '-',
        volumes: volumes.filter((v) => v.owner === r.id).map((v) => v.name).join(',') || '-',
      }));
      if (options.json) return printJson(rows);
      printTable(rows, ['id', 'address', 'state', 'pid', 'volumes']);
    });
}

/** `--ram-cache`: 0 (off), or at least one slab and at most half of this machine's memory. */
export function parseRamCacheSize(text: string): number {
  const bytes = parseSize(text);
  if (bytes === 0) return 0;
  if (bytes < limits.ramCacheSlabBytes) throw KeelError.badArgument(`--ram-cache ${text}: at least ${formatSize(limits.ramCacheSlabBytes)}, or 0 to turn it off`);
  const machineBytes = totalmem();
  if (bytes > machineBytes / 2) throw KeelError.badArgument(`--ram-cache ${text}: more than half of this machine's ${formatSize(machineBytes)} of memory`);
  return bytes;
}
