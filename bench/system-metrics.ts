/**
 * The figures of issue 6 part 2 that are not fio's: CPU and RSS of a process sampled from /proc while a
 * job runs (the edge), the CPU of every server process of a target and the machine's idle share over a
 * job (where the CPU goes), bytes a process wrote to its sockets and files (/proc/PID/io, for the backend bytes
 * fetched per cold read), and the two micro-benchmarks next to this file (EC encode, LBA map RAM), run as
 * children and parsed from their output.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { spawnTracked, stopTracked } from './child-processes.ts';

export interface ProcessUsage {
  /** CPU time (user + system) divided by wall time: 1.0 = one core busy. */
  cpuCores: number;
  rssMeanBytes: number;
  rssPeakBytes: number;
  samples: number;
}

const clockTicksPerSec = 100; // USER_HZ: 100 on every Linux architecture Node.js runs on
const benchDir = path.dirname(fileURLToPath(import.meta.url));
const repoDir = path.dirname(benchDir);

function readCpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the parenthesised command name (which may itself hold spaces); utime and stime are 14, 15.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

function readRssBytes(pid: number): number {
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return match ? Number(match[1]) * 1024 : 0;
}

/** Samples pid every intervalMs until stop(); a process that vanished yields undefined. */
export function sampleProcess(pid: number, intervalMs: number): { stop(): ProcessUsage | undefined } {
  let alive = true;
  const rss: number[] = [];
  const read = () => {
    try {
      rss.push(readRssBytes(pid));
      return readCpuTicks(pid);
    } catch {
      alive = false;
      return 0;
    }
  };
  const startTicks = read();
  const startMs = performance.now();
  const timer = setInterval(read, intervalMs);
  return {
    stop() {
      clearInterval(timer);
      const endTicks = read();
      const wallSec = (performance.now() - startMs) / 1000;
      if (!alive || wallSec <= 0 || rss.length === 0) return undefined;
      return {
        cpuCores: (endTicks - startTicks) / clockTicksPerSec / wallSec,
        rssMeanBytes: rss.reduce((a, b) => a + b, 0) / rss.length,
        rssPeakBytes: Math.max(...rss),
        samples: rss.length,
      };
    },
  };
}

/** A server process of a target, named by its part in the chain (`edge`, `owner r1`, `relay 1`, `nbdkit`). */
export interface RoleProcess {
  role: string;
  pid: number;
}

export interface CpuShares {
  /** Per process that lived through the window: CPU time (user + system, all threads) / wall time. */
  processes: Array<{ role: string; cpuCores: number }>;
  /** Share of all cores' time spent idle or in iowait over the window (/proc/stat). */
  machineIdleShare: number;
}

/** idle + iowait and the total, in jiffies, over all cores (the first line of /proc/stat). */
function readMachineTicks(): { idle: number; total: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!;
  const fields = line.trim().split(/\s+/).slice(1, 9).map(Number);
  return { idle: fields[3]! + fields[4]!, total: fields.reduce((a, b) => a + b, 0) };
}

/** CPU of each process and the machine's idle share from now until stop(); a process gone by then is left out. */
export function sampleCpuShares(processes: readonly RoleProcess[]): { stop(): CpuShares } {
  const ticksOf = (pid: number) => {
    try {
      return readCpuTicks(pid);
    } catch {
      return undefined;
    }
  };
  const start = processes.map((p) => ticksOf(p.pid));
  const machineStart = readMachineTicks();
  const startMs = performance.now();
  return {
    stop() {
      const wallSec = (performance.now() - startMs) / 1000;
      const machineEnd = readMachineTicks();
      const shares: CpuShares['processes'] = [];
      processes.forEach((p, index) => {
        const end = ticksOf(p.pid);
        if (start[index] === undefined || end === undefined || wallSec <= 0) return;
        shares.push({ role: p.role, cpuCores: (end - start[index]!) / clockTicksPerSec / wallSec });
      });
      const total = machineEnd.total - machineStart.total;
      return { processes: shares, machineIdleShare: total > 0 ? (machineEnd.idle - machineStart.idle) / total : 0 };
    },
  };
}

/** The pid whose command line holds every one of `words` (e.g. ['keel.js', 'edge', '--data', dir]). */
export function findProcess(words: string[]): number | undefined {
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let argv: string[];
    try {
      argv = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
    } catch {
      continue;
    }
    if (words.every((word) => argv.some((arg) => arg === word || arg.endsWith(`/${word}`)))) return Number(entry);
  }
  return undefined;
}

/** Bytes the process has passed to write()/send() so far, sockets included (/proc/PID/io wchar). */
export function writtenBytes(pid: number): number {
  const match = /^wchar:\s+(\d+)$/m.exec(readFileSync(`/proc/${pid}/io`, 'utf8'));
  if (!match) throw new Error(`no wchar in /proc/${pid}/io`);
  return Number(match[1]);
}

export interface EcEncodeFigures {
  /** `k+m` → MiB/s of object data encoded with one stripe in flight (one threadpool core). */
  mibPerSecPerCore: Record<string, number>;
}

export interface LbaMapFigures {
  /** Pattern label as the micro-benchmark prints it → mapped clusters and RAM bytes per mapped cluster. */
  patterns: Record<string, { mapped: number; bytesPerCluster: number }>;
}

async function runBenchScript(script: string, timeoutMs: number): Promise<string> {
  const child = spawnTracked(script, process.execPath, ['--import', 'tsx', path.join(benchDir, script)], { ...process.env });
  const timer = setTimeout(() => void stopTracked(child, 1000), timeoutMs);
  const code = await child.exited;
  clearTimeout(timer);
  if (code !== 0) throw new Error(`${script} exited with ${code}: ${child.output().slice(-500)}`);
  return child.output();
}

/** Runs bench/ec-encode.ts and keeps its "k+m: N MiB/s per core" lines. */
export async function measureEcEncode(timeoutMs: number): Promise<EcEncodeFigures> {
  const output = await runBenchScript('ec-encode.ts', timeoutMs);
  const mibPerSecPerCore: Record<string, number> = {};
  for (const match of output.matchAll(/^(\d+\+\d+): (\d+(?:\.\d+)?) MiB\/s per core/gm)) mibPerSecPerCore[match[1]] = Number(match[2]);
  if (Object.keys(mibPerSecPerCore).length === 0) throw new Error(`ec-encode.ts printed no figure: ${output.slice(0, 300)}`);
  return { mibPerSecPerCore };
}

/** Runs bench/lba-map-memory.ts (the router's own LbaMap class) and keeps mapped count and bytes/cluster. */
export async function measureLbaMap(timeoutMs: number): Promise<LbaMapFigures> {
  const output = await runBenchScript('lba-map-memory.ts', timeoutMs);
  const patterns: LbaMapFigures['patterns'] = {};
  for (const match of output.matchAll(/^(\S.*?)\s{2,}.*?mapped (\d+)\s+(\d+(?:\.\d+)?) B\/cluster/gm)) {
    patterns[match[1].trim()] = { mapped: Number(match[2]), bytesPerCluster: Number(match[3]) };
  }
  if (Object.keys(patterns).length === 0) throw new Error(`lba-map-memory.ts printed no figure: ${output.slice(0, 300)}`);
  return { patterns };
}

export { repoDir };
