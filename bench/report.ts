/**
 * The benchmark's result: a JSON document (schema below, `schemaVersion` 1) and its markdown rendering,
 * written as bench/results/<timestamp>.json and .md plus latest.md. The table holds each headline figure
 * per target and the ratio Keel/baseline for each baseline (docs/benchmark.md explains the columns).
 */
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { FioFigures } from './fio-output.ts';
import type { JobId } from './fio-jobs.ts';
import type { ProcessUsage, EcEncodeFigures, LbaMapFigures } from './system-metrics.ts';
import type { Settled, TargetId } from './targets.ts';

export type JobOutcome = { figures: FioFigures } | { error: string } | { skipped: string };

export interface TargetResult {
  id: TargetId;
  label: string;
  method: string;
  status: 'ok' | 'skipped' | 'failed';
  /** Why the target was skipped or failed, or what to keep in mind about it. */
  note?: string;
  jobs: Partial<Record<JobId, JobOutcome>>;
  /** How reads were made cold, as the target did it. */
  coldMethod?: string;
  /** Before each job, the wait for earlier jobs' write-back (targets that have one). */
  settled?: Partial<Record<JobId, Settled>>;
  /** Keel's edge process during the job (sampled from /proc). */
  edgeUsage?: Partial<Record<JobId, ProcessUsage & { cpuCoresPer10kIops: number }>>;
  /** Where the CPU goes in the 4k QD32 jobs: each server process, fio and the machine's idle share. */
  cpuPerIo?: Partial<Record<JobId, CpuPerIo>>;
  /**
   * Paired jobs (bench/run.ts, pairedJobs): each round runs the job on the reference nbdkit memory, then on
   * this target. Round 1's target run is the one in `jobs`.
   */
  pairedRounds?: Partial<Record<JobId, PairedRound[]>>;
  /** Bytes the S3 server sent (HTTP included) per 4 KiB read of the cold job. */
  backendBytesPerColdRead?: number;
  /** Keel on S3: the 1M sequential read job once more, after `keel scrub --defrag` (what the defrag did). */
  seqReadAfterDefrag?: { defrag: string; outcome: JobOutcome };
}

/** CPU over a job's measured window, per completed I/O (bench/run.ts, sampledJobs). */
export interface CpuPerIo {
  /** µs of CPU (user + system, all threads) per I/O of each server process, fio's side of the chain first. */
  processes: Array<{ role: string; usPerIo: number }>;
  /** fio's own, from its JSON (over the whole job, ramp included). */
  fioUsPerIo?: number;
  /** Share of both cores' time that was idle (/proc/stat). */
  machineIdleShare: number;
}

/** One round of a paired job: the reference's run and the target's right after it. */
export interface PairedRound {
  reference: JobOutcome;
  subject: JobOutcome;
}

export interface BenchResult {
  schemaVersion: 1;
  mode: 'quick' | 'full' | 'smoke';
  startedAt: string;
  wallSeconds: number;
  /** `keel`: `keel --version`, which names the build that ran (absent in results from before 2026-11-22T08). */
  host: { cpus: number; cpuModel: string; kernel: string; node: string; fio: string; keel?: string };
  settings: { runtimeSec: number; rampSec: number; regionBytes: number; deviceBytes: number; coldReadBytes: number; scoSize: string; placement?: string };
  targets: TargetResult[];
  ecEncode: EcEncodeFigures | { error: string } | { skipped: string };
  lbaMap: LbaMapFigures | { error: string } | { skipped: string };
  table: TableRow[];
  ratioColumns: RatioColumn[];
}

export interface TableRow {
  figure: string;
  unit: 'IOPS' | 'MiB/s' | 'µs';
  better: 'higher' | 'lower';
  values: Partial<Record<TargetId, number | null>>;
  /** Keyed by RatioColumn.id: subject value / baseline value. */
  ratios: Record<string, number | null>;
}

export interface RatioColumn {
  id: string;
  subject: TargetId;
  baseline: TargetId;
}

export const ratioColumns: readonly RatioColumn[] = [
  { id: 'keel/nbdkit-memory', subject: 'keel', baseline: 'nbdkit-memory' },
  { id: 'keel/node-relay', subject: 'keel', baseline: 'node-relay' },
  { id: 'node-relay/nbdkit-memory', subject: 'node-relay', baseline: 'nbdkit-memory' },
  { id: 'keel/node-relay-2', subject: 'keel', baseline: 'node-relay-2' },
  { id: 'node-relay-2/nbdkit-memory', subject: 'node-relay-2', baseline: 'nbdkit-memory' },
  { id: 'keel/nbdkit-file', subject: 'keel', baseline: 'nbdkit-file' },
  { id: 'keel/s3backer', subject: 'keel', baseline: 's3backer' },
  { id: 'keel-s3/s3backer', subject: 'keel-s3', baseline: 's3backer' },
];

