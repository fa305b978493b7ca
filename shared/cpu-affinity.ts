/**
 * Pins a Keel process's event loop to CPUs (docs/cpu-affinity.md). Node has no call for sched_setaffinity,
 * so this runs util-linux's `taskset -p -c LIST PID` on itself, which pins the main thread only. libuv's
 * thread pool (disk reads and writes, erasure coding) is started first, so that its threads, which would
 * otherwise inherit the main thread's CPUs, stay free to run on any: a router's cold reads wait on many
 * pool reads at once. Pinning is a performance setting: a CPU the process may not use is a BAD_ARGUMENT,
 * but a host where taskset is missing or fails keeps running unpinned, with a warning.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { KeelError } from './errors.ts';
import { limits } from './limits.ts';
import type { Logger } from './logger.ts';
import { formatCpuList, parseCpuList } from './cpu-list.ts';

/** What pinning touches on the host; tests replace it. */
export interface AffinityHost {
  /** This process's /proc/self/status. */
  readStatus(): string;
  /** Runs taskset with these arguments; rejects when it cannot be run or fails. */
  runTaskset(args: string[]): Promise<void>;
  /** Makes libuv start its thread pool (all of its threads start at the first queued job). */
  startThreadPool(): Promise<void>;
}

export const linuxAffinityHost: AffinityHost = {
  readStatus: () => readFileSync('/proc/self/status', 'utf8'),
  startThreadPool: async () => {
    await stat('/');
  },
  runTaskset: (args) =>
    new Promise((resolve, reject) => {
      execFile('taskset', args, { timeout: limits.cpuPinTimeoutMs }, (err, _stdout, stderr) => {
        if (err) reject(new Error(stderr.trim() || err.message));
        else resolve();
      });
    }),
};

/** The CPUs this process may run on (its Cpus_allowed_list); undefined when the host does not say. */
export function allowedCpus(host: AffinityHost = linuxAffinityHost): number[] | undefined {
  let status: string;
  try {
    status = host.readStatus();
  } catch {
    return undefined; // not Linux
  }
  const line = /^Cpus_allowed_list:\s*(\S+)\s*$/m.exec(status);
  return line === null ? undefined : parseCpuList(line[1]!, 'Cpus_allowed_list');
}

/** Pins this process to `cpus`; true when it is now pinned. */
export async function pinThisProcess(cpus: readonly number[], logger: Logger, host: AffinityHost = linuxAffinityHost): Promise<boolean> {
  const allowed = allowedCpus(host);
  const list = formatCpuList(cpus);
  if (allowed !== undefined) {
    const missing = cpus.filter((cpu) => !allowed.includes(cpu));
    if (missing.length > 0)
      throw KeelError.badArgument(`--cpus ${list}: CPU ${formatCpuList(missing)} is not available to this process (it may use ${formatCpuList(allowed)})`, {
        cpus: list,
        allowed: formatCpuList(allowed),
      });
  }
  try {
    await host.startThreadPool();
    await host.runTaskset(['-p', '-c', list, String(process.pid)]);
  } catch (err) {
    logger.warn({ cpus: list, err: (err as Error).message }, 'could not pin to CPUs (taskset, from util-linux): running unpinned');
    return false;
  }
  logger.info({ cpus: list }, 'pinned to CPUs');
  return true;
}
