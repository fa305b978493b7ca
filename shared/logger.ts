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

/** A logger that drops everything, for unit tests. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
