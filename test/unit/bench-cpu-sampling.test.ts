/**
 * Where the bench's CPU figures come from: fio's own CPU in its JSON (bench/fio-output.ts), and the CPU of
 * each server process and the machine's idle share from /proc (bench/system-metrics.ts, sampleCpuShares),
 * here on real child processes: one spinning, one asleep.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import { parseFioJson } from '../../bench/fio-output.ts';
import { sampleCpuShares } from '../../bench/system-metrics.ts';

function fioJson(job: Record<string, unknown>): string {
  const direction = { iops: 1000, bw: 4000, total_ios: 20_000, runtime: 20_000, clat_ns: { mean: 900_000, percentile: { '50.000000': 850_000, '99.000000': 2_000_000 } } };
  return `fio: a note before the JSON\n${JSON.stringify({ jobs: [{ error: 0, read: direction, write: { ...direction, total_ios: 0 }, ...job }] })}`;
}

describe('parseFioJson', () => {
  it("adds fio's user and system CPU, and leaves the figure out when fio gives none", () => {
    expect(parseFioJson(fioJson({ usr_cpu: 12.5, sys_cpu: 30.25 }), 'read').cpuPercent).toBe(42.75);
    expect(parseFioJson(fioJson({}), 'read')).not.toHaveProperty('cpuPercent');
    expect(() => parseFioJson(fioJson({ usr_cpu: 1, sys_cpu: 1 }), 'write')).toThrow(/no write I\/O/);
  });
});

describe('sampleCpuShares', () => {
  const children: ChildProcess[] = [];
  afterEach(() => {
    for (const child of children.splice(0)) child.kill('SIGKILL');
  });

  /** A node child running `code` once it has said it is up, so that its start-up is not sampled. */
  async function start(code: string): Promise<ChildProcess> {
    const child = spawn(process.execPath, ['-e', `process.stdout.write('up\\n'); ${code}`], { stdio: ['ignore', 'pipe', 'ignore'] });
    children.push(child);
    await new Promise((resolve, reject) => {
      child.stdout!.once('data', resolve);
      child.once('error', reject);
    });
    return child;
  }

  it('tells a spinning process from a sleeping one, and leaves out one that is gone', async () => {
    const spinning = await start('for (;;) {}');
    const sleeping = await start('setTimeout(() => {}, 60_000)');
    const gone = await start('');
    if (gone.exitCode === null) await new Promise((resolve) => gone.once('exit', resolve));
    const sampler = sampleCpuShares([
      { role: 'spinning', pid: spinning.pid! },
      { role: 'sleeping', pid: sleeping.pid! },
      { role: 'gone', pid: gone.pid! },
    ]);
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const shares = sampler.stop();
    expect(shares.processes.map((p) => p.role)).toEqual(['spinning', 'sleeping']);
    // Loose bounds: other tests may share the cores.
    expect(shares.processes[0]!.cpuCores).toBeGreaterThan(0.2);
    expect(shares.processes[1]!.cpuCores).toBeLessThan(0.05);
    expect(shares.machineIdleShare).toBeGreaterThanOrEqual(0);
    expect(shares.machineIdleShare).toBeLessThan(0.95); // one of the cores was kept busy throughout
  });
});
