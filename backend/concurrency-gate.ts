/**
 * A counting semaphore: at most `max` holders at once, the rest wait in FIFO order. Waiters are not
 * bounded here: every caller is itself an operation bounded by its owner (the router's request windows).
 */
import assert from 'node:assert';

export class ConcurrencyGate {
  private active = 0;
  private readonly waiters: (() => void)[] = [];

  constructor(readonly max: number) {
    assert(Number.isInteger(max) && max >= 1);
  }

  get inFlight(): number {
    return this.active;
  }

  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.active >= this.max) await new Promise<void>((resolve) => this.waiters.push(resolve));
    else this.active++;
    try {
      return await fn();
    } finally {
      const next = this.waiters.shift();
      if (next) next(); // hand the slot over: `active` stays the same
      else this.active--;
    }
  }
}

/** Runs `fn` over `items` with at most `max` in flight; results in item order, first error wins. */
export async function mapBounded<T, R>(items: readonly T[], max: number, fn: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i]!, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(max, items.length) }, worker));
  return results;
}
