import { pino, destination, transport, type Logger } from 'pino';

export type { Logger };

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
  return pino(options, destination({ fd: 2, sync: false }));
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