interface RowSpec {
  figure: string;
  job: JobId;
  pick: (f: FioFigures) => number;
  unit: TableRow['unit'];
  better: TableRow['better'];
}

const rowSpecs: readonly RowSpec[] = [
  { figure: '4k randwrite QD32', job: 'randwrite-4k-qd32', pick: (f) => f.iops, unit: 'IOPS', better: 'higher' },
  { figure: '4k randread QD32, cache hit', job: 'randread-4k-qd32', pick: (f) => f.iops, unit: 'IOPS', better: 'higher' },
  { figure: '4k randread QD32, cold', job: 'randread-4k-qd32-cold', pick: (f) => f.iops, unit: 'IOPS', better: 'higher' },
  { figure: '4k randwrite QD1', job: 'randwrite-4k-qd1', pick: (f) => f.iops, unit: 'IOPS', better: 'higher' },
  { figure: '4k randwrite QD1 p50', job: 'randwrite-4k-qd1', pick: (f) => f.p50LatencyUs, unit: 'µs', better: 'lower' },
  { figure: '4k randwrite QD1 p99', job: 'randwrite-4k-qd1', pick: (f) => f.p99LatencyUs, unit: 'µs', better: 'lower' },
  { figure: '1M seq write QD8', job: 'seqwrite-1m', pick: (f) => f.mibPerSec, unit: 'MiB/s', better: 'higher' },
  { figure: '1M seq read QD8', job: 'seqread-1m', pick: (f) => f.mibPerSec, unit: 'MiB/s', better: 'higher' },
];

export function buildTable(targets: TargetResult[]): TableRow[] {
  return rowSpecs.map((spec) => {
    const values: TableRow['values'] = {};
    for (const target of targets) {
      const outcome = target.jobs[spec.job];
      values[target.id] = outcome && 'figures' in outcome ? spec.pick(outcome.figures) : null;
    }
    const ratios: TableRow['ratios'] = {};
    for (const column of ratioColumns) {
      const subject = values[column.subject];
      const baseline = values[column.baseline];
      ratios[column.id] = subject != null && baseline != null && baseline > 0 ? subject / baseline : null;
    }
    return { figure: spec.figure, unit: spec.unit, better: spec.better, values, ratios };
  });
}

function formatValue(value: number | null | undefined, unit: TableRow['unit']): string {
  if (value == null || !Number.isFinite(value)) return '—';
  if (unit === 'IOPS') return value >= 10_000 ? `${(value / 1000).toFixed(1)}k` : value.toFixed(0);
  if (unit === 'MiB/s') return value.toFixed(value < 10 ? 1 : 0);
  return value >= 10_000 ? `${(value / 1000).toFixed(1)} ms` : `${value.toFixed(0)}`;
}

function formatRatio(ratio: number | null | undefined): string {
  if (ratio == null || !Number.isFinite(ratio)) return '—';
  if (ratio >= 10) return `${ratio.toFixed(0)}×`;
  return `${ratio >= 0.1 ? ratio.toFixed(2) : ratio.toPrecision(2)}×`;
}

function labelOf(result: BenchResult, id: TargetId): string {
  return result.targets.find((t) => t.id === id)?.label ?? id;
}

