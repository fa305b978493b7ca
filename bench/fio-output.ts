/**
 * Parser for fio's `--output-format=json` result (fio 3.x): the figures the benchmark reports for one
 * single-job run. Pure: no I/O. Latencies are fio's completion latencies (clat), in microseconds.
 */

export interface FioFigures {
  /** Completed I/Os per second over the measured time (after ramp). */
  iops: number;
  mibPerSec: number;
  /** Completed I/Os, for per-I/O figures (backend bytes per cold read). */
  ios: number;
  meanLatencyUs: number;
  p50LatencyUs: number;
  p99LatencyUs: number;
  runtimeMs: number;
  /** fio's own CPU (user + system) over the job, in % of one core (absent in results before 2026-11-23). */
  cpuPercent?: number;
}

interface FioDirection {
  iops: number;
  bw: number; // KiB/s
  total_ios: number;
  runtime: number; // ms
  clat_ns?: { mean: number; percentile?: Record<string, number> };
}

interface FioJob {
  error: number;
  usr_cpu?: number;
  sys_cpu?: number;
  read: FioDirection;
  write: FioDirection;
}

export function parseFioJson(text: string, direction: 'read' | 'write'): FioFigures {
  // fio may print notes before the JSON object (e.g. "fio: ..." warnings) even with --output.
  const start = text.indexOf('{');
  if (start < 0) throw new Error(`fio output holds no JSON: ${text.slice(0, 200)}`);
  const parsed = JSON.parse(text.slice(start)) as { jobs?: FioJob[] };
  const job = parsed.jobs?.[0];
  if (!job) throw new Error('fio JSON holds no job');
  if (job.error !== 0) throw new Error(`fio job failed with error ${job.error}`);
  const figures = job[direction];
  if (!figures || figures.total_ios === 0) throw new Error(`fio completed no ${direction} I/O`);
  const percentile = figures.clat_ns?.percentile ?? {};
  const nsToUs = (ns: number | undefined) => (ns === undefined ? Number.NaN : ns / 1000);
  return {
    iops: figures.iops,
    mibPerSec: figures.bw / 1024,
    ios: figures.total_ios,
    meanLatencyUs: nsToUs(figures.clat_ns?.mean),
    p50LatencyUs: nsToUs(percentile['50.000000']),
    p99LatencyUs: nsToUs(percentile['99.000000']),
    runtimeMs: figures.runtime,
    ...(job.usr_cpu !== undefined && job.sys_cpu !== undefined ? { cpuPercent: job.usr_cpu + job.sys_cpu } : {}),
  };
}
