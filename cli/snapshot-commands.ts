/**
 * `keel snapshot ...`, `keel volume template|clone`, `keel tree`, `keel scrub` (docs/snapshots.md). Each
 * command is one admin op on the router that owns the volume (cli/router-admin.ts).
 */
import type { Command } from 'commander';
import type { Coordination } from '../shared/coordination.ts';
import { KeelError, isKeelError } from '../shared/errors.ts';
import { formatSize } from '../shared/sizes.ts';
import { parseSnapshotRef } from '../shared/snapshot-ref.ts';
import type { ScrubProgressEvent, ScrubReport } from '../router/scrubber.ts';
import type { SnapshotInfo } from '../router/snapshot-catalog-format.ts';
import type { TreeVolume } from '../router/snapshot-service.ts';
import type { ChangedExtent } from '../router/volume-snapshots.ts';
import { openCoordination, resolveDataDir, resolveRedisUrl } from './data-dir.ts';
import { printJson, printTable } from './output.ts';
import { everyRouterAdmin, volumeAdmin } from './router-admin.ts';
import { exportSnapshot, importSnapshot } from './snapshot-transfer.ts';
import { checkSnapshotName } from '../shared/volume-name.ts';

interface DataOptions {
  data?: string;
  redis?: string;
  json?: boolean;
}

async function coordinationFor(options: DataOptions): Promise<Coordination> {
  return openCoordination(resolveDataDir(options.data), resolveRedisUrl(options.redis));
}

/** `key=value` arguments; `key=` removes a label. */
function parseLabels(pairs: string[]): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const pair of pairs) {
    const at = pair.indexOf('=');
    if (at <= 0) throw KeelError.badArgument(`'${pair}' is not key=value`);
    labels[pair.slice(0, at)] = pair.slice(at + 1);
  }
  return labels;
}

function formatLabels(labels: Record<string, string>): string {
  return Object.entries(labels).map(([k, v]) => `${k}=${v}`).join(',') || '-';
}

