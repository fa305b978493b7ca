/**
 * Bounds the log lines that events a peer controls can cause: a client that sends garbage, or opens
 * connections in a loop, made a router write a line per frame or per connection, so unbounded log volume
 * (disk, and the CPU to format it). A key (one kind of event) logs at most `linesMax` lines per interval;
 * the rest are counted, and when the interval ends one summary line says how many were suppressed. Keys
 * are bounded too (`keysMax`): events of keys beyond it share one overflow key. So whatever peers send,
 * at most (keysMax + 1) * (linesMax + 1) lines come out per interval.
 *
 * Keys should name the event (and e.g. an error code), not the peer: a key per peer address would let a
 * client with many addresses (an IPv6 prefix) take every key.
 */
import assert from 'node:assert';
import type { Logger } from './logger.ts';

export type LogLevel = 'error' | 'warn' | 'info';

export interface LogRateLimitOptions {
  /** Lines one key logs per interval before the rest are suppressed. */
  linesMax: number;
  intervalMs: number;
  /** Keys tracked at once; events of further keys share the overflow key. */
  keysMax: number;
  /** The clock, for tests. */
  now?: () => number;
  /**
   * Runs `run` after `ms`: the summary of an interval that no later line of its key ends. Default: an
   * unref'd timer, so a pending summary never keeps a process alive.
   */
  schedule?: (run: () => void, ms: number) => { cancel(): void };
}

/** The key that events of keys beyond keysMax share. */
export const overflowLogKey = '(other)';

interface KeyWindow {
  startMs: number;
  lines: number;
  suppressed: number;
  level: LogLevel;
  message: string;
  summaryTimer: { cancel(): void } | undefined;
}

export class LogRateLimit {
  private readonly windows = new Map<string, KeyWindow>();
  private readonly now: () => number;
  private readonly schedule: NonNullable<LogRateLimitOptions['schedule']>;

  /** `logger` writes the summary lines (the suppressed lines' own loggers may be per connection). */
  constructor(
    private readonly logger: Logger,
    private readonly options: LogRateLimitOptions,
  ) {
    assert(options.linesMax >= 1 && options.intervalMs > 0 && options.keysMax >= 1, 'LogRateLimit bounds must be positive');
    this.now = options.now ?? Date.now;
    this.schedule = options.schedule ?? defaultSchedule;
  }

  /** Logs the line with `logger` unless its key used up this interval's lines; true if it was logged. */
  log(logger: Logger, level: LogLevel, key: string, fields: Record<string, unknown>, message: string): boolean {
    const now = this.now();
    const [windowKey, window] = this.windowFor(key, now);
    if (now - window.startMs >= this.options.intervalMs) {
      this.endWindow(windowKey, window);
      window.startMs = now;
      window.lines = 0;
    }
    if (window.lines < this.options.linesMax) {
      window.lines++;
      logger[level](windowKey === key ? fields : { ...fields, logKey: key }, message);
      return true;
    }
    window.suppressed++;
    window.level = level;
    window.message = message;
    // The summary must come even if the flood stops here and no later line ends the interval.
    window.summaryTimer ??= this.schedule(() => {
      window.summaryTimer = undefined;
      this.endWindow(windowKey, window);
    }, Math.max(0, window.startMs + this.options.intervalMs - now));
    return false;
  }

  /** Writes the summaries still pending (e.g. when the server that logs stops) and cancels their timers. */
  flush(): void {
    for (const [key, window] of this.windows) this.endWindow(key, window);
  }

  /** Keys tracked now (at most keysMax, plus the overflow key). */
  get keyCount(): number {
    return this.windows.size;
  }

  private windowFor(key: string, now: number): [string, KeyWindow] {
    const known = this.windows.get(key);
    if (known !== undefined) return [key, known];
    if (key !== overflowLogKey && this.trackedKeys() >= this.options.keysMax) this.dropEndedWindows(now);
    if (key === overflowLogKey || this.trackedKeys() >= this.options.keysMax) key = overflowLogKey;
    let window = this.windows.get(key);
    if (window === undefined) {
      window = { startMs: now, lines: 0, suppressed: 0, level: 'info', message: '', summaryTimer: undefined };
      this.windows.set(key, window);
    }
    return [key, window];
  }

  private trackedKeys(): number {
    return this.windows.size - (this.windows.has(overflowLogKey) ? 1 : 0);
  }

  /** Frees the keys whose interval is over (writing their summaries), to make room for new keys. */
  private dropEndedWindows(now: number): void {
    for (const [key, window] of this.windows) {
      if (key === overflowLogKey || now - window.startMs < this.options.intervalMs) continue;
      this.endWindow(key, window);
      this.windows.delete(key);
    }
  }

  private endWindow(key: string, window: KeyWindow): void {
    window.summaryTimer?.cancel();
    window.summaryTimer = undefined;
    if (window.suppressed === 0) return;
    const fields = { logKey: key, suppressed: window.suppressed, intervalMs: this.options.intervalMs, message: window.message };
    this.logger[window.level](fields, 'log lines suppressed');
    window.suppressed = 0;
  }
}

function defaultSchedule(run: () => void, ms: number): { cancel(): void } {
  const timer = setTimeout(run, ms);
  timer.unref();
  return { cancel: () => clearTimeout(timer) };
}
