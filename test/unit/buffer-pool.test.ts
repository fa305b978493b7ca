import { describe, expect, it } from 'vitest';
import { BufferPool } from '../../shared/buffer-pool.ts';

describe('BufferPool', () => {
  it('hands the same buffer out again once it is released, per exact size', () => {
    const pool = new BufferPool(8192, 64 * 1024);
    const a = pool.acquire(4096)!;
    pool.release(a);
    expect(pool.acquire(4096)).toBe(a);
    expect(pool.acquire(8192)).not.toBe(a); // another size: its own buffer
    expect(pool.stats()).toMatchObject({ acquired: 3, allocated: 2, outstanding: 2 });
  });

  it('does not pool sizes above its bound, and keeps at most its bytes of free buffers', () => {
    const pool = new BufferPool(8192, 8192);
    expect(pool.acquire(8193)).toBeUndefined();
    expect(pool.acquire(0)).toBeUndefined();
    const held = [pool.acquire(4096)!, pool.acquire(4096)!, pool.acquire(4096)!];
    held.forEach((b) => pool.release(b));
    expect(pool.stats()).toMatchObject({ freeBytes: 8192, outstanding: 0 }); // the third went to the garbage collector
  });

  it('treats a release without an acquire as a programmer error', () => {
    const pool = new BufferPool();
    expect(() => pool.release(Buffer.alloc(4096))).toThrow(/without acquire/);
  });

  it('rounds acquireAtLeast up to a power of two, so nearby sizes share free buffers; hasFree tells whether acquire reuses', () => {
    const pool = new BufferPool(8192, 8192);
    const a = pool.acquireAtLeast(5000)!;
    expect(a.length).toBe(8192);
    expect(pool.hasFree(8192)).toBe(false);
    pool.release(a);
    expect(pool.hasFree(8192)).toBe(true);
    expect(pool.acquireAtLeast(7000)).toBe(a);
    expect(pool.acquireAtLeast(8193)).toBeUndefined(); // rounds to 16384: above the bound
  });
});