export function addSnapshotCommands(program: Command): void {
  const snapshot = program.command('snapshot').description('crash-consistent snapshots: create, list, delete, label, rollback, clone, diff, export, import');

  snapshot
    .command('create')
    .description('snapshot a volume (every write acknowledged before the call is in it); prints its name')
    .argument('<volume>')
    .argument('[name]', 'snapshot name (default: a timestamp)')
    .option('--label <key=value...>', 'labels')
    .option('--pipelined', 'return before the snapshot is fsynced: crash-consistent either way, durable across a power loss from the next FLUSH (for snapshots every few ms)')
    .option('--data <dir>', 'cluster data directory')
    .option('--redis <url>', 'Redis coordination URL (default $KEEL_REDIS_URL)')
    .option('--json', 'print JSON')
    .action(async (volume: string, name: string | undefined, options: DataOptions & { label?: string[]; pipelined?: boolean }) => {
      // '' is a mistake (an unset shell variable, say), not a request for the default name.
      if (name !== undefined) checkSnapshotName(name);
      const info = await volumeAdmin<SnapshotInfo>(await coordinationFor(options), volume, {
        op: 'snapshot-create',
        ...(name !== undefined ? { name } : {}),
        labels: parseLabels(options.label ?? []),
        ...(options.pipelined ? { durable: false } : {}),
      });
      if (options.json) printJson(info);
      else console.log(info.name);
    });

  snapshot
    .command('list')
    .description("list a volume's snapshots, oldest first")
    .argument('<volume>')
    .option('--data <dir>', 'cluster data directory')
    .option('--redis <url>', 'Redis coordination URL (default $KEEL_REDIS_URL)')
    .option('--json', 'print JSON')
    .action(async (volume: string, options: DataOptions) => {
      const listed = await volumeAdmin<{ template: boolean; snapshots: SnapshotInfo[]; clones: Array<{ clone: string; snapshotId: number }> }>(
        await coordinationFor(options),
        volume,
        { op: 'snapshot-list' },
      );
      if (options.json) return printJson(listed);
      printTable(
        listed.snapshots.map((s) => ({
          name: s.name,
          id: s.id,
          created: new Date(s.createdAtMs).toISOString(),
          size: formatSize(s.sizeBytes),
          labels: formatLabels(s.labels),
          clones: listed.clones.filter((c) => c.snapshotId === s.id).map((c) => c.clone).join(',') || '-',
        })),
        ['name', 'id', 'created', 'size', 'labels', 'clones'],
      );
    });

  snapshot
    .command('delete')
    .description('delete a snapshot (refused while clones depend on it); `keel scrub` then frees its data')
    .argument('<volume>')
    .argument('<snapshot>', 'snapshot name', checkSnapshotName)
    .option('--data <dir>', 'cluster data directory')
    .option('--redis <url>', 'Redis coordination URL (default $KEEL_REDIS_URL)')
    .action(async (volume: string, name: string, options: DataOptions) => {
      await volumeAdmin(await coordinationFor(options), volume, { op: 'snapshot-delete', snapshot: name });
      console.log(`deleted snapshot '${volume}@${name}'`);
    });

  snapshot
    .command('label')
    .description('set labels on a snapshot (key= removes a label)')
    .argument('<volume>')
    .argument('<snapshot>', 'snapshot name', checkSnapshotName)
    .argument('<labels...>', 'key=value pairs')
    .option('--data <dir>', 'cluster data directory')
    .option('--redis <url>', 'Redis coordination URL (default $KEEL_REDIS_URL)')
    .action(async (volume: string, name: string, pairs: string[], options: DataOptions) => {
      const info = await volumeAdmin<SnapshotInfo>(await coordinationFor(options), volume, { op: 'snapshot-label', snapshot: name, labels: parseLabels(pairs) });
      console.log(`${volume}@${info.name}: ${formatLabels(info.labels)}`);
    });

  snapshot
    .command('rollback')
    .description('make a volume equal to one of its snapshots; DELETES every newer snapshot (like zfs rollback -r). Disconnect NBD clients first')
    .argument('<volume>')
    .argument('<snapshot>', 'snapshot name', checkSnapshotName)
    .option('--data <dir>', 'cluster data directory')
    .option('--redis <url>', 'Redis coordination URL (default $KEEL_REDIS_URL)')
    .option('--json', 'print JSON')
    .action(async (volume: string, name: string, options: DataOptions) => {
      const result = await volumeAdmin<{ deleted: string[]; changedClusters: number }>(await coordinationFor(options), volume, {
        op: 'snapshot-rollback',
        snapshot: name,
      });
      if (options.json) return printJson(result);
      console.log(`rolled back '${volume}' to snapshot '${name}' (${result.changedClusters} clusters changed)`);
      console.log(result.deleted.length > 0 ? `deleted newer snapshots: ${result.deleted.join(', ')}` : 'no newer snapshots were deleted');
    });

  snapshot
    .command('clone')
    .description('create a writable clone of VOL@SNAP (or of a template VOL: its latest snapshot) that shares its data')
    .argument('<source>', 'VOL@SNAP, or a template volume')
    .argument('<clone>', 'name of the new volume')
    .option('--data <dir>', 'cluster data directory')
    .option('--redis <url>', 'Redis coordination URL (default $KEEL_REDIS_URL)')
    .action(async (source: string, clone: string, options: DataOptions) => createClone(source, clone, options));

  snapshot
    .command('diff')
    .description('list the extents that changed between two snapshots (FROM "-" = an empty volume)')
    .argument('<volume>')
    .argument('<from>', 'older snapshot', checkSnapshotName)
    .argument('<to>', 'newer snapshot', checkSnapshotName)
    .option('--data <dir>', 'cluster data directory')
    .option('--redis <url>', 'Redis coordination URL (default $KEEL_REDIS_URL)')
    .option('--json', 'print JSON')
    .action(async (volume: string, from: string, to: string, options: DataOptions) => {
      const diff = await volumeAdmin<{ sizeBytes: number; extents: ChangedExtent[] }>(await coordinationFor(options), volume, {
        op: 'snapshot-diff',
        to,
        ...(from === '-' ? {} : { from }),
      });
      const rows = diff.extents.map((e) => ({ offset: e.lba * 4096, length: e.count * 4096, kind: e.mapped ? 'data' : 'zero' }));
      if (options.json) return printJson(rows);
      printTable(rows, ['offset', 'length', 'kind']);
    });

  snapshot
    .command('export')
    .description('write a snapshot (or with --from, the changes since another snapshot) as an export stream to stdout')
    .argument('<volume>')
    .argument('<snapshot>', 'snapshot name', checkSnapshotName)
    .option('--from <base>', 'base snapshot: an incremental stream')
    .option('--data <dir>', 'cluster data directory')
    .option('--redis <url>', 'Redis coordination URL (default $KEEL_REDIS_URL)')
    .action(async (volume: string, name: string, options: DataOptions & { from?: string }) => {
      if (process.stdout.isTTY) throw KeelError.badArgument('refusing to write an export stream to a terminal: redirect stdout');
      const stats = await exportSnapshot(await coordinationFor(options), volume, name, options.from, process.stdout);
      console.error(`exported ${volume}@${name}${options.from ? ` since ${options.from}` : ''}: ${stats.dataClusters} data clusters, ${stats.zeroClusters} zeroed, ${formatSize(stats.bytes)}`);
    });

  snapshot
    .command('import')
    .description('apply an export stream from stdin to a volume, then snapshot it under the stream\'s snapshot name')
    .argument('<volume>')
    .option('--data <dir>', 'cluster data directory')
    .option('--redis <url>', 'Redis coordination URL (default $KEEL_REDIS_URL)')
    .option('--force', 'apply an incremental stream although the volume changed since its base snapshot')
    .action(async (volume: string, options: DataOptions & { force?: boolean }) => {
      const result = await importSnapshot(await coordinationFor(options), volume, process.stdin, { force: options.force === true });
      console.log(`imported ${volume}@${result.snapshot}${result.fromSnapshot ? ` (incremental from ${result.fromSnapshot})` : ''}: ${result.dataClusters} data clusters, ${result.zeroClusters} zeroed`);
    });

  const volume = program.commands.find((c) => c.name() === 'volume');
  if (volume) {
    volume
      .command('template')
      .description('make a volume a read-only template (snapshotted); clone it with `keel volume clone`')
      .argument('<name>')
      .option('--data <dir>', 'cluster data directory')
      .option('--redis <url>', 'Redis coordination URL (default $KEEL_REDIS_URL)')
      .action(async (name: string, options: DataOptions) => {
        const result = await volumeAdmin<{ snapshot: string }>(await coordinationFor(options), name, { op: 'volume-template' });
        console.log(`volume '${name}' is now a read-only template (snapshot '${result.snapshot}')`);
      });
    volume
      .command('clone')
      .description('create a writable clone of VOL@SNAP or of a template volume')
      .argument('<source>', 'VOL@SNAP, or a template volume')
      .argument('<clone>')
      .option('--data <dir>', 'cluster data directory')
      .option('--redis <url>', 'Redis coordination URL (default $KEEL_REDIS_URL)')
      .action(async (source: string, clone: string, options: DataOptions) => createClone(source, clone, options));
  }

  program
    .command('tree')
    .description('volumes, their snapshots and the clones made from them (Parallax VDI tree)')
    .option('--data <dir>', 'cluster data directory')
    .option('--redis <url>', 'Redis coordination URL (default $KEEL_REDIS_URL)')
    .option('--json', 'print JSON')
    .action(async (options: DataOptions) => {
      const volumes = (await everyRouterAdmin<TreeVolume[]>(await coordinationFor(options), { op: 'volume-tree' })).flat();
      if (options.json) return printJson(volumes);
      for (const line of renderTree(volumes)) console.log(line);
    });

  program
    .command('scrub')
    .description("reclaim space: delete SCOs nothing references, rewrite mostly-garbage ones; prints bytes before and after")
    .argument('<volume>')
    .option('--data <dir>', 'cluster data directory')
    .option('--redis <url>', 'Redis coordination URL (default $KEEL_REDIS_URL)')
    .option('--clusters-per-second <n>', 'copy at most this many 4 KiB clusters a second (default: the router\'s pace)')
    .option('--defrag', 'also rewrite fragmented 1 MiB LBA extents in order, for faster sequential reads (up to 1 GiB per run)')
    .option('--json', 'print JSON (progress still goes to stderr)')
    .action(async (name: string, options: DataOptions & { clustersPerSecond?: string; defrag?: boolean }) => {
      const pace = options.clustersPerSecond === undefined ? undefined : parseClustersPerSecond(options.clustersPerSecond);
      const coordination = await coordinationFor(options);
      if (!(await coordination.getVolume(name))) throw KeelError.volumeNotFound(name); // before the banner
      console.error(`scrubbing '${name}': marking live clusters, rewriting, deleting...`);
      const scrub = volumeAdmin<ScrubReport>(coordination, name, { op: 'volume-scrub', ...(pace ? { clustersPerSecond: pace } : {}), ...(options.defrag ? { defrag: true } : {}) });
      const report = await withScrubProgress(scrub, () => volumeAdmin<ScrubProgressReport | null>(coordination, name, { op: 'volume-scrub-progress' }));
      if (options.json) return printJson(report);
      console.log(
        `scrubbed '${name}': ${formatSize(report.bytesBefore)} in ${report.scosBefore} SCOs -> ${formatSize(report.bytesAfter)} in ${report.scosAfter} SCOs ` +
          `(${report.scosDeleted} deleted, ${report.clustersRewritten} clusters rewritten, ${report.durationMs} ms)`,
      );
      if (report.extentsDefragmented !== undefined) {
        const left = report.extentsFragmentedLeft ? `; ${report.extentsFragmentedLeft} fragmented extents left for another run` : '';
        console.log(`defragmented ${report.extentsDefragmented} extents of 1 MiB (${report.clustersDefragmented} clusters rewritten in LBA order)${left}`);
      }
      if (report.backendBytesBefore !== undefined) {
        console.log(`backend: ${formatSize(report.backendBytesBefore)} -> ${formatSize(report.backendBytesAfter ?? 0)} of SCO objects (${report.backendObjectsDeleted ?? 0} deleted)`);
      }
      if (report.scosPending > 0) console.log(`${report.scosPending} dead SCOs wait for their TLog to reach the backend: a later scrub deletes them`);
      if (report.scosUnreadable !== undefined) {
        console.error(`keel: warning: SCOs ${report.scosUnreadable.join(', ')} were left as they are: their live clusters cannot be read (see keel backend verify and repair)`);
      }
    });
}

