import { describe, expect, it } from 'vitest';
import { LogRateLimit, overflowLogKey, type LogRateLimitOptions } from '../../shared/log-rate-limit.ts';
import { capturingLogger } from '../helpers/wire-test-volumes.ts';

/** A limiter on a clock the test moves, whose summary timers the test fires. */
function limiterWithClock(options: Partial<LogRateLimitOptions> = {}) {
  const { logger, records } = capturingLogger();
  const clock = { nowMs: 1_000 };
  const timers: Array<{ dueMs: number; run: () => void; cancelled: boolean }> = [];
  const limit = new LogRateLimit(logger, {
    linesMax: 3,
    intervalMs: 1_000,
    keysMax: 4,
    now: () => clock.nowMs,
    schedule: (run, ms) => {
      const timer = { dueMs: clock.nowMs + ms, run, cancelled: false };
      timers.push(timer);
      return { cancel: () => (timer.cancelled = true) };
    },
    ...options,
  });
  /** Moves the clock and fires the timers due by then. */
  const advance = (ms: number) => {
    clock.nowMs += ms;
    for (const timer of timers.splice(0)) {
      if (timer.cancelled) continue;
      if (timer.dueMs <= clock.nowMs) timer.run();
      else timers.push(timer);
    }
  };
  const pendingTimers = () => timers.filter((t) => !t.cancelled).length;
  return { limit, logger, records, advance, pendingTimers };
}

const lines = (records: Array<Record<string, unknown>>, msg: string) => records.filter((r) => r.msg === msg);

describe('LogRateLimit', () => {
  it('logs linesMax lines of a key per interval, then one summary with the count suppressed when the interval ends', () => {
    const { limit, logger, records, advance, pendingTimers } = limiterWithClock();
    const logged = Array.from({ length: 100 }, (_, n) => limit.log(logger, 'warn', 'bad-frame', { n }, 'closing a wire connection'));
    expect(logged.filter(Boolean)).toHaveLength(3);
    expect(lines(records, 'closing a wire connection').map((r) => r.n)).toEqual([0, 1, 2]);
    expect(lines(records, 'log lines suppressed')).toHaveLength(0); // not before the interval ends
    expect(pendingTimers()).toBe(1); // one timer for the whole flood, not one per line

    advance(999);
    expect(lines(records, 'log lines suppressed')).toHaveLength(0);
    advance(1); // the flood stopped: the timer writes the summary
    expect(lines(records, 'log lines suppressed')).toEqual([
      expect.objectContaining({ level: 40, logKey: 'bad-frame', suppressed: 97, intervalMs: 1_000, message: 'closing a wire connection' }),
    ]);

    // A new interval: lines again, and no second summary for the one already reported.
    expect(limit.log(logger, 'warn', 'bad-frame', { n: 100 }, 'closing a wire connection')).toBe(true);
    advance(5_000);
    expect(lines(records, 'log lines suppressed')).toHaveLength(1);
  });

  it('ends an interval with its summary at the next line of the key, before logging that line', () => {
    const { limit, logger, records, advance } = limiterWithClock({ schedule: () => ({ cancel: () => {} }) }); // timers never fire
    for (let n = 0; n < 10; n++) limit.log(logger, 'info', 'k', { n }, 'event');
    advance(1_500);
    limit.log(logger, 'info', 'k', { n: 10 }, 'event');
    expect(records.map((r) => (r.msg === 'event' ? r.n : `suppressed ${String(r.suppressed)}`))).toEqual([0, 1, 2, 'suppressed 7', 10]);
  });

  it('counts each key on its own', () => {
    const { limit, logger, records } = limiterWithClock();
    for (let n = 0; n < 10; n++) {
      limit.log(logger, 'warn', 'a', {}, 'line a');
      limit.log(logger, 'warn', 'b', {}, 'line b');
    }
    expect([lines(records, 'line a').length, lines(records, 'line b').length]).toEqual([3, 3]);
  });

  it('bounds the keys: keys beyond keysMax share one overflow budget, and keys whose interval ended make room', () => {
    const { limit, logger, records, advance } = limiterWithClock();
    for (let key = 0; key < 1_000; key++) limit.log(logger, 'warn', `key-${key}`, { key }, 'many keys');
    // 4 keys with their own budget, then 3 lines for all the others together.
    expect(lines(records, 'many keys').map((r) => r.logKey ?? r.key)).toEqual([0, 1, 2, 3, 'key-4', 'key-5', 'key-6']);
    expect(limit.keyCount).toBe(5);
    advance(1_000);
    expect(lines(records, 'log lines suppressed')).toEqual([expect.objectContaining({ logKey: overflowLogKey, suppressed: 993 })]);
    // The first keys' intervals are over: a new key gets a budget of its own again.
    limit.log(logger, 'warn', 'fresh', { key: 'fresh' }, 'many keys');
    expect(records.at(-1)).toMatchObject({ key: 'fresh' });
    expect(records.at(-1)!.logKey).toBeUndefined();
    expect(limit.keyCount).toBeLessThanOrEqual(5);
  });

  it('writes pending summaries at once on flush and cancels their timers', () => {
    const { limit, logger, records, pendingTimers } = limiterWithClock();
    for (let n = 0; n < 5; n++) limit.log(logger, 'error', 'crash', {}, 'request handler failed');
    limit.flush();
    expect(lines(records, 'log lines suppressed')).toEqual([expect.objectContaining({ level: 50, suppressed: 2 })]);
    expect(pendingTimers()).toBe(0);
  });
});
