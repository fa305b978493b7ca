/** The bench's process placement (bench/placement.ts): what `split` wraps its commands in. */
import { afterEach, describe, expect, it } from 'vitest';
import { describePlacement, keelUpPlacementArgs, placed, setPlacement } from '../../bench/placement.ts';
import { allowedCpus } from '../../shared/cpu-affinity.ts';
import { formatCpuList } from '../../shared/cpu-list.ts';

const cpus = allowedCpus() ?? [];

afterEach(() => setPlacement('scheduler'));

describe('bench placement', () => {
  it('scheduler runs every command as it is and passes keel up nothing', () => {
    setPlacement('scheduler');
    expect(placed('client', 'fio', ['--name=x'])).toEqual(['fio', ['--name=x']]);
    expect(placed('server', 'nbdkit', ['-f'])).toEqual(['nbdkit', ['-f']]);
    expect(keelUpPlacementArgs()).toEqual([]);
    expect(describePlacement()).toBe('scheduler: nothing pinned');
  });

  it.skipIf(cpus.length < 2)('split runs the client on the lowest CPU, servers on the others, and Keel spread', () => {
    setPlacement('split');
    expect(placed('client', 'fio', ['--name=x'])).toEqual(['taskset', ['-c', String(cpus[0]), 'fio', '--name=x']]);
    expect(placed('server', 'nbdkit', ['-f'])).toEqual(['taskset', ['-c', formatCpuList(cpus.slice(1)), 'nbdkit', '-f']]);
    expect(keelUpPlacementArgs()).toEqual(['--cpu-affinity', 'spread']);
    expect(describePlacement()).toContain(`fio on CPU ${cpus[0]}`);
  });
});
