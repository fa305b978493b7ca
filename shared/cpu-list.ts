/**
 * CPU lists as Linux writes them (`0-3,6`, taskset -c, /proc/PID/status Cpus_allowed_list) and how
 * `keel up` spreads its processes over them (docs/cpu-affinity.md). Pure: no I/O.
 */
import { KeelError } from './errors.ts';

/** CPU numbers above this are refused as typos (Linux's default NR_CPUS is 8192 at most). */
const cpuNumberMax = 8191;

/** Sorted, distinct CPU numbers of a list like `0-3,6`; BAD_ARGUMENT when it is malformed or empty. */
export function parseCpuList(text: string, what = 'CPU list'): number[] {
  const cpus = new Set<number>();
  const trimmed = text.trim();
  if (trimmed === '') throw KeelError.badArgument(`${what} is empty: give CPUs like 0-3,6`);
  for (const part of trimmed.split(',')) {
    const match = /^(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (match === null) throw KeelError.badArgument(`${what} '${text}': '${part}' is not a CPU number or a range like 2-5`);
    const first = Number(match[1]);
    const last = match[2] === undefined ? first : Number(match[2]);
    if (last < first) throw KeelError.badArgument(`${what} '${text}': range ${part} runs backwards`);
    if (last > cpuNumberMax) throw KeelError.badArgument(`${what} '${text}': CPU ${last} is above ${cpuNumberMax}`);
    for (let cpu = first; cpu <= last; cpu++) cpus.add(cpu);
  }
  return [...cpus].sort((a, b) => a - b);
}

/** The shortest list form: consecutive CPUs become ranges. */
export function formatCpuList(cpus: readonly number[]): string {
  const parts: string[] = [];
  for (let i = 0; i < cpus.length; ) {
    let j = i;
    while (j + 1 < cpus.length && cpus[j + 1] === cpus[j]! + 1) j++;
    parts.push(j === i ? String(cpus[i]) : `${cpus[i]}-${cpus[j]}`);
    i = j + 1;
  }
  return parts.join(',');
}

/**
 * One CPU for each of `processCount` processes, taken in turn from `cpus` in the order given (the first
 * process gets the first CPU). Undefined for all when there are fewer than two CPUs to spread over.
 */
export function spreadOverCpus(processCount: number, cpus: readonly number[]): Array<number | undefined> {
  if (cpus.length < 2) return new Array<undefined>(processCount).fill(undefined);
  return Array.from({ length: processCount }, (_, i) => cpus[i % cpus.length]!);
}
