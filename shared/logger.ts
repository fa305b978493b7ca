import { createRequire } from 'node:module';
import { pino, transport, type Logger } from 'pino';
import type { SonicBoom as SonicBoomStream, SonicBoomOpts } from 'sonic-boom';
import { limits } from './limits.ts';

export type { Logger };

// sonic-boom is CommonJS whose type declarations describe a named class: load it the CommonJS way.
const SonicBoom = createRequire(import.meta.url)('sonic-boom') as new (options: SonicBoomOpts) => SonicBoomStream;

/**
 * Structured JSON logs (pino). On a terminal, or with KEEL_LOG_PRETTY=1, they are pretty-printed.
 * KEEL_LOG_LEVEL sets the level (default info; tests use warn).
 */
export function createLogger(name: string, bindings: Record<string, unknown> = {}, defaultLevel = 'info'): Logger {
  const level = process.env.KEEL_LOG_LEVEL ?? defaultLevel;
  const pretty = process.env.KEEL_LOG_PRETTY === '1' || (process.env.KEEL_LOG_PRETTY !== '0' && process.stderr.isTTY);
  const options = { name, level, base: { pid: process.pid, ...bindings } };
  if (pretty) {
    return pino(options, transport({ target: 'pino-pretty', options: { destination: 2, colorize: true } }));
  }
  return pino(options, resilientStderr());
}

/** Log lines dropped because stderr did not take them (full disk, closed pipe), and the write errors seen. */
export const logDrops = { lines: 0, writeErrors: 0 };

/**
 * stderr for pino that never takes the process down or keeps it alive. pino's own destination has no
 * handler for a write error (ENOSPC on the disk the log goes to, EIO), so the error event killed every
 * router and the edge at once when the disk filled, and again at each restart. And at exit it flushes on
 * 'beforeExit', which, failing, schedules another write and another 'beforeExit': a stopped edge with a
 * full log disk never exited (and SonicBoom's flushSync, which pino calls at 'exit', retries a write
 * error forever). Here lines wait in a bounded buffer (logBufferBytesMax) and the stream retries with the
 * next line; beyond the bound lines are dropped and counted. Nothing flushes at exit: a write in flight
 * keeps the event loop alive until the lines are out, so a process that ends by returning from main
 * loses none; `keel` commands print their own errors with console.error.
 */
function resilientStderr(): SonicBoomStream {
  const stream = new SonicBoom({ fd: 2, sync: false, maxLength: limits.logBufferBytesMax });
  stream.on('error', () => {
    logDrops.writeErrors += 1;
  });
  stream.on('drop', () => {
    logDrops.lines += 1;
  });
  return stream;
}

/**
 * Process warnings (deprecations, MaxListenersExceeded, the AWS SDK's notice about Node versions) as
 * log lines. Node prints them as several lines of plain text on stderr, in the middle of the JSON log
 * stream of a router or edge, where log shippers and `keel up` expect one JSON object per line.
 */
export function logProcessWarnings(logger: Logger): void {
  process.removeAllListeners('warning'); // Node's own printer
  process.on('warning', (warning: Error & { code?: string }) => logger.warn({ warning: warning.name, code: warning.code }, warning.message));
}

/** A logger that drops everything, for unit tests. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
