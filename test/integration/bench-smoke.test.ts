/**
 * CI smoke of the benchmark harness (bench/run.ts --smoke): Keel and nbdkit memory, 1-second jobs. It checks
 * that the run produces the JSON and markdown reports with the expected structure and leaves no process
 * or scratch directory behind. It asserts no speed: figures from a shared CI machine mean nothing.
 */
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const repoDir = fileURLToPath(new URL('../..', import.meta.url));
const hasTools = ['fio', 'nbdkit'].every((tool) => process.env.PATH?.split(':').some((dir) => existsSync(path.join(dir, tool))));

interface RunOutcome {
  code: number | null;
  stdout: string;
  stderr: string;
}

function runBench(args: string[], timeoutMs: number): Promise<RunOutcome> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--import', 'tsx', path.join(repoDir, 'bench', 'run.ts'), ...args],
      { cwd: repoDir, timeout: timeoutMs, killSignal: 'SIGTERM', maxBuffer: 16 << 20 },
      (error, stdout, stderr) => resolve({ code: error ? ((error as { code?: number }).code ?? -1) : 0, stdout, stderr }),
    );
  });
}

describe.skipIf(!hasTools)('npm run bench -- --smoke', () => {
  let outDir: string;
  let outcome: RunOutcome;

  beforeAll(async () => {
    outDir = await mkdtemp(path.join(os.tmpdir(), 'keel-bench-smoke-out-'));
    outcome = await runBench(['--smoke', '--out', outDir], 85_000);
  }, 90_000);

  afterAll(async () => {
    await rm(outDir, { recursive: true, force: true });
  });

  it('exits 0 and writes <timestamp>.json, <timestamp>.md and latest.md', () => {
    expect(outcome.code, outcome.stderr).toBe(0);
    const files = readdirSync(outDir).sort();
    expect(files).toHaveLength(3);
    expect(files.filter((f) => f.endsWith('.json'))).toHaveLength(1);
    expect(files).toContain('latest.md');
    const stamp = files.find((f) => f.endsWith('.json'))!.replace(/\.json$/, '');
    expect(files).toContain(`${stamp}.md`);
    expect(readFileSync(path.join(outDir, 'latest.md'), 'utf8')).toBe(readFileSync(path.join(outDir, `${stamp}.md`), 'utf8'));
  });

  it('records every job for both targets, the ratio column and the system figures', () => {
    const jsonFile = readdirSync(outDir).find((f) => f.endsWith('.json'))!;
    const result = JSON.parse(readFileSync(path.join(outDir, jsonFile), 'utf8'));
    expect(result.schemaVersion).toBe(1);
    expect(result.mode).toBe('smoke');
    expect(result.host.keel).toMatch(/^0\.1\.0 \((the bundle in dist\/|the TypeScript sources)\)$/);
    expect(result.targets.map((t: { id: string }) => t.id)).toEqual(['keel', 'nbdkit-memory']);
    const [keel, memory] = result.targets;
    expect(keel.status).toBe('ok');
    expect(memory.status).toBe('ok');
    for (const job of ['seqwrite-1m', 'randwrite-4k-qd32', 'randwrite-4k-qd1', 'randread-4k-qd32', 'seqread-1m', 'randread-4k-qd32-cold']) {
      expect(Object.keys(keel.jobs[job].figures).sort()).toEqual(['cpuPercent', 'iops', 'ios', 'meanLatencyUs', 'mibPerSec', 'p50LatencyUs', 'p99LatencyUs', 'runtimeMs']);
    }
    expect(memory.jobs['randread-4k-qd32-cold'].skipped).toMatch(/no slower tier/);
    expect(keel.coldMethod).toMatch(/got SIGTERM .* owned demo again/);
    expect(Object.keys(keel.edgeUsage).sort()).toEqual(['randread-4k-qd32', 'randwrite-4k-qd32']);
    expect(Object.keys(keel.edgeUsage['randwrite-4k-qd32']).sort()).toEqual(['cpuCores', 'cpuCoresPer10kIops', 'rssMeanBytes', 'rssPeakBytes', 'samples']);
    // The 4k QD32 jobs ran in two rounds (smoke mode), each on the reference nbdkit memory and then on
    // Keel; round 1's Keel run is the one in the table. The baseline target has none.
    expect(Object.keys(keel.pairedRounds).sort()).toEqual(['randread-4k-qd32', 'randwrite-4k-qd32']);
    const rounds = keel.pairedRounds['randwrite-4k-qd32'];
    expect(rounds).toHaveLength(2);
    for (const round of rounds) {
      expect(round.reference.figures.iops).toBeGreaterThan(0);
      expect(round.subject.figures.iops).toBeGreaterThan(0);
    }
    expect(rounds[0].subject).toEqual(keel.jobs['randwrite-4k-qd32']);
    expect(rounds[1].subject).not.toEqual(rounds[0].subject);
    expect(memory.pairedRounds).toBeUndefined();
    // Where the CPU goes: every process of the chain, fio's side first, for the two 4k QD32 jobs.
    for (const job of ['randread-4k-qd32', 'randwrite-4k-qd32']) {
      const roles = keel.cpuPerIo[job].processes.map((p: { role: string }) => p.role);
      expect(roles.slice(0, 3)).toEqual(['edge', expect.stringMatching(/^owner r\d$/), expect.stringMatching(/^DTL peer r\d$/)]);
      expect(keel.cpuPerIo[job].processes[0].usPerIo).toBeGreaterThan(0);
      expect(keel.cpuPerIo[job].fioUsPerIo).toBeGreaterThan(0);
      expect(memory.cpuPerIo[job].processes.map((p: { role: string }) => p.role)).toEqual(['nbdkit']);
    }
    expect(readFileSync(path.join(outDir, 'latest.md'), 'utf8')).toMatch(/## Where the CPU goes[\s\S]*\| Keel \| randwrite-4k-qd32 \| [\d.k]+ \| edge [\d.]+, owner r\d [\d.]+, DTL peer r\d [\d.]+/);
    expect(readFileSync(path.join(outDir, 'latest.md'), 'utf8')).toMatch(
      /## Back to back with nbdkit memory[\s\S]*\| Keel \| randwrite-4k-qd32 \| [\d.k]+ \/ [\d.k]+, [\d.k]+ \/ [\d.k]+ \| [\d.]+×, [\d.]+× \| \*\*[\d.]+×\*\* \|/,
    );

    expect(result.table.map((row: { figure: string }) => row.figure)).toContain('4k randwrite QD32');
    const row = result.table.find((r: { figure: string }) => r.figure === '4k randwrite QD32');
    expect(typeof row.values.keel).toBe('number');
    expect(typeof row.values['nbdkit-memory']).toBe('number');
    expect(row.ratios['keel/nbdkit-memory']).toBeCloseTo(row.values.keel / row.values['nbdkit-memory'], 9);
    expect(row.ratios['keel/s3backer']).toBeNull();

    expect(Object.keys(result.ecEncode.mibPerSecPerCore)).toContain('4+2');
    expect(Object.keys(result.lbaMap.patterns).length).toBeGreaterThan(0);
  });

  it('prints the table and renders it in markdown with a ratio column', () => {
    const markdown = readFileSync(path.join(outDir, 'latest.md'), 'utf8');
    expect(markdown).toMatch(/^# Keel benchmark — .* \(smoke mode\)/);
    expect(markdown).toContain('Placement: scheduler: nothing pinned.');
    expect(markdown).toContain('| figure | unit | Keel | nbdkit memory | Keel / nbdkit memory |');
    expect(markdown).toMatch(/\| 4k randwrite QD32 \| IOPS \(higher is better\) \| [\d.]+k? \| [\d.]+k? \| [\d.]+× \|/);
    expect(outcome.stdout).toContain('| 4k randwrite QD32 |');
  });

  it('removes its scratch directory and stops every process it started', () => {
    const scratch = /scratch in (\S+)/.exec(outcome.stderr)?.[1];
    expect(scratch, outcome.stderr).toMatch(/keel-bench-/);
    expect(existsSync(scratch!)).toBe(false);
    const leftovers = readdirSync('/proc')
      .filter((entry) => /^\d+$/.test(entry))
      .map((pid) => {
        try {
          return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ');
        } catch {
          return '';
        }
      })
      .filter((cmdline) => cmdline.includes(scratch!));
    expect(leftovers).toEqual([]);
  });
});
