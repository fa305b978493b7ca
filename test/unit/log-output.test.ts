/**
 * A log output that refuses writes (the disk under it full) never takes a router or edge down, never keeps
 * it from exiting, and never holds more than logBufferBytesMax of lines (real child processes: stderr is
 * /dev/full, where every write fails with ENOSPC).
 */
import { spawnSync } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { limits } from '../../shared/limits.ts';

const loggerModule = fileURLToPath(new URL('../../shared/logger.ts', import.meta.url));

/** Logs `lines` lines of about 100 bytes, `perTurn` per event-loop turn, prints logDrops and returns from main. */
function runLogger(stderr: 'pipe' | number, lines: number, perTurn: number) {
  const script = `
    const { createLogger, logDrops } = await import(${JSON.stringify(loggerModule)});
    const logger = createLogger('edge');
    for (let n = 0; n < ${lines}; ) {
      for (let i = 0; i < ${perTurn}; i++, n++) logger.info({ n }, 'a line the log output may refuse');
      await new Promise((resolve) => setImmediate(resolve));
    }
    console.log(JSON.stringify(logDrops));`;
  return spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    env: { ...process.env, KEEL_LOG_PRETTY: '0', KEEL_LOG_LEVEL: 'info' },
    stdio: ['ignore', 'pipe', stderr],
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
    timeout: 30_000,
  });
}

describe('log output', () => {
  it('a full disk under the log: the process goes on, counts the failed writes, and exits when its work is done', () => {
    const full = openSync('/dev/full', 'w');
    try {
      const child = runLogger(full, 20_000, 500);
      expect(child.error).toBeUndefined(); // not killed by the timeout: it exited
      expect(child.status).toBe(0);
      const drops = JSON.parse(child.stdout.trim().split('\n').at(-1)!) as { lines: number; writeErrors: number };
      expect(drops.writeErrors).toBeGreaterThan(0);
    } finally {
      closeSync(full);
    }
  });

  it('lines beyond logBufferBytesMax are dropped and counted while the output refuses them', () => {
    const full = openSync('/dev/full', 'w');
    try {
      const lines = Math.ceil((2 * limits.logBufferBytesMax) / 100);
      const child = runLogger(full, lines, lines); // all in one turn: nothing can be written meanwhile
      expect(child.status).toBe(0);
      const drops = JSON.parse(child.stdout.trim()) as { lines: number; writeErrors: number };
      expect(drops.lines).toBeGreaterThan(lines / 4);
      expect(drops.lines).toBeLessThan(lines);
    } finally {
      closeSync(full);
    }
  });

  it('a working output gets every line', () => {
    const child = runLogger('pipe', 20_000, 500);
    expect(child.status).toBe(0);
    const logged = child.stderr.trim().split('\n');
    expect(logged).toHaveLength(20_000);
    expect(JSON.parse(logged.at(-1)!)).toMatchObject({ n: 19_999, msg: 'a line the log output may refuse' });
    expect(JSON.parse(child.stdout.trim())).toEqual({ lines: 0, writeErrors: 0 });
  });
});