export function renderMarkdown(result: BenchResult): string {
  const shown = result.targets;
  const ratios = result.ratioColumns.filter((c) => shown.some((t) => t.id === c.subject) && shown.some((t) => t.id === c.baseline));
  const lines: string[] = [];
  lines.push(`# Keel benchmark — ${result.startedAt} (${result.mode} mode)`, '');
  lines.push(
    `Host: ${result.host.cpus} × ${result.host.cpuModel}, Linux ${result.host.kernel}, Node.js ${result.host.node}, ${result.host.fio}` +
      `${result.host.keel ? `, Keel ${result.host.keel}` : ''}. ` +
      `fio (nbd engine) and every server share these cores: figures compare only within this run.`,
  );
  lines.push(
    `Jobs: ${result.settings.runtimeSec} s each after ${result.settings.rampSec} s ramp, on the first ${mib(result.settings.regionBytes)} MiB ` +
      `of a ${mib(result.settings.deviceBytes)} MiB device; cold reads read ${mib(result.settings.coldReadBytes)} MiB once each. Wall time ${result.wallSeconds.toFixed(0)} s.`,
    `Placement: ${result.settings.placement ?? 'scheduler: nothing pinned'}.`,
    '',
  );
  const header = ['figure', 'unit', ...shown.map((t) => t.label), ...ratios.map((c) => `${labelOf(result, c.subject)} / ${labelOf(result, c.baseline)}`)];
  lines.push(`| ${header.join(' | ')} |`, `|${header.map((_, i) => (i < 2 ? '---' : '---:')).join('|')}|`);
  for (const row of result.table) {
    const cells = [row.figure, `${row.unit} (${row.better} is better)`, ...shown.map((t) => formatValue(row.values[t.id], row.unit)), ...ratios.map((c) => formatRatio(row.ratios[c.id]))];
    lines.push(`| ${cells.join(' | ')} |`);
  }
  lines.push(...pairedSection(result));
  lines.push(...cpuSection(result));
  lines.push('', '## Other figures', '', '| figure | value |', '|---|---:|');
  for (const [figure, value] of otherFigures(result)) lines.push(`| ${figure} | ${value} |`);
  lines.push('', '## Targets', '');
  for (const target of result.targets) {
    const status = target.status === 'ok' ? '' : ` — **${target.status}**`;
    lines.push(`- **${target.label}**${status}: ${target.method}.${target.note ? ` ${target.note}` : ''}`);
    if (target.coldMethod) lines.push(`  - cold reads: ${target.coldMethod}`);
    const waits = settleWaits(target);
    if (waits) lines.push(`  - before each job, waited for the write-back of earlier ones: ${waits}`);
    for (const [job, outcome] of Object.entries(target.jobs)) {
      if (outcome && 'error' in outcome) lines.push(`  - ${job} failed: ${outcome.error}`);
      if (outcome && 'skipped' in outcome) lines.push(`  - ${job} not run: ${outcome.skipped}`);
    }
  }
  lines.push('');
  return lines.join('\n');
}

/** Each paired job: every round's IOPS on both sides and ratio, and the median ratio. */
function pairedSection(result: BenchResult): string[] {
  const rows: string[] = [];
  for (const target of result.targets) {
    for (const [job, rounds] of Object.entries(target.pairedRounds ?? {})) {
      const pairs = (rounds ?? []).map((round) => [iopsOf(round.subject), iopsOf(round.reference)] as const);
      const ratios = pairs.map(([subject, reference]) => (subject !== undefined && reference ? subject / reference : null));
      const iopsCell = pairs.map(([subject, reference]) => `${formatValue(subject ?? null, 'IOPS')} / ${formatValue(reference ?? null, 'IOPS')}`).join(', ');
      const median = medianOf(ratios.filter((r): r is number => r !== null));
      // Three decimals: these ratios are read against 0.5.
      const ratioCell = ratios.map((r) => (r === null ? '—' : `${r.toFixed(3)}×`)).join(', ');
      rows.push(`| ${target.label} | ${job} | ${iopsCell} | ${ratioCell} | ${median === undefined ? '—' : `**${median.toFixed(3)}×**`} |`);
    }
  }
  return tableSection(
    'Back to back with nbdkit memory',
    'The same job on a second nbdkit memory, run right before the target\'s once its write-back is done, so that both see the host in the same minute; each round is such a pair, and the first round\'s target run is the one in the table above.',
    ['| target | job | each round: target / nbdkit memory, IOPS | each round: ratio | median ratio |', '|---|---|---|---|---:|'],
    rows,
  );
}

/** A markdown section of one table: nothing when it has no rows. */
function tableSection(title: string, intro: string, header: [string, string], rows: readonly string[]): string[] {
  return rows.length === 0 ? [] : ['', `## ${title}`, '', intro, '', ...header, ...rows];
}

function cpuSection(result: BenchResult): string[] {
  const rows: string[] = [];
  for (const target of result.targets) {
    for (const [job, cpu] of Object.entries(target.cpuPerIo ?? {})) {
      const outcome = target.jobs[job as JobId];
      if (!cpu || !outcome || !('figures' in outcome)) continue;
      const processes = cpu.processes.map((p) => `${p.role} ${p.usPerIo.toFixed(1)}`).join(', ');
      const total = cpu.processes.reduce((sum, p) => sum + p.usPerIo, 0) + (cpu.fioUsPerIo ?? 0);
      const fio = cpu.fioUsPerIo !== undefined ? cpu.fioUsPerIo.toFixed(1) : '—';
      rows.push(`| ${target.label} | ${job} | ${formatValue(outcome.figures.iops, 'IOPS')} | ${processes} | ${fio} | ${total.toFixed(1)} | ${(cpu.machineIdleShare * 100).toFixed(0)}% |`);
    }
  }
  return tableSection(
    'Where the CPU goes',
    "CPU time (user + system, all threads) per completed I/O, in µs, of each server process over the job's measured window (from /proc), fio's own from its JSON, and the share of the machine's cores left idle. The processes are listed from fio's side of the chain.",
    ['| target | job | IOPS | µs of CPU per I/O, by process | fio | all | machine idle |', '|---|---|---:|---|---:|---:|---:|'],
    rows,
  );
}

