/** CPU lists and pinning (docs/cpu-affinity.md): parsing, spreading, and what pinning does on a fake host. */
import { describe, expect, it } from 'vitest';
import { allowedCpus, pinThisProcess, type AffinityHost } from '../../shared/cpu-affinity.ts';
import { formatCpuList, parseCpuList, spreadOverCpus } from '../../shared/cpu-list.ts';
import { isKeelError } from '../../shared/errors.ts';
import { silentLogger, type Logger } from '../../shared/logger.ts';
import { pino } from 'pino';

function fakeHost(allowedList: string, taskset: (args: string[]) => Promise<void> = async () => undefined): AffinityHost & { calls: string[][] } {
  const calls: string[][] = [];
  return {
    calls,
    readStatus: () => `Name:\tnode\nCpus_allowed:\t3\nCpus_allowed_list:\t${allowedList}\nMems_allowed:\t1\n`,
    startThreadPool: async () => {
      calls.push(['(thread pool started)']);
    },
    runTaskset: (args) => {
      calls.push(args);
      return taskset(args);
    },
  };
}

/** A logger whose lines (JSON) are kept. */
function recordingLogger(): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  return { logger: pino({ level: 'info' }, { write: (line: string) => lines.push(line) }), lines };
}

describe('CPU lists', () => {
  it('parses single CPUs and ranges, sorted and distinct, and writes them back in the shortest form', () => {
    expect(parseCpuList('0')).toEqual([0]);
    expect(parseCpuList('6,0-3, 2')).toEqual([0, 1, 2, 3, 6]);
    expect(formatCpuList([0, 1, 2, 3, 6, 8, 9])).toBe('0-3,6,8-9');
    expect(formatCpuList(parseCpuList('5-7,1'))).toBe('1,5-7');
  });

  it('refuses malformed lists with a clear BAD_ARGUMENT', () => {
    for (const [text, message] of [
      ['', /empty/],
      ['a', /'a' is not a CPU number/],
      ['1-', /'1-' is not a CPU number/],
      ['3-1', /runs backwards/],
      ['1,,2', /'' is not a CPU number/],
      ['0-99999', /above 8191/],
    ] as const) {
      let error: unknown;
      try {
        parseCpuList(text, '--cpus');
      } catch (err) {
        error = err;
      }
      expect(isKeelError(error, 'BAD_ARGUMENT'), text).toBe(true);
      expect((error as Error).message, text).toMatch(message);
    }
  });

  it('spreads processes over the CPUs in the order given, and not at all over fewer than two', () => {
    expect(spreadOverCpus(3, [1, 0])).toEqual([1, 0, 1]);
    expect(spreadOverCpus(2, [7, 5, 3])).toEqual([7, 5]);
    expect(spreadOverCpus(3, [0])).toEqual([undefined, undefined, undefined]);
    expect(spreadOverCpus(2, [])).toEqual([undefined, undefined]);
  });
});

describe('pinning this process', () => {
  it('reads the CPUs it may use from /proc/self/status', () => {
    expect(allowedCpus(fakeHost('0-1,4'))).toEqual([0, 1, 4]);
    expect(allowedCpus({ ...fakeHost('0'), readStatus: () => 'Name:\tnode\n' })).toBeUndefined();
    const notLinux: AffinityHost = {
      ...fakeHost('0'),
      readStatus: () => {
        throw new Error('ENOENT');
      },
    };
    expect(allowedCpus(notLinux)).toBeUndefined();
  });

  it('starts the thread pool, then runs taskset on the main thread only, so the pool stays free', async () => {
    const host = fakeHost('0-3');
    expect(await pinThisProcess([1, 2], silentLogger(), host)).toBe(true);
    expect(host.calls).toEqual([['(thread pool started)'], ['-p', '-c', '1-2', String(process.pid)]]);
  });

  it('refuses a CPU the process may not use, before touching anything', async () => {
    const host = fakeHost('0-1');
    await expect(pinThisProcess([1, 5], silentLogger(), host)).rejects.toMatchObject({ code: 'BAD_ARGUMENT', message: expect.stringMatching(/CPU 5 is not available to this process \(it may use 0-1\)/) });
    expect(host.calls).toEqual([]);
  });

  it('keeps running unpinned, with a warning, when taskset is missing or fails', async () => {
    const host = fakeHost('0-1', async () => {
      throw new Error('spawn taskset ENOENT');
    });
    const { logger, lines } = recordingLogger();
    expect(await pinThisProcess([0], logger, host)).toBe(false);
    expect(lines.map((line) => JSON.parse(line) as { level: number; msg: string; err: string })).toEqual([
      expect.objectContaining({ level: 40, msg: expect.stringMatching(/could not pin to CPUs .* running unpinned/), err: 'spawn taskset ENOENT' }),
    ]);
  });
});
