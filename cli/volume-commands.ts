import type { Command } from 'commander';
import { ownerHasFailed, volumeDtlMode, type VolumeRecord } from '../shared/coordination.ts';
import { KeelError } from '../shared/errors.ts';
import { formatSize, parseSize } from '../shared/sizes.ts';
import { checkScoSize, checkVolumeName, checkVolumeSize } from '../shared/volume-name.ts';
import { defaultDtlMode, leastLoadedRouter, placeableRouters } from '../shared/placement.ts';
import { openCoordination, resolveDataDir, resolveRedisUrl } from './data-dir.ts';
import { printJson, printTable } from './output.ts';
import { volumeUsage, type VolumeUsage } from './router-status.ts';
import { volumeAdmin } from './router-admin.ts';
import { parseDtlMode } from './ha-commands.ts';
import { refuseIfCloned } from './snapshot-commands.ts';

interface DataOptions {
  data?: string;
  redis?: string;
}

export function addVolumeCommands(program: Command): void {
  const volume = program.command('volume').description('create, list, inspect, resize and delete volumes');

  volume
    .command('create')
    .description('create a thin-provisioned volume')
    .argument('<name>', 'volume name (also the NBD export name)')
    .argument('<size>', 'size, e.g. 10G, 512M, 1T')
    .option('--sco-size <size>', 'SCO size (4M-128M)', '64M')
    .option('--owner <router>', 'router that serves it (default: the least loaded live router)')
    .option('--dtl-mode <mode>', 'DTL mode: none, async or sync (default sync; none on a one-router cluster)')
    .option('--data <dir>', 'cluster data directory (default ./data or $KEEL_DATA)')
    .option('--redis <url>', 'Redis coordination URL (default $KEEL_REDIS_URL; none: embedded, under --data)')
    .option('--json', 'print the volume as JSON')
    .action(async (name: string, size: string, options: DataOptions & { scoSize: string; owner?: string; dtlMode?: string; json?: boolean }) => {
      const requestedDtlMode = options.dtlMode === undefined ? undefined : parseDtlMode(options.dtlMode);
      checkVolumeName(name);
      const sizeBytes = checkVolumeSize(parseSize(size));
      const scoSizeBytes = checkScoSize(parseSize(options.scoSize));
      const coordination = await openCoordination(resolveDataDir(options.data), resolveRedisUrl(options.redis));
      const routers = await coordination.listRouters();
      if (options.owner && !routers.some((r) => r.id === options.owner)) throw KeelError.routerNotFound(options.owner);
      const owner = options.owner ?? leastLoadedRouter(placeableRouters(routers, Date.now()), await coordination.listVolumes())?.id;
      const dtlMode = requestedDtlMode ?? defaultDtlMode(placeableRouters(routers, Date.now()).length, routers.length);
      const record = await coordination.createVolume({ name, sizeBytes, scoSizeBytes, owner, ...(dtlMode ? { dtlMode } : {}) }, Date.now());
      if (options.json) printJson(record);
      else console.log(`created volume '${name}' of ${formatSize(sizeBytes)}${owner ? ` on router ${owner}` : ''}`);
    });

  volume
    .command('list')
    .description('list volumes')
    .option('--data <dir>', 'cluster data directory')
    .option('--redis <url>', 'Redis coordination URL (default $KEEL_REDIS_URL)')
    .option('--json', 'print JSON')
    .action(async (options: DataOptions & { json?: boolean }) => {
      const coordination = await openCoordination(resolveDataDir(options.data), resolveRedisUrl(options.redis));
      const volumes = await coordination.listVolumes();
      const usage = (await volumeUsage(coordination)).byName;
      if (options.json) return printJson(volumes.map((v) => ({ ...v, usedBytes: usage.get(v.name)?.usedBytes })));
      printTable(
        volumes.map((v) => ({
          name: v.name,
          size: formatSize(v.sizeBytes),
          used: formatUsed(usage.get(v.name), v.sizeBytes),
          sco: formatSize(v.scoSizeBytes),
          owner: v.owner || '-',
          epoch: v.ownerEpoch,
          dtl: `${v.dtlMode ?? 'sync'}${v.dtlPeer ? ` on ${v.dtlPeer}` : ''}${v.dtlInSync ? '' : ' (not in sync)'}`,
        })),
        ['name', 'size', 'used', 'sco', 'owner', 'epoch', 'dtl'],
      );
    });

  volume
    .command('info')
    .description('show one volume')
    .argument('<name>')
    .option('--data <dir>', 'cluster data directory')
    .option('--redis <url>', 'Redis coordination URL (default $KEEL_REDIS_URL)')
    .option('--json', 'print JSON')
    .action(async (name: string, options: DataOptions & { json?: boolean }) => {
      const coordination = await openCoordination(resolveDataDir(options.data), resolveRedisUrl(options.redis));
      const record = await coordination.getVolume(name);
      if (!record) throw KeelError.volumeNotFound(name);
      const report = await volumeUsage(coordination);
      const usage = report.byName.get(name);
      if (options.json) return printJson({ ...record, usedBytes: usage?.usedBytes });
      console.log(`name:        ${record.name}`);
      console.log(`size:        ${formatSize(record.sizeBytes)} (${record.sizeBytes} bytes)`);
      const stored = usage
        ? `, in ${plural(usage.scoCount, 'SCO')} and ${plural(usage.tlogCount, 'TLog')}`
        : report.answered.has(record.owner)
          ? ` (not open on ${record.owner}: no client since it took the volume)`
          : ` (${record.owner ? `${record.owner} does not answer` : 'no owner'})`;
      console.log(`used:        ${formatUsed(usage, record.sizeBytes)}${stored}`);
      console.log(`sco size:    ${formatSize(record.scoSizeBytes)}`);
      const failed = ownerHasFailed(record) ? failedOwnerNote(record) : '';
      console.log(`owner:       ${record.owner || '(unclaimed)'} (epoch ${record.ownerEpoch}${failed})`);
      console.log(`dtl:         ${record.dtlMode ?? 'sync'}, peer ${record.dtlPeer || '-'}, ${record.dtlInSync ? 'in sync' : 'not in sync'}`);
      console.log(`created:     ${new Date(record.createdAtMs).toISOString()}`);
    });

  volume
    .command('resize')
    .description('grow or shrink a volume (shrinking discards data past the new end)')
    .argument('<name>')
    .argument('<size>', 'new size, e.g. 20G')
    .option('--data <dir>', 'cluster data directory')
    .option('--redis <url>', 'Redis coordination URL (default $KEEL_REDIS_URL)')
    .option('--allow-shrink', 'permit a smaller size')
    .action(async (name: string, size: string, options: DataOptions & { allowShrink?: boolean }) => {
      const sizeBytes = checkVolumeSize(parseSize(size));
      const coordination = await openCoordination(resolveDataDir(options.data), resolveRedisUrl(options.redis));
      const record = await coordination.getVolume(name);
      if (!record) throw KeelError.volumeNotFound(name);
      if (sizeBytes < record.sizeBytes && !options.allowShrink) {
        throw KeelError.badArgument(`shrinking '${name}' from ${formatSize(record.sizeBytes)} to ${formatSize(sizeBytes)} discards data: add --allow-shrink`);
      }
      // A shrink discards data: its owner applies it before the answer (a grow right after must not bring it back).
      if (sizeBytes < record.sizeBytes) await volumeAdmin(coordination, name, { op: 'volume-shrink', sizeBytes });
      else await coordination.resizeVolume(name, sizeBytes);
      console.log(`resized volume '${name}' to ${formatSize(sizeBytes)}`);
    });

  volume
    .command('delete')
    .description('delete a volume and its data')
    .argument('<name>')
    .option('--data <dir>', 'cluster data directory')
    .option('--redis <url>', 'Redis coordination URL (default $KEEL_REDIS_URL)')
    .action(async (name: string, options: DataOptions) => {
      const coordination = await openCoordination(resolveDataDir(options.data), resolveRedisUrl(options.redis));
      await refuseIfCloned(coordination, name);
      await coordination.deleteVolume(name);
      console.log(`deleted volume '${name}'`);
    });
}

function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? '' : 's'}`;
}

/** The volume's written bytes and their share of its size; '-' when its owner does not report them. */
function formatUsed(usage: VolumeUsage | undefined, sizeBytes: number): string {
  if (usage === undefined) return '-';
  const percent = sizeBytes === 0 ? 0 : (100 * usage.usedBytes) / sizeBytes;
  return `${formatSize(usage.usedBytes)} (${percent < 1 && usage.usedBytes > 0 ? '<1' : Math.round(percent)}%)`;
}

/** What happens next to a volume whose driver failed on its owner (docs/high-availability.md, "A volume whose disk fails"). */
function failedOwnerNote(record: VolumeRecord): string {
  const reopen = `mend the disk, then \`keel volume takeover ${record.name} --to ${record.owner}\` or restart ${record.owner}`;
  if (volumeDtlMode(record) === 'none') return `; its volume driver failed there; no takeover without a DTL: ${reopen}`;
  if (!record.dtlInSync) return `; its volume driver failed there; no safe takeover, the DTL was not in sync: ${reopen}, or take it over elsewhere with --force (losing what only the owner held)`;
  return '; its volume driver failed there: the DTL peer takes it over';
}
