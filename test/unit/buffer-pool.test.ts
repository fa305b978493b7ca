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

  it('acquireFitting hands out the smallest free buffer that fits, else allocates in size classes; hasFree tells whether acquire reuses', () => {
    const pool = new BufferPool(16384, 32768);
    const a = pool.acquireFitting(5000, 4096)!;
    expect(a.length).toBe(8192); // rounded up to the class
    expect(pool.hasFree(8192)).toBe(false);
    pool.release(a);
    expect(pool.hasFree(8192)).toBe(true);
    expect(pool.acquireFitting(7000, 4096)).toBe(a); // another size, same free buffer
    const big = pool.acquireFitting(12000, 4096)!;
    expect(big.length).toBe(12288);
    pool.release(a);
    pool.release(big);
    expect(pool.acquireFitting(100, 4096)).toBe(a); // the smallest that fits, not the first
    expect(pool.acquireFitting(9000, 4096)).toBe(big); // a smaller request takes a larger free buffer instead of allocating
    expect(pool.stats().allocated).toBe(2);
    expect(pool.acquireFitting(16385, 4096)).toBeUndefined(); // beyond the pooled size
  });
});
