/**
 * A router's or edge's process warnings land in its JSON log, one object per line, not as Node's
 * multi-line plain text on stderr (a real child process: the warning printer is process-wide).
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const loggerModule = fileURLToPath(new URL('../../shared/logger.ts', import.meta.url));

describe('process warnings', () => {
  it('are logged as one JSON line each, and Node prints none of its own', () => {
    const script = `
      const { createLogger, logProcessWarnings } = await import(${JSON.stringify(loggerModule)});
      const logger = createLogger('router', { router: 'r9' });
      logProcessWarnings(logger);
      process.emitWarning('first line\\nsecond line', { type: 'NodeVersionSupportWarning', code: 'KEEL_TEST' });
      setTimeout(() => logger.flush(), 50);`;
    const child = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      env: { ...process.env, KEEL_LOG_PRETTY: '0', KEEL_LOG_LEVEL: 'info' },
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(child.status).toBe(0);
    const lines = child.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0]!)).toMatchObject({
      level: 40,
      router: 'r9',
      warning: 'NodeVersionSupportWarning',
      code: 'KEEL_TEST',
      msg: 'first line\nsecond line',
    });
  });
});
