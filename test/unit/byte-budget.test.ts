import { describe, expect, it } from 'vitest';
import { ByteBudget } from '../../shared/byte-budget.ts';

const tick = () => new Promise((resolve) => setImmediate(resolve));

describe('ByteBudget', () => {
  it('grants in arrival order: a small ask never overtakes a waiting large one', async () => {
    const budget = new ByteBudget(100);
    const granted: string[] = [];
    expect(budget.acquire(60, () => {})).toBe(true);
    expect(budget.acquire(50, () => granted.push('large'))).toBe(false);
    expect(budget.acquire(10, () => granted.push('small'))).toBe(false); // 40 are free, but 'large' waits first
    expect(budget.acquire(0, () => granted.push('zero'))).toBe(true); // nothing to hold
    budget.release(60);
    expect(granted).toEqual([]); // granted in a later microtask, never from inside release()
    await tick();
    expect(granted).toEqual(['large', 'small']);
    expect(budget.usedBytes).toBe(60);
  });

  it('cancel leaves the line, and reports when the bytes were granted already', async () => {
    const budget = new ByteBudget(10);
    budget.acquire(10, () => {});
    const never = () => expect.fail('cancelled waiter was granted');
    let late = false;
    const grantedLate = () => (late = true);
    budget.acquire(5, never);
    budget.acquire(5, grantedLate);
    expect(budget.cancel(never)).toBe(true);
    budget.release(10);
    expect(budget.cancel(grantedLate)).toBe(false); // granted: the callback owns the bytes now
    await tick();
    expect(late).toBe(true);
    expect(budget.usedBytes).toBe(5);
    expect(budget.waiting).toBe(0);
  });
});
