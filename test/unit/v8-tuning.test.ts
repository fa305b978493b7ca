/** shared/v8-tuning.ts: which flags each role gets, and which of them a command line lacks. */
import { describe, expect, it } from 'vitest';
import { missingV8Flags, v8FlagsFor } from '../../shared/v8-tuning.ts';

describe('v8FlagsFor', () => {
  it('gives the router a 256 MiB and the edge a 64 MiB starting old space', () => {
    expect(v8FlagsFor('router', 8)).toEqual(['--initial-old-space-size=256']);
    expect(v8FlagsFor('edge', 8)).toEqual(['--initial-old-space-size=64']);
  });

  it('runs the garbage collector on the main thread on hosts of at most 2 cores', () => {
    expect(v8FlagsFor('edge', 2)).toEqual(['--single-threaded-gc', '--initial-old-space-size=64']);
    expect(v8FlagsFor('router', 1)).toContain('--single-threaded-gc');
    expect(v8FlagsFor('router', 3)).not.toContain('--single-threaded-gc');
  });
});

describe('missingV8Flags', () => {
  it('lists every flag when none is given', () => {
    expect(missingV8Flags('edge', [])).toEqual(v8FlagsFor('edge'));
  });

  it('counts a flag as given whatever its value or spelling, so an operator can choose another size', () => {
    const others = v8FlagsFor('edge').filter((flag) => !flag.startsWith('--initial-old-space-size'));
    expect(missingV8Flags('edge', [...others, '--initial_old_space_size=128'])).toEqual([]);
    expect(missingV8Flags('router', ['--inspect', ...others])).toEqual(['--initial-old-space-size=256']);
  });
});
