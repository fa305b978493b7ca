/**
 * Decides whether a data read or write runs inline: a synchronous pread/pwrite on the event loop
 * instead of a round trip through libuv's thread pool. A page-cache hit costs about 2 us inline against
 * 8-14 us of CPU through the pool (a futex wake, a worker, an async completion and another event-loop
 * turn), and the request finishes in the same turn, so replies batch into fewer socket writes. Redis
 * writes its AOF from the main thread for the same reason.
 *
 * The risk is a miss that goes to the device while the whole router waits. The gate times every inline
 * operation against limits.inlineIoSlowUsMax plus a copy allowance per byte (a 1 MiB write into the page
 * cache legitimately takes a few hundred microseconds here). limits.inlineIoSlowStreakMax slow operations
 * in a row send all data I/O back to the thread pool for limits.inlineIoPauseMs, after which inline I/O is
 * tried again. A streak, not a single slow call: on a busy 2-core host the scheduler preempts the event
 * loop in the middle of a call now and then, and that looks just as slow as a miss; misses come in runs.
 * So a cold or slow disk blocks the event loop for at most a streak of misses per pause. fsync always goes
 * through the pool.
 */
import { limits } from './limits.ts';

export interface InlineIoClock {
  /** A monotonic clock in milliseconds with sub-microsecond resolution (performance.now()). */
  nowMs(): number;
}

const monotonicClock: InlineIoClock = { nowMs: () => performance.now() };

export class InlineIoGate {
  private pausedUntilMs = 0;
  private slowInRow = 0;
  private readonly counters = { inline: 0, pooled: 0, slow: 0, pauses: 0 };

  constructor(
    private readonly clock: InlineIoClock = monotonicClock,
    private readonly slowUsMax: number = limits.inlineIoSlowUsMax,
    private readonly pauseMs: number = limits.inlineIoPauseMs,
    private readonly enabled = true,
  ) {}

  /**
   * Runs `inline`, which moves `bytes`, when allowed and times it; otherwise returns undefined and the
   * caller uses the thread pool. Operations over `bytesMax` always go to the pool.
   */
  run<T>(bytes: number, inline: () => T, bytesMax = Number.POSITIVE_INFINITY): T | undefined {
    if (!this.enabled) return undefined;
    const startMs = this.clock.nowMs();
    if (startMs < this.pausedUntilMs || bytes > bytesMax) {
      this.counters.pooled += 1;
      return undefined;
    }
    const result = inline();
    const endMs = this.clock.nowMs();
    this.counters.inline += 1;
    if ((endMs - startMs) * 1000 <= this.slowUsMax + (bytes * limits.inlineIoCopyNsPerByteMax) / 1000) {
      this.slowInRow = 0;
      return result;
    }
    this.counters.slow += 1;
    this.slowInRow += 1;
    if (this.slowInRow >= limits.inlineIoSlowStreakMax) {
      this.slowInRow = 0;
      this.counters.pauses += 1;
      this.pausedUntilMs = endMs + this.pauseMs;
    }
    return result;
  }

  stats(): { inline: number; pooled: number; slow: number; pauses: number } {
    return { ...this.counters };
  }
}

/** One gate per process: every file shares the device, and a miss on one says the cache is cold for all. */
export const processInlineIoGate = new InlineIoGate();