function iopsOf(outcome: JobOutcome | undefined): number | undefined {
  return outcome && 'figures' in outcome ? outcome.figures.iops : undefined;
}

/** The middle value (the mean of the two middle ones for an even count); undefined for none. */
export function medianOf(values: readonly number[]): number | undefined {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

function otherFigures(result: BenchResult): Array<[string, string]> {
  const rows: Array<[string, string]> = [];
  for (const target of result.targets) {
    for (const [job, usage] of Object.entries(target.edgeUsage ?? {})) {
      if (!usage) continue;
      rows.push([`${target.label} edge RSS during ${job} (mean / peak)`, `${mib(usage.rssMeanBytes).toFixed(0)} / ${mib(usage.rssPeakBytes).toFixed(0)} MiB`]);
      rows.push([`${target.label} edge CPU during ${job}`, `${(usage.cpuCores * 100).toFixed(0)}% of a core = ${(usage.cpuCoresPer10kIops * 100).toFixed(1)}% per 10k IOPS`]);
    }
    if (target.backendBytesPerColdRead !== undefined) rows.push([`${target.label} backend bytes fetched per cold 4 KiB read`, target.backendBytesPerColdRead.toFixed(0)]);
    const afterDefrag = target.seqReadAfterDefrag;
    if (afterDefrag !== undefined) {
      const outcome = 'figures' in afterDefrag.outcome ? `${afterDefrag.outcome.figures.mibPerSec.toFixed(0)} MiB/s` : `failed: ${'error' in afterDefrag.outcome ? afterDefrag.outcome.error : ''}`;
      rows.push([`${target.label} 1M seq read QD8 after \`keel scrub --defrag\` (${afterDefrag.defrag})`, outcome]);
    }
  }
  if ('mibPerSecPerCore' in result.ecEncode) {
    for (const [code, value] of Object.entries(result.ecEncode.mibPerSecPerCore)) rows.push([`EC encode ${code}, per core`, `${value.toFixed(0)} MiB/s`]);
  } else rows.push(['EC encode', 'error' in result.ecEncode ? `failed: ${result.ecEncode.error}` : `not run: ${result.ecEncode.skipped}`]);
  if ('patterns' in result.lbaMap) {
    for (const [pattern, value] of Object.entries(result.lbaMap.patterns)) rows.push([`router LBA map RAM, ${pattern} (${value.mapped} mapped)`, `${value.bytesPerCluster.toFixed(2)} B/cluster`]);
  } else rows.push(['router LBA map RAM', 'error' in result.lbaMap ? `failed: ${result.lbaMap.error}` : `not run: ${result.lbaMap.skipped}`]);
  return rows;
}

const mib = (bytes: number) => bytes / 2 ** 20;

/** Writes <timestamp>.json, <timestamp>.md and latest.md into outDir; returns their paths. */
export async function writeReport(result: BenchResult, outDir: string): Promise<{ json: string; markdown: string; latest: string }> {
  await mkdir(outDir, { recursive: true });
  const stamp = result.startedAt.replace(/[:.]/g, '-');
  const json = path.join(outDir, `${stamp}.json`);
  const markdown = path.join(outDir, `${stamp}.md`);
  const latest = path.join(outDir, 'latest.md');
  await writeFile(json, `${JSON.stringify(result, null, 2)}\n`);
  await writeFile(markdown, renderMarkdown(result));
  await copyFile(markdown, latest);
  return { json, markdown, latest };
}

/** "randread-4k-qd32 12.3 s (40 SCOs and 10 TLogs to upload), ..." for the jobs that waited; undefined when none did. */
function settleWaits(target: TargetResult): string | undefined {
  const waits = Object.entries(target.settled ?? {}).filter(([, s]) => s?.pending !== undefined);
  if (waits.length === 0) return undefined;
  return waits.map(([job, s]) => `${job} ${(s!.waitedMs / 1000).toFixed(1)} s (${s!.pending}${s!.quiet ? '' : ', still busy after that'})`).join('; ');
}
