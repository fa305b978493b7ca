import type { Command } from 'commander';
import { parseCpuList } from '../shared/cpu-list.ts';
import { resolveDataDir, resolveRedisUrl } from './data-dir.ts';
import { parsePort } from './parse-port.ts';

export function addEdgeCommand(program: Command): void {
  program
    .command('edge')
    .description('run an edge: serves volumes over NBD and forwards I/O to the routers')
    .option('--data <dir>', 'cluster data directory (default ./data or $KEEL_DATA)')
    .option('--redis <url>', 'Redis coordination URL (default $KEEL_REDIS_URL; none: embedded, under --data)')
    .option('--host <host>', 'address to listen on for NBD clients', '127.0.0.1')
    .option('--port <port>', 'NBD port', '10809')
    .option('--default-export <name>', 'export served to clients that ask for the empty name')
    .option('--cpus <list>', 'pin the edge to these CPUs, e.g. 0 or 0-3,6 (default: not pinned)')
    .action(async (options: { data?: string; redis?: string; host: string; port: string; defaultExport?: string; cpus?: string }) => {
      const cpus = options.cpus === undefined ? undefined : parseCpuList(options.cpus, '--cpus');
      const { runEdge } = await import('../edge/main.ts'); // loaded only when running an edge
      await runEdge({ dataDir: resolveDataDir(options.data), redisUrl: resolveRedisUrl(options.redis), host: options.host, port: parsePort(options.port), defaultExport: options.defaultExport, cpus });
    });
}