function parseClustersPerSecond(text: string): number {
  const value = Number(text);
  if (!Number.isInteger(value) || value < 1) throw KeelError.badArgument(`--clusters-per-second must be a whole number from 1 on, got '${text}'`);
  return value;
}

type ScrubProgressReport = ScrubProgressEvent & { elapsedMs: number };
const scrubProgressIntervalMs = 1_000;
const scrubProgressUnits: Record<ScrubProgressEvent['phase'], string> = { mark: 'passes', rewrite: 'clusters', defrag: 'clusters', delete: 'SCOs' };

/**
 * Prints the running scrub's progress to stderr once a second until `scrub` settles (a long scrub of a
 * large volume, or one joined while the background scrubber runs it). Progress is best effort: a failed
 * poll is skipped.
 */
async function withScrubProgress<T>(scrub: Promise<T>, poll: () => Promise<ScrubProgressReport | null>): Promise<T> {
  let last = '';
  let polling = false;
  const timer = setInterval(() => {
    if (polling) return;
    polling = true;
    poll()
      .then((progress) => {
        if (progress === null) return;
        const line = `${progress.phase} ${progress.done}/${progress.total} ${scrubProgressUnits[progress.phase]} (${(progress.elapsedMs / 1000).toFixed(0)} s)`;
        if (line !== last) process.stderr.write(`${line}\n`);
        last = line;
      })
      .catch(() => undefined)
      .finally(() => (polling = false));
  }, scrubProgressIntervalMs);
  try {
    return await scrub;
  } finally {
    clearInterval(timer);
  }
}

