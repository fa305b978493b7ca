/**
 * Where the bench runs the NBD client and the servers (docs/benchmark.md, "Placement"). `scheduler` (the
 * default) pins nothing. `split` runs fio on the lowest CPU, every baseline server (nbdkit, the Node
 * relay, s3backer, s3rver) on the other CPUs, and Keel with `keel up --cpu-affinity spread`: its edge,
 * the client-side process, on fio's CPU and its routers from the highest CPU down (docs/cpu-affinity.md).
 */
import { allowedCpus } from '../shared/cpu-affinity.ts';
import { formatCpuList } from '../shared/cpu-list.ts';

export type Placement = 'scheduler' | 'split';
export type ProcessRole = 'client' | 'server';

/** The CPUs of each role under `split`; undefined under `scheduler`. */
let cpusOf: Record<ProcessRole, string> | undefined;

/** Sets the placement of the whole run; `split` needs at least two CPUs. */
export function setPlacement(placement: Placement): void {
  cpusOf = undefined;
  if (placement === 'scheduler') return;
  const cpus = allowedCpus() ?? [];
  if (cpus.length < 2) throw new Error(`--placement split needs at least 2 CPUs; this process may use ${formatCpuList(cpus) || 'an unknown set'}`);
  cpusOf = { client: String(cpus[0]), server: formatCpuList(cpus.slice(1)) };
}

/** The command that starts `file args` as a process of `role`: under taskset when placed. */
export function placed(role: ProcessRole, file: string, args: string[]): [string, string[]] {
  return cpusOf === undefined ? [file, args] : ['taskset', ['-c', cpusOf[role], file, ...args]];
}

/** Extra `keel up` options for this placement. */
export function keelUpPlacementArgs(): string[] {
  return cpusOf === undefined ? [] : ['--cpu-affinity', 'spread'];
}

export function describePlacement(): string {
  if (cpusOf === undefined) return 'scheduler: nothing pinned';
  return `split: fio on CPU ${cpusOf.client}, baseline servers on CPUs ${cpusOf.server}, Keel with keel up --cpu-affinity spread (edge on CPU ${cpusOf.client} with fio, routers from the highest CPU down)`;
}
