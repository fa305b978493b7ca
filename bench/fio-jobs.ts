/**
 * The fio job matrix (issue 6, part 1) and one bounded fio run through the `nbd` engine. Every job works
 * on the same region at the start of the export, which `fillJob` writes once beforehand, so reads hit
 * written data on every target (an unwritten cluster reads as zeros without I/O on Keel and nbdkit).
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { placed } from './placement.ts';
import { spawnTracked, stopTracked } from './child-processes.ts';
import { parseFioJson, type FioFigures } from './fio-output.ts';

export type JobId = 'seqwrite-1m' | 'randwrite-4k-qd32' | 'randwrite-4k-qd1' | 'randread-4k-qd32' | 'seqread-1m' | 'randread-4k-qd32-cold';

export interface FioJob {
  id: JobId | 'fill';
  label: string;
  rw: 'write' | 'read' | 'randwrite' | 'randread';
  blockSize: '4k' | '1M';
  iodepth: number;
  /** timed: loops over the region for runtime seconds; once: each block at most once (cold reads, fill). */
  pacing: 'timed' | 'once';
}

export interface FioSettings {
  runtimeSec: number;
  rampSec: number;
  regionBytes: number;
  /** Bytes a cold read job reads (each 4 KiB cluster once, random order), capped by coldRuntimeCapSec. */
  coldReadBytes: number;
  coldRuntimeCapSec: number;
  fillRuntimeCapSec: number;
}

export const fillJob: FioJob = { id: 'fill', label: 'fill the region (1M sequential, not reported)', rw: 'write', blockSize: '1M', iodepth: 8, pacing: 'once' };

/** In run order: writes first, then reads of what they wrote; the cold read comes last (it restarts things). */
export const jobMatrix: readonly FioJob[] = [
  { id: 'seqwrite-1m', label: '1M sequential write QD8', rw: 'write', blockSize: '1M', iodepth: 8, pacing: 'timed' },
  { id: 'randwrite-4k-qd32', label: '4k random write QD32', rw: 'randwrite', blockSize: '4k', iodepth: 32, pacing: 'timed' },
  { id: 'randwrite-4k-qd1', label: '4k random write QD1', rw: 'randwrite', blockSize: '4k', iodepth: 1, pacing: 'timed' },
  { id: 'randread-4k-qd32', label: '4k random read QD32 (cache hit)', rw: 'randread', blockSize: '4k', iodepth: 32, pacing: 'timed' },
  { id: 'seqread-1m', label: '1M sequential read QD8', rw: 'read', blockSize: '1M', iodepth: 8, pacing: 'timed' },
  { id: 'randread-4k-qd32-cold', label: '4k random read QD32 (cold, after restart)', rw: 'randread', blockSize: '4k', iodepth: 32, pacing: 'once' },
];

export function directionOf(job: FioJob): 'read' | 'write' {
  return job.rw === 'read' || job.rw === 'randread' ? 'read' : 'write';
}

/** fio's command line for `job` against `uri`; the JSON result goes to outputFile. */
export function fioArgs(job: FioJob, uri: string, settings: FioSettings, outputFile: string): string[] {
  const args = [
    `--name=${job.id}`,
    '--ioengine=nbd',
    `--uri=${uri}`,
    `--rw=${job.rw}`,
    `--bs=${job.blockSize}`,
    `--iodepth=${job.iodepth}`,
    `--size=${settings.regionBytes}`,
    '--output-format=json',
    `--output=${outputFile}`,
  ];
  if (job.pacing === 'timed') {
    args.push('--time_based', `--runtime=${fioTime(settings.runtimeSec)}`, `--ramp_time=${fioTime(settings.rampSec)}`);
    if (job.rw.startsWith('rand')) args.push('--norandommap', '--randrepeat=0');
  } else if (job.id === 'fill') {
    args.push(`--runtime=${settings.fillRuntimeCapSec}`);
  } else {
    // The random map makes fio touch each block at most once: every read is a first read since the restart.
    args.push(`--io_size=${settings.coldReadBytes}`, `--runtime=${settings.coldRuntimeCapSec}`, '--randrepeat=0');
  }
  return args;
}

/** fio's time options take a unit suffix: milliseconds keep fractional seconds. */
function fioTime(seconds: number): string {
  return `${Math.round(seconds * 1000)}ms`;
}

/** Longest a job may take before fio is killed: its own runtime plus start-up and connection slack. */
export function fioTimeoutMs(job: FioJob, settings: FioSettings): number {
  const ownSec = job.pacing === 'timed' ? settings.runtimeSec + settings.rampSec : job.id === 'fill' ? settings.fillRuntimeCapSec : settings.coldRuntimeCapSec;
  return (ownSec + 30) * 1000;
}

export async function runFio(job: FioJob, uri: string, settings: FioSettings, workDir: string): Promise<FioFigures> {
  const outputFile = path.join(workDir, `fio-${job.id}-${Date.now()}.json`);
  const fio = spawnTracked(`fio ${job.id}`, ...placed('client', 'fio', fioArgs(job, uri, settings, outputFile)));
  const timeoutMs = fioTimeoutMs(job, settings);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    void stopTracked(fio, 2000);
  }, timeoutMs);
  const code = await fio.exited;
  clearTimeout(timer);
  if (timedOut) throw new Error(`fio ${job.id} did not finish within ${timeoutMs} ms`);
  if (code !== 0) throw new Error(`fio ${job.id} exited with ${code}: ${fio.output().trim().slice(-800)}`);
  return parseFioJson(await readFile(outputFile, 'utf8'), directionOf(job));
}
