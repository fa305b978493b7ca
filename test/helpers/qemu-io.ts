/** qemu-io against an NBD URI, for integration tests that write and read back patterns. */
import { expect } from 'vitest';
import { run, type RunResult } from './processes.ts';

/** Runs qemu-io's `commands` (e.g. 'write -P 0x5a 0 16M', 'flush') on one connection to `uri`. */
export function qemuIo(uri: string, ...commands: string[]): Promise<RunResult> {
  return run('qemu-io', ['-f', 'raw', ...commands.flatMap((c) => ['-c', c]), uri], { timeoutMs: 120_000 });
}

/** Reads [offset, +length) and checks every byte is `pattern` (qemu-io's `read -P`). */
export async function expectPatternRead(uri: string, pattern: string, offset: string, length: string): Promise<void> {
  const read = await qemuIo(uri, `read -P ${pattern} ${offset} ${length}`);
  expect(read.stdout + read.stderr, `read -P ${pattern} ${offset} ${length}`).not.toMatch(/failed|error/i);
  expect(read.code).toBe(0);
}
