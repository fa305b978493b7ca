/**
 * High-availability commands (docs/high-availability.md): DTL mode, graceful move, forced takeover, and
 * router drain. They change coordination or ask a router over the wire (admin ops in router/ha-service.ts).
 */
import type { Command } from 'commander';
import { dtlModes, isRouterAlive, type Coordination, type DtlMode } from '../shared/coordination.ts';
import { KeelError } from '../shared/errors.ts';
import { limits } from '../shared/limits.ts';
import { connectTool } from './router-admin.ts';
import { openCoordination, resolveDataDir, resolveRedisUrl } from './data-dir.ts';
import { printJson } from './output.ts';

interface DataOptions {
  data?: string;
  redis?: string;
  json?: boolean;
}

export function parseDtlMode(text: string): DtlMode {
  if (!dtlModes.includes(text as DtlMode)) throw KeelError.badArgument(`DTL mode must be one of ${dtlModes.join(', ')}, got '${text}'`);
  return text as DtlMode;
}

export function addHaCommands(program: Command): void {
  const volume = program.commands.find((c) => c.name() === 'volume');
  const router = program.commands.find((c) => c.name() === 'router');
  if (!volume || !router) throw new Error('addHaCommands runs after the volume and router commands');

  volume
    .command('set-dtl')
    .description('set the DTL mode of a volume: none, async or sync (the owner applies it within a second)')
    .argument('<name>')
    .argument('<mode>', 'none | async | sync')
    .option('--data <dir>', 'cluster data directory')
    .option('--redis <url>', 'Redis coordination URL (default $KEEL_REDIS_URL)')
    .action(async (name: string, modeText: string, options: DataOptions) => {
      const mode = parseDtlMode(modeText);
      const coordination = await open(options);
      for (let attempt = 0; attempt < 8; attempt++) {
        const record = await coordination.getVolume(name);
        if (!record) throw KeelError.volumeNotFound(name);
        if (await coordination.setVolumeDtl(name, record.ownerEpoch, { dtlMode: mode })) {
          console.log(`volume '${name}': DTL mode ${mode}`);
          return;
        }
      }
      throw KeelError.busy(`volume '${name}' changed owner repeatedly; try again`);
    });

  volume
    .command('move')
    .description('hand a volume over to another router, with no error for its clients (graceful)')
    .argument('<name>')
    .option('--to <router>', 'target router (default: the least loaded other live router)')
    .option('--data <dir>', 'cluster data directory')
    .option('--redis <url>', 'Redis coordination URL (default $KEEL_REDIS_URL)')
    .option('--json', 'print JSON')
    .action(async (name: string, options: DataOptions & { to?: string }) => {
      const coordination = await open(options);
      const record = await coordination.getVolume(name);
      if (!record) throw KeelError.volumeNotFound(name);
      if (!record.owner) throw KeelError.badArgument(`volume '${name}' has no owner yet: open it first`);
      const result = await askRouter<{ to: string; ownerEpoch: number; pauseMs: number }>(coordination, record.owner, { op: 'volume-move', volume: name, ...(options.to ? { to: options.to } : {}) });
      if (options.json) return printJson(result);
      console.log(`volume '${name}' moved from ${record.owner} to ${result.to} (epoch ${result.ownerEpoch}, volume paused ${result.pauseMs} ms)`);
    });

  volume
    .command('takeover')
    .description('make ROUTER take over a volume whose owner is gone; refused if acknowledged writes could be lost, unless --force')
    .argument('<name>')
    .requiredOption('--to <router>', 'the router that takes the volume')
    .option('--force', 'take it even if the DTL was not in sync (writes only the old owner held are lost)')
    .option('--data <dir>', 'cluster data directory')
    .option('--redis <url>', 'Redis coordination URL (default $KEEL_REDIS_URL)')
    .action(async (name: string, options: DataOptions & { to: string; force?: boolean }) => {
      const coordination = await open(options);
      const result = await askRouter<{ ownerEpoch: number }>(coordination, options.to, { op: 'volume-takeover', volume: name, force: options.force === true });
      console.log(`volume '${name}' is now served by ${options.to} (epoch ${result.ownerEpoch})`);
    });

  router
    .command('drain')
    .description('mark a router draining and hand all its volumes to other routers (before an upgrade)')
    .argument('<id>')
    .option('--data <dir>', 'cluster data directory')
    .option('--redis <url>', 'Redis coordination URL (default $KEEL_REDIS_URL)')
    .option('--json', 'print JSON')
    .action(async (id: string, _options: unknown, command: Command) => {
      const options = command.optsWithGlobals<DataOptions>();
      const coordination = await open(options);
      const result = await askRouter<{ moved: string[]; failed: Array<{ volume: string; error: string }> }>(coordination, id, { op: 'router-drain' });
      if (options.json) return printJson(result);
      console.log(`router ${id} is draining: moved ${result.moved.length} volume(s)${result.moved.length ? ` (${result.moved.join(', ')})` : ''}`);
      for (const failure of result.failed) console.log(`  not moved: ${failure.volume}: ${failure.error}`);
      if (result.failed.length > 0) process.exitCode = 1;
    });

  router
    .command('resume')
    .description('take a drained router back into service: it accepts volumes and DTL streams again')
    .argument('<id>')
    .option('--data <dir>', 'cluster data directory')
    .option('--redis <url>', 'Redis coordination URL (default $KEEL_REDIS_URL)')
    .action(async (id: string, _options: unknown, command: Command) => {
      const coordination = await open(command.optsWithGlobals<DataOptions>());
      const router = (await coordination.listRouters()).find((r) => r.id === id);
      if (!router) throw KeelError.routerNotFound(id);
      if (!isRouterAlive(router, Date.now(), limits.routerDeadAfterMs)) throw new KeelError('NO_OWNER', `router ${id} is not running: start it, and it comes back up`);
      if (router.state === 'up') return console.log(`router ${id} is already up`);
      await coordination.setRouterState(id, 'up');
      console.log(`router ${id} is up: it accepts volumes and DTL streams again`);
    });
}

function open(options: DataOptions): Promise<Coordination> {
  return openCoordination(resolveDataDir(options.data), resolveRedisUrl(options.redis));
}

async function askRouter<T>(coordination: Coordination, routerId: string, fields: Record<string, unknown> & { op: string }): Promise<T> {
  const router = (await coordination.listRouters()).find((r) => r.id === routerId);
  if (!router) throw KeelError.routerNotFound(routerId);
  if (!isRouterAlive(router, Date.now(), limits.routerDeadAfterMs)) throw new KeelError('NO_OWNER', `router ${routerId} is not running`);
  const client = await connectTool(router.address);
  try {
    const response = await client.request(fields);
    return JSON.parse(response.payload.toString('utf8')) as T;
  } finally {
    client.close();
  }
}
