/**
 * `npm run bench`: measures Keel next to local and peer baselines in one run (issue 6, parts 1-3) and
 * writes bench/results/<timestamp>.json and .md plus latest.md. Method and columns: docs/benchmark.md.
 *
 *   npm run bench                      full mode (20 s jobs after 3 s ramp, 1 GiB region)
 *   npm run bench -- --quick           whole run under 2 minutes
 *   npm run bench -- --only keel,nbdkit-memory --out /tmp/results
 */
import { execFile } from 'node:child_process';
import { mkdtemp, mkdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { Command, InvalidArgumentError, Option } from 'commander';
import { isMounted, stopAll } from './child-processes.ts';
import { fillJob, jobMatrix, runFio, type FioJob, type FioSettings, type JobId } from './fio-jobs.ts';
import { buildTable, ratioColumns, renderMarkdown, writeReport, type BenchResult, type CpuPerIo, type JobOutcome, type PairedRound, type TargetResult } from './report.ts';
import { describePlacement, setPlacement, type Placement } from './placement.ts';
import { measureEcEncode, measureLbaMap, repoDir, sampleCpuShares, sampleProcess, writtenBytes, type CpuShares, type RoleProcess } from './system-metrics.ts';
import { targetSpecs, type RunningTarget, type Settled, type TargetId, type TargetSpec } from './targets.ts';

type Mode = BenchResult['mode'];

interface ModeSettings extends FioSettings {
  deviceBytes: number;
  scoSize: string;
  /** The whole run is aborted (every child killed) past this. */
  watchdogMs: number;
  /** Before each job, how long a target may take to finish the write-back earlier jobs left (RunningTarget.settle). */
  settleWaitMaxMs: number;
  /** Rounds of each paired job (pairedJobs): the reference's run, then Keel's. */
  pairedRounds: number;
  defaultTargets: readonly TargetId[];
}

const MiB = 2 ** 20;
const allTargets = targetSpecs.map((t) => t.id);

const modes: Record<Mode, ModeSettings> = {
  full: {
    runtimeSec: 20, rampSec: 3, regionBytes: 1024 * MiB, deviceBytes: 2048 * MiB, coldReadBytes: 128 * MiB,
    coldRuntimeCapSec: 60, fillRuntimeCapSec: 120, scoSize: '64M', watchdogMs: 60 * 60_000, settleWaitMaxMs: 120_000, pairedRounds: 3, defaultTargets: allTargets,
  },
  quick: {
    runtimeSec: 1, rampSec: 0.5, regionBytes: 128 * MiB, deviceBytes: 512 * MiB, coldReadBytes: 8 * MiB,
    coldRuntimeCapSec: 10, fillRuntimeCapSec: 30, scoSize: '64M', watchdogMs: 5 * 60_000, settleWaitMaxMs: 5_000, pairedRounds: 1, defaultTargets: allTargets,
  },
  smoke: {
    runtimeSec: 1, rampSec: 0, regionBytes: 32 * MiB, deviceBytes: 256 * MiB, coldReadBytes: 2 * MiB,
    coldRuntimeCapSec: 10, fillRuntimeCapSec: 20, scoSize: '4M', watchdogMs: 2 * 60_000, settleWaitMaxMs: 5_000, pairedRounds: 2, defaultTargets: ['keel', 'nbdkit-memory'],
  },
};

/**
 * Jobs that Keel runs back to back with the same job on a reference nbdkit memory (running only while Keel
 * does, idle between its jobs): the reference runs right before Keel's job, after Keel's write-back is
 * done, so the pair sees the same host. Targets run minutes apart, and this VM's speed drifts over minutes.
 * In full mode each pair runs three times in a row and the report gives every round's ratio and their
 * median: one pair can still land in a fast or slow moment of either side.
 */
const pairedJobs: ReadonlySet<JobId> = new Set(['randwrite-4k-qd32', 'randread-4k-qd32']);
const pairedSubject: TargetId = 'keel';
const referenceId: TargetId = 'nbdkit-memory';

/** Jobs during which Keel's edge is sampled for RSS and CPU, and every target's processes for CPU per I/O. */
const sampledJobs: ReadonlySet<JobId> = new Set(['randwrite-4k-qd32', 'randread-4k-qd32']);
const edgeSampleIntervalMs = 200;
const execFileAsync = promisify(execFile);

function parseTargets(text: string): TargetId[] {
  const ids = text.split(',').map((s) => s.trim()).filter(Boolean);
  const unknown = ids.filter((id) => !allTargets.includes(id as TargetId));
  if (unknown.length > 0 || ids.length === 0) throw new InvalidArgumentError(`targets are a comma-separated list of ${allTargets.join(', ')}`);
  return ids as TargetId[];
}

async function main(): Promise<number> {
  const program = new Command()
    .name('npm run bench --')
    .description('Keel measured side by side with nbdkit and s3backer (docs/benchmark.md)')
    .option('--quick', 'short jobs on a small region: the whole run under 2 minutes')
    .option('--smoke', 'tiny harness check for CI (1 s jobs, Keel and nbdkit memory); figures mean nothing')
    .option('--only <targets>', `comma-separated subset of ${allTargets.join(',')}`, parseTargets)
    .option('--out <dir>', 'directory for the results', path.join(repoDir, 'bench', 'results'))
    .addOption(new Option('--placement <placement>', 'scheduler: nothing pinned; split: fio on the lowest CPU, servers on the others, Keel with --cpu-affinity spread').choices(['scheduler', 'split']).default('scheduler'))
    .parse();
  const options = program.opts<{ quick?: boolean; smoke?: boolean; only?: TargetId[]; out: string; placement: Placement }>();
  setPlacement(options.placement);
  const mode: Mode = options.smoke ? 'smoke' : options.quick ? 'quick' : 'full';
  const settings = modes[mode];
  const selected = targetSpecs.filter((t) => (options.only ?? settings.defaultTargets).includes(t.id));

  const watchdog = setTimeout(() => {
    console.error(`bench: the run exceeded ${settings.watchdogMs / 1000} s; stopping`);
    process.exit(2); // the 'exit' hook of child-processes.ts kills every child and unmounts
  }, settings.watchdogMs);
  watchdog.unref();

  const startedMs = Date.now();
  const startedAt = new Date(startedMs).toISOString();
  const root = await mkdtemp(path.join(os.tmpdir(), 'keel-bench-'));
  const targets: TargetResult[] = [];
  let ecEncode: BenchResult['ecEncode'] = { skipped: 'not reached' };
  let lbaMap: BenchResult['lbaMap'] = { skipped: 'not reached' };
  let reference: RunningTarget | undefined;
  try {
    log(`mode ${mode}: ${selected.map((t) => t.id).join(', ')}; scratch in ${root}`);
    for (const spec of selected) {
      if (spec.id !== pairedSubject) {
        targets.push(await benchTarget(spec, settings, root));
        continue;
      }
      // The reference lives only while its subject runs: the other targets do not share the host with it.
      reference = await startReference(settings, root);
      targets.push(await benchTarget(spec, settings, root, reference));
      await reference?.stop();
      reference = undefined;
    }
    ecEncode = await measureEcEncode(60_000).catch((err: Error) => ({ error: err.message }));
    lbaMap = await measureLbaMap(60_000).catch((err: Error) => ({ error: err.message }));
  } finally {
    await reference?.stop();
    await stopAll(30_000);
    if (isMountedUnder(root)) log(`warning: a mount is still under ${root}; left in place`);
    else await rm(root, { recursive: true, force: true });
  }

  const result: BenchResult = {
    schemaVersion: 1,
    mode,
    startedAt,
    wallSeconds: (Date.now() - startedMs) / 1000,
    host: await hostInfo(),
    settings: {
      runtimeSec: settings.runtimeSec,
      rampSec: settings.rampSec,
      regionBytes: settings.regionBytes,
      deviceBytes: settings.deviceBytes,
      coldReadBytes: settings.coldReadBytes,
      scoSize: settings.scoSize,
      placement: describePlacement(),
    },
    targets,
    ecEncode,
    lbaMap,
    table: buildTable(targets),
    ratioColumns: [...ratioColumns],
  };
  const files = await writeReport(result, path.resolve(options.out));
  console.log(renderMarkdown(result));
  log(`wrote ${files.json}, ${files.markdown} and ${files.latest} in ${result.wallSeconds.toFixed(0)} s`);
  return targets.some((t) => t.status === 'failed') ? 1 : 0;
}

/** The reference nbdkit memory for the paired jobs, filled like a target; undefined (and said) when it cannot run. */
async function startReference(settings: ModeSettings, root: string): Promise<RunningTarget | undefined> {
  const spec = targetSpecs.find((t) => t.id === referenceId)!;
  const reason = await spec.unavailable();
  if (reason) {
    log(`reference ${referenceId}: not available (${reason}); no paired jobs`);
    return undefined;
  }
  const workDir = path.join(root, 'reference');
  await mkdir(workDir);
  let running: RunningTarget | undefined;
  try {
    running = await spec.start({ workDir, deviceBytes: settings.deviceBytes, regionBytes: settings.regionBytes, scoSize: settings.scoSize });
    await runFio(fillJob, running.uri(), settings, workDir);
  } catch (err) {
    // Without the reference the run goes on; the report then simply has no paired section.
    log(`reference ${referenceId}: could not start and fill (${(err as Error).message}); no paired jobs`);
    await running?.stop();
    return undefined;
  }
  log(`reference ${referenceId}: started and filled, for the paired jobs of ${pairedSubject}`);
  return running;
}

async function benchTarget(spec: TargetSpec, settings: ModeSettings, root: string, reference?: RunningTarget): Promise<TargetResult> {
  const result: TargetResult = { id: spec.id, label: spec.label, method: spec.method, status: 'ok', jobs: {} };
  const reason = await spec.unavailable();
  if (reason) {
    log(`${spec.id}: not available: ${reason}`);
    return { ...result, status: 'skipped', note: `Not available: ${reason}.` };
  }
  const workDir = path.join(root, spec.id);
  await mkdir(workDir);
  let running: RunningTarget;
  try {
    running = await spec.start({ workDir, deviceBytes: settings.deviceBytes, regionBytes: settings.regionBytes, scoSize: settings.scoSize });
    log(`${spec.id}: started`);
  } catch (err) {
    log(`${spec.id}: failed to start: ${(err as Error).message}`);
    return { ...result, status: 'failed', note: `Failed to start: ${firstLine(err)}` };
  }
  try {
    // The timed jobs must find the whole region written (and, on a target with a bounded cache such as
    // s3backer or Keel on S3, that cache already full): a fill cut short by its cap is said in the report.
    const fill = await runFio(fillJob, running.uri(), settings, workDir);
    const filledBytes = fill.ios * MiB;
    log(`${spec.id}: fill: ${(filledBytes / MiB).toFixed(0)} of ${settings.regionBytes / MiB} MiB at ${fill.mibPerSec.toFixed(1)} MiB/s`);
    if (filledBytes < settings.regionBytes) result.note = `The fill wrote only ${(filledBytes / MiB).toFixed(0)} of ${settings.regionBytes / MiB} MiB within its ${settings.fillRuntimeCapSec} s cap.`;
    for (const job of jobMatrix) {
      if (spec.only && !spec.only.jobs.includes(job.id as JobId)) result.jobs[job.id as JobId] = { skipped: spec.only.why };
      else await runJob(job, running, settings, workDir, result, reference);
    }
    if (running.defragment) result.seqReadAfterDefrag = await seqReadAfterDefrag(running, settings, workDir, result);
  } catch (err) {
    result.status = 'failed';
    result.note = firstLine(err);
    log(`${spec.id}: ${(err as Error).message}`);
    logTailOf(running, spec.id);
  } finally {
    await running.stop();
  }
  if (Object.values(result.jobs).some((o) => o && 'error' in o)) result.status = 'failed';
  return result;
}

async function runJob(job: FioJob, running: RunningTarget, settings: ModeSettings, workDir: string, result: TargetResult, reference?: RunningTarget): Promise<void> {
  const id = job.id as JobId;
  const pairedWith = reference && pairedJobs.has(id) ? reference : undefined;
  if (running.settle) {
    const settled = await settle(running.settle, job.label, settings, result);
    if (settled) (result.settled ??= {})[id] = settled;
  }
  const firstReference = pairedWith ? await runReferenceJob(job, pairedWith, settings, workDir, result) : undefined;
  if (id === 'randread-4k-qd32-cold') {
    if (!running.makeCold) {
      result.jobs[id] = { skipped: 'no slower tier behind a cache to read from' };
      return;
    }
    result.coldMethod = await running.makeCold();
  }
  const backendBefore = id === 'randread-4k-qd32-cold' && running.backendPid ? writtenBytes(running.backendPid) : undefined;
  const sampled = sampledJobs.has(id);
  const rampMs = settings.rampSec * 1000;
  const processes = sampled ? await serverProcesses(running, result.id) : [];
  const edge = processes.find((p) => p.role === 'edge');
  const sampler = edge ? afterDelay(() => sampleProcess(edge.pid, edgeSampleIntervalMs), rampMs) : undefined;
  const cpuSampler = processes.length > 0 ? afterDelay(() => sampleCpuShares(processes), rampMs) : undefined;
  try {
    const figures = await runFio(job, running.uri(), settings, workDir);
    result.jobs[id] = { figures };
    const usage = sampler?.stop();
    if (usage) (result.edgeUsage ??= {})[id] = { ...usage, cpuCoresPer10kIops: usage.cpuCores / (figures.iops / 10_000) };
    const shares = cpuSampler?.stop();
    if (shares) (result.cpuPerIo ??= {})[id] = cpuPerIo(shares, figures);
    if (backendBefore !== undefined) result.backendBytesPerColdRead = (writtenBytes(running.backendPid!) - backendBefore) / figures.ios;
    log(`${result.id}: ${job.label}: ${figures.iops.toFixed(0)} IOPS, ${figures.mibPerSec.toFixed(1)} MiB/s, p50 ${figures.p50LatencyUs.toFixed(0)} µs, p99 ${figures.p99LatencyUs.toFixed(0)} µs`);
  } catch (err) {
    sampler?.stop();
    cpuSampler?.stop();
    result.jobs[id] = { error: firstLine(err) };
    log(`${result.id}: ${job.label}: ${(err as Error).message}`);
    logTailOf(running, result.id);
  }
  if (pairedWith && firstReference) {
    const rounds: PairedRound[] = [{ reference: firstReference, subject: result.jobs[id]! }];
    (result.pairedRounds ??= {})[id] = rounds;
    for (let round = 2; round <= settings.pairedRounds; round++) rounds.push(await runPairedRound(job, round, running, pairedWith, settings, workDir, result));
  }
}

/**
 * After the last job: `keel scrub --defrag`, the write-back it leaves, then the 1M sequential read job again.
 * The main table keeps the read as random writes and the ordinary scrub leave the volume; this figure shows
 * what a user who defragments gets (docs/snapshots.md, "Scrubbing").
 */
async function seqReadAfterDefrag(running: RunningTarget, settings: ModeSettings, workDir: string, result: TargetResult): Promise<TargetResult['seqReadAfterDefrag']> {
  const job = jobMatrix.find((j) => j.id === 'seqread-1m')!;
  let defrag: string;
  try {
    defrag = await running.defragment!(defragWaitMaxMs);
  } catch (err) {
    log(`${result.id}: keel scrub --defrag: ${(err as Error).message}`);
    return { defrag: 'failed', outcome: { error: firstLine(err) } };
  }
  log(`${result.id}: keel scrub --defrag: ${defrag}`);
  if (running.settle) await settle(running.settle, `${job.label} after defrag`, settings, result);
  return { defrag, outcome: await pairedOutcome(job, running.uri(), settings, workDir, `${result.id}: ${job.label} after defrag`) };
}

/** A defrag of 256 MiB from s3rver took 8.8-9.1 s (scratch defrag-s3.sh): the full bench's 1 GiB region, about four times that. */
const defragWaitMaxMs = 300_000;

/** One more round of a paired job, after round 1 (which is the target's job in the main table). */
async function runPairedRound(job: FioJob, round: number, running: RunningTarget, reference: RunningTarget, settings: ModeSettings, workDir: string, result: TargetResult): Promise<PairedRound> {
  if (running.settle) await settle(running.settle, `${job.label} round ${round}`, settings, result);
  const referenceOutcome = await runReferenceJob(job, reference, settings, workDir, result);
  const subject = await pairedOutcome(job, running.uri(), settings, workDir, `${result.id}: ${job.label}: round ${round}`);
  return { reference: referenceOutcome, subject };
}

function runReferenceJob(job: FioJob, reference: RunningTarget, settings: ModeSettings, workDir: string, result: TargetResult): Promise<JobOutcome> {
  return pairedOutcome(job, reference.uri(), settings, workDir, `${result.id}: ${job.label}: reference ${referenceId} just before`);
}

/** One run of a paired job: its figures, or its error; either is logged after `what`. */
async function pairedOutcome(job: FioJob, uri: string, settings: ModeSettings, workDir: string, what: string): Promise<JobOutcome> {
  try {
    const figures = await runFio(job, uri, settings, workDir);
    log(`${what}: ${figures.iops.toFixed(0)} IOPS`);
    return { figures };
  } catch (err) {
    log(`${what}: ${(err as Error).message}`);
    return { error: firstLine(err) };
  }
}

/** What the target printed last (its warnings and errors): the explanation of a failure. */
function logTailOf(running: RunningTarget, id: string): void {
  const tail = running.logTail?.(20);
  if (tail) log(`${id}: last lines of its log:\n${tail}`);
}

/** Waits for the target's write-back before the job named `what`; undefined when it cannot tell. */
async function settle(settleTarget: NonNullable<RunningTarget['settle']>, what: string, settings: ModeSettings, result: TargetResult): Promise<Settled | undefined> {
  try {
    const settled = await settleTarget(settings.settleWaitMaxMs);
    if (settled.pending) log(`${result.id}: before ${what}: waited ${(settled.waitedMs / 1000).toFixed(1)} s for ${settled.pending}${settled.quiet ? '' : ' (still busy)'}`);
    return settled;
  } catch (err) {
    // Not knowing whether the target is quiet does not stop the job: it runs, and the log says why.
    log(`${result.id}: before ${what}: could not tell whether write-back is done: ${(err as Error).message}`);
    return undefined;
  }
}

/** Starts a sampler after the ramp, so its figures cover the measured window only; undefined if stopped before. */
function afterDelay<T>(start: () => { stop(): T }, delayMs: number): { stop(): T | undefined } {
  let sampler: { stop(): T } | undefined;
  const timer = setTimeout(() => (sampler = start()), delayMs);
  if (delayMs === 0) {
    clearTimeout(timer);
    sampler = start();
  }
  return {
    stop() {
      clearTimeout(timer);
      return sampler?.stop();
    },
  };
}

/** The target's processes to sample, or none when it names none or cannot say (the job runs regardless). */
async function serverProcesses(running: RunningTarget, targetId: string): Promise<RoleProcess[]> {
  try {
    return (await running.processes?.()) ?? [];
  } catch (err) {
    log(`${targetId}: could not list its processes for CPU per I/O: ${(err as Error).message}`);
    return [];
  }
}

/** CPU shares over the measured window as microseconds of CPU per completed I/O. */
function cpuPerIo(shares: CpuShares, figures: { iops: number; cpuPercent?: number }): CpuPerIo {
  const usPerIo = (cores: number) => (cores / figures.iops) * 1e6;
  return {
    processes: shares.processes.map((p) => ({ role: p.role, usPerIo: usPerIo(p.cpuCores) })),
    ...(figures.cpuPercent !== undefined ? { fioUsPerIo: usPerIo(figures.cpuPercent / 100) } : {}),
    machineIdleShare: shares.machineIdleShare,
  };
}

async function hostInfo(): Promise<BenchResult['host']> {
  const fio = await execFileAsync('fio', ['--version'], { timeout: 5000 }).then((r) => r.stdout.trim(), () => 'fio (version unknown)');
  // Which build of Keel ran: the bundle in dist/ or the TypeScript sources (bin/keel.js).
  const keel = await execFileAsync(process.execPath, [path.join(repoDir, 'bin', 'keel.js'), '--version'], { timeout: 30_000 }).then((r) => r.stdout.trim(), () => 'unknown');
  return { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model ?? 'unknown', kernel: os.release(), node: process.version, fio, keel };
}

function isMountedUnder(root: string): boolean {
  return targetSpecs.some((t) => isMounted(path.join(root, t.id, 's3backer-mount')));
}

function firstLine(err: unknown): string {
  return ((err as Error).message ?? String(err)).split('\n')[0].slice(0, 300);
}

const processStartMs = Date.now();
function log(message: string): void {
  console.error(`bench [${((Date.now() - processStartMs) / 1000).toFixed(0).padStart(3)} s]: ${message}`);
}

try {
  process.exitCode = await main();
} catch (err) {
  console.error(`bench: ${(err as Error).stack ?? err}`);
  await stopAll(5000);
  process.exitCode = 2;
}
