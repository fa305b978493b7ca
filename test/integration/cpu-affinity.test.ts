/**
 * CPU affinity with real processes (docs/cpu-affinity.md): `keel up --cpu-affinity spread` pins the event
 * loop of the edge and of each router as planned while their thread pools stay free, the default leaves
 * them to the scheduler, and a hand-started edge refuses a CPU it may not use.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { allowedCpus } from '../../shared/cpu-affinity.ts';
import { formatCpuList } from '../../shared/cpu-list.ts';
import { KeelCluster } from '../helpers/keel-cluster.ts';
import { childrenOf, commandLineOf, freePort, runKeel } from '../helpers/processes.ts';

/** Cpus_allowed_list of the main thread (the event loop). */
function mainThreadCpuList(pid: number): string {
  return /^Cpus_allowed_list:\s*(\S+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]!;
}

/** Cpus_allowed_list of every thread of a process (distinct values). */
function threadCpuLists(pid: number): string[] {
  const lists = new Set<string>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    const status = readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8');
    lists.add(/^Cpus_allowed_list:\s*(\S+)/m.exec(status)![1]!);
  }
  return [...lists];
}

/** The `keel up` children by role: 'edge', 'r1', 'r2', ... */
function childrenByRole(upPid: number): Map<string, number> {
  const roles = new Map<string, number>();
  for (const pid of childrenOf(upPid)) {
    const words = commandLineOf(pid);
    if (words.includes('edge')) roles.set('edge', pid);
    const id = words.indexOf('--id');
    if (words.includes('router') && id >= 0) roles.set(words[id + 1]!, pid);
  }
  return roles;
}

const allowed = allowedCpus() ?? [];
let cluster: KeelCluster | undefined;

afterEach(async () => {
  await cluster?.stop();
  await cluster?.destroy();
  cluster = undefined;
});

describe('CPU affinity', () => {
  it('keel up --cpu-affinity spread puts the edge on the lowest CPU and the routers from the highest down; thread pools stay free', async () => {
    cluster = await KeelCluster.start({ routers: 3, upArgs: ['--cpu-affinity', 'spread'] });
    const roles = childrenByRole(cluster.upPid!);
    expect([...roles.keys()].sort()).toEqual(['edge', 'r1', 'r2', 'r3']);
    if (allowed.length < 2) {
      for (const pid of roles.values()) expect(threadCpuLists(pid)).toEqual([formatCpuList(allowed)]);
      return;
    }
    const highestFirst = [...allowed].reverse();
    const planned = new Map([['edge', allowed[0]!], ...[0, 1, 2].map((i): [string, number] => [`r${i + 1}`, highestFirst[i % highestFirst.length]!])]);
    for (const [role, cpu] of planned) {
      const pid = roles.get(role)!;
      expect(mainThreadCpuList(pid), role).toBe(String(cpu));
      // The other threads (libuv's pool among them) were started before the pinning and keep every CPU.
      expect(threadCpuLists(pid).sort(), role).toEqual([String(cpu), formatCpuList(allowed)].sort());
    }
  }, 120_000);

  it('by default leaves every process on all the CPUs it may use', async () => {
    cluster = await KeelCluster.start({ routers: 2 });
    const roles = childrenByRole(cluster.upPid!);
    expect(roles.size).toBe(3);
    for (const [role, pid] of roles) expect(threadCpuLists(pid), role).toEqual([formatCpuList(allowed)]);
  }, 120_000);

  it('a hand-started edge refuses a CPU it may not use, and a malformed list, with a clear error', async () => {
    const dataDir = await mkdtemp(path.join(os.tmpdir(), 'keel-cpus-'));
    try {
      const port = String(await freePort());
      const unavailable = await runKeel(['edge', '--data', dataDir, '--port', port, '--cpus', String(Math.max(...allowed, 0) + 1)]);
      expect(unavailable.code).not.toBe(0);
      expect(unavailable.stderr).toMatch(/CPU \d+ is not available to this process/);
      const malformed = await runKeel(['edge', '--data', dataDir, '--port', port, '--cpus', '1-x']);
      expect(malformed.code).not.toBe(0);
      expect(malformed.stderr).toMatch(/--cpus '1-x': '1-x' is not a CPU number or a range/);
      const badMode = await runKeel(['up', '--data', dataDir, '--port', port, '--cpu-affinity', 'packed']);
      expect(badMode.code).not.toBe(0);
      expect(badMode.stderr).toMatch(/--cpu-affinity must be spread or off, not 'packed'/);
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  }, 60_000);
});