/**
 * `keel volume delete` of a volume whose snapshots clones depend on would break the clones: refused.
 * A volume never opened has no snapshots; an unreachable owner skips the check (with a warning).
 */
export async function refuseIfCloned(coordination: Coordination, volume: string): Promise<void> {
  const record = await coordination.getVolume(volume);
  if (!record || record.owner === '') return;
  let clones: Array<{ clone: string }>;
  try {
    clones = (await volumeAdmin<{ clones: Array<{ clone: string }> }>(coordination, volume, { op: 'snapshot-list' })).clones;
  } catch (err) {
    if (isKeelError(err, 'VOLUME_NOT_FOUND')) return;
    console.error(`keel: warning: could not ask the owner of '${volume}' about clones (${(err as Error).message})`);
    return;
  }
  const alive: string[] = [];
  for (const { clone } of clones) if (await coordination.getVolume(clone)) alive.push(clone);
  if (alive.length > 0) throw KeelError.hasDependents(`volume '${volume}'`, alive);
}

async function createClone(source: string, clone: string, options: DataOptions): Promise<void> {
  const ref = parseSnapshotRef(source);
  const result = await volumeAdmin<{ clone: string; parent: string; snapshot: string }>(await coordinationFor(options), ref.volume, {
    op: 'clone-create',
    clone,
    ...(ref.snapshot ? { snapshot: ref.snapshot } : {}),
  });
  console.log(`created clone '${result.clone}' of ${result.parent}@${result.snapshot}`);
}

