/**
 * The bench report's paired section (bench/report.ts): every round of a paired job with its ratio, and
 * the median ratio that the 0.5× targets are read against.
 */
import { describe, expect, it } from 'vitest';
import type { FioFigures } from '../../bench/fio-output.ts';
import { buildTable, medianOf, ratioColumns, renderMarkdown, type BenchResult, type JobOutcome, type TargetResult } from '../../bench/report.ts';

function figures(iops: number): JobOutcome {
  const f: FioFigures = { iops, ios: iops * 20, mibPerSec: (iops * 4) / 1024, meanLatencyUs: 900, p50LatencyUs: 850, p99LatencyUs: 2000, runtimeMs: 20_000 };
  return { figures: f };
}

function resultWith(keel: Partial<TargetResult>): BenchResult {
  const targets: TargetResult[] = [
    { id: 'keel', label: 'Keel', method: 'edge -> router', status: 'ok', jobs: { 'randread-4k-qd32': figures(34_000) }, ...keel },
    { id: 'nbdkit-memory', label: 'nbdkit memory', method: 'nbdkit memory', status: 'ok', jobs: { 'randread-4k-qd32': figures(70_000) } },
  ];
  return {
    schemaVersion: 1,
    mode: 'full',
    startedAt: '2026-11-22T08:00:00.000Z',
    wallSeconds: 1200,
    host: { cpus: 2, cpuModel: 'test cpu', kernel: '6.18', node: 'v20', fio: 'fio-3.33' },
    settings: { runtimeSec: 20, rampSec: 3, regionBytes: 2 ** 30, deviceBytes: 2 ** 31, coldReadBytes: 2 ** 27, scoSize: '64M' },
    targets,
    ecEncode: { skipped: 'test' },
    lbaMap: { skipped: 'test' },
    table: buildTable(targets),
    ratioColumns: [...ratioColumns],
  };
}

describe('bench report: paired rounds', () => {
  it('medianOf takes the middle value, or the mean of the two middle ones', () => {
    expect(medianOf([0.52, 0.47, 0.49])).toBe(0.49);
    expect(medianOf([0.4, 0.6])).toBeCloseTo(0.5, 12);
    expect(medianOf([0.3])).toBe(0.3);
    expect(medianOf([])).toBeUndefined();
  });

  it('lists every round with its ratio and prints the median of the rounds that ran on both sides', () => {
    const markdown = renderMarkdown(
      resultWith({
        pairedRounds: {
          'randread-4k-qd32': [
            { reference: figures(70_000), subject: figures(34_000) },
            { reference: figures(68_000), subject: figures(36_000) },
            { reference: { error: 'fio timed out' }, subject: figures(35_000) },
            { reference: figures(72_000), subject: figures(33_000) },
          ],
        },
      }),
    );
    expect(markdown).toContain('## Back to back with nbdkit memory');
    const row = markdown.split('\n').find((line) => line.startsWith('| Keel | randread-4k-qd32 |'));
    expect(row).toBe(
      '| Keel | randread-4k-qd32 | 34.0k / 70.0k, 36.0k / 68.0k, 35.0k / —, 33.0k / 72.0k | 0.486×, 0.529×, —, 0.458× | **0.486×** |',
    );
  });

  it('has no paired section when no job was paired', () => {
    expect(renderMarkdown(resultWith({}))).not.toContain('Back to back');
  });
});

describe('bench report: the relay chain floor', () => {
  it('divides Keel by the two-relay chain where the chain ran, and leaves the jobs it skips blank', () => {
    const targets: TargetResult[] = [
      { id: 'keel', label: 'Keel', method: 'edge -> router', status: 'ok', jobs: { 'randwrite-4k-qd32': figures(30_000), 'seqwrite-1m': figures(200) } },
      { id: 'nbdkit-memory', label: 'nbdkit memory', method: 'nbdkit memory', status: 'ok', jobs: { 'randwrite-4k-qd32': figures(160_000), 'seqwrite-1m': figures(3000) } },
      {
        id: 'node-relay-2',
        label: 'Node relay ×2',
        method: 'two relays',
        status: 'ok',
        jobs: { 'randwrite-4k-qd32': figures(75_000), 'seqwrite-1m': { skipped: 'this floor is measured for the 4k QD32 targets only' } },
      },
    ];
    const result = { ...resultWith({}), targets, table: buildTable(targets) };
    const markdown = renderMarkdown(result);
    const header = markdown.split('\n').find((line) => line.startsWith('| figure |'))!;
    expect(header).toContain('| Keel / Node relay ×2 | Node relay ×2 / nbdkit memory |');
    const columns = header.split('|').map((cell) => cell.trim());
    const cellsOf = (figure: string) => markdown.split('\n').find((line) => line.startsWith(`| ${figure} |`))!.split('|').map((cell) => cell.trim());
    const randwrite = cellsOf('4k randwrite QD32');
    expect(randwrite[columns.indexOf('Keel / Node relay ×2')]).toBe('0.40×');
    expect(randwrite[columns.indexOf('Node relay ×2 / nbdkit memory')]).toBe('0.47×');
    const seqwrite = cellsOf('1M seq write QD8');
    expect(seqwrite[columns.indexOf('Node relay ×2')]).toBe('—');
    expect(seqwrite[columns.indexOf('Keel / Node relay ×2')]).toBe('—');
  });
});

describe('bench report: where the CPU goes', () => {
  it('gives each process its µs per I/O in chain order, fio, their sum and the idle share', () => {
    const markdown = renderMarkdown(
      resultWith({
        cpuPerIo: {
          'randread-4k-qd32': {
            processes: [
              { role: 'edge', usPerIo: 7.46 },
              { role: 'owner r1', usPerIo: 5.52 },
              { role: 'DTL peer r2', usPerIo: 0.04 },
            ],
            fioUsPerIo: 4.4,
            machineIdleShare: 0.234,
          },
        },
      }),
    );
    expect(markdown).toContain('## Where the CPU goes');
    const row = markdown.split('\n').find((line) => line.startsWith('| Keel | randread-4k-qd32 |'));
    expect(row).toBe('| Keel | randread-4k-qd32 | 34.0k | edge 7.5, owner r1 5.5, DTL peer r2 0.0 | 4.4 | 17.4 | 23% |');
  });

  it('has no such section when nothing was sampled, and skips a job that failed', () => {
    expect(renderMarkdown(resultWith({}))).not.toContain('## Where the CPU goes');
    const failed = renderMarkdown(
      resultWith({
        jobs: { 'randread-4k-qd32': { error: 'fio exited with 1' } },
        cpuPerIo: { 'randread-4k-qd32': { processes: [{ role: 'edge', usPerIo: 7 }], machineIdleShare: 0.5 } },
      }),
    );
    expect(failed).not.toContain('## Where the CPU goes');
  });
});