/** Roots are volumes that are not clones; each snapshot lists the clones made from it, recursively. */
export function renderTree(volumes: TreeVolume[]): string[] {
  const byName = new Map(volumes.map((v) => [v.volume, v]));
  const lines: string[] = [];
  const visit = (volume: TreeVolume, indent: string, label: string) => {
    lines.push(`${indent}${label}${volume.volume} (${formatSize(volume.sizeBytes)}${volume.template ? ', template' : ''}, router ${volume.router})`);
    indent += ' '.repeat(label.length); // a clone's snapshots hang under its name, not under its arrow
    volume.snapshots.forEach((snapshot, index) => {
      const last = index === volume.snapshots.length - 1;
      const labels = Object.keys(snapshot.labels).length > 0 ? ` [${formatLabels(snapshot.labels)}]` : '';
      lines.push(`${indent}${last ? '└─' : '├─'} @${snapshot.name}  ${new Date(snapshot.createdAtMs).toISOString()}${labels}`);
      for (const clone of snapshot.clones) {
        const child = byName.get(clone);
        if (child) visit(child, `${indent}${last ? '   ' : '│  '}   `, '↳ ');
        else lines.push(`${indent}${last ? '   ' : '│  '}   ↳ ${clone} (deleted)`);
      }
    });
  };
  for (const volume of volumes) if (volume.origin === undefined || !byName.has(volume.origin.parentVolume)) visit(volume, '', '');
  return lines;
}
