import { describe, expect, it } from 'vitest';
import { coalesceAdjacent, DtlRecordArena } from '../../router/dtl-record-arena.ts';
import { BufferPool } from '../../shared/buffer-pool.ts';

describe('DtlRecordArena', () => {
  it('carves consecutive records out of one slab and coalesces them into one view', () => {
    const arena = new DtlRecordArena(64 * 1024);
    const records = [arena.take(100), arena.take(200), arena.take(300)];
    records.forEach((r, i) => r.fill(i + 1));
    const joined = coalesceAdjacent(records);
    expect(joined).toHaveLength(1);
    expect(joined[0]!.length).toBe(600);
    expect([joined[0]![0], joined[0]![100], joined[0]![300]]).toEqual([1, 2, 3]);
  });

  it('starts a new slab when one is full, and gives large records their own buffer', () => {
    const arena = new DtlRecordArena(1024);
    const a = arena.take(200);
    const b = arena.take(200); // 400 used
    const big = arena.take(600); // > slab / 2: separate
    const c = arena.take(200);
    const d = arena.take(200);
    const e = arena.take(200); // 1000 used
    const f = arena.take(200); // does not fit: new slab
    expect(big.buffer).not.toBe(a.buffer);
    expect(f.buffer).not.toBe(a.buffer);
    expect(coalesceAdjacent([a, b, c, d, e, f]).map((v) => v.length)).toEqual([1000, 200]);
    expect(coalesceAdjacent([a, c])).toHaveLength(2); // not adjacent: kept apart
  });

  it('carves records of up to half a slab out of slabs (a 1 MiB write in a 4 MiB slab)', () => {
    const arena = new DtlRecordArena(1024);
    const half = arena.take(512);
    const next = arena.take(500);
    expect(next.buffer).toBe(half.buffer);
    expect(coalesceAdjacent([half, next])).toHaveLength(1);
    expect(arena.take(513).buffer).not.toBe(half.buffer);
  });

  it('reuses a slab once every record in it was released, never while one is live', () => {
    const arena = new DtlRecordArena(1000, new BufferPool(1000, 2000)); // records of 240 bytes: 4 per slab
    const slab1 = [arena.take(240), arena.take(240), arena.take(240), arena.take(240)];
    const slab2 = [arena.take(240)];
    expect(slab2[0]!.buffer).not.toBe(slab1[0]!.buffer);
    for (const record of slab1.slice(0, 3)) arena.release(record);
    slab2.push(arena.take(240), arena.take(240), arena.take(240));
    const slab3 = arena.take(240); // slab 1 still holds a live record: not reused
    expect(slab3.buffer).not.toBe(slab1[0]!.buffer);
    expect(arena.stats()).toMatchObject({ slabsAllocated: 3, slabsReused: 0 });
    arena.release(slab1[3]!); // slab 1 empty: kept for reuse
    for (let i = 0; i < 3; i++) arena.take(240); // fills slab 3
    const reused = arena.take(240);
    expect(reused.buffer).toBe(slab1[0]!.buffer);
    expect(arena.stats()).toMatchObject({ slabsAllocated: 3, slabsReused: 1 });
  });

  it('shares emptied slabs between arenas through the pool, up to its byte bound', () => {
    const pool = new BufferPool(1000, 1000); // room for one free slab
    const first = new DtlRecordArena(1000, pool);
    const second = new DtlRecordArena(1000, pool);
    const slab1 = [first.take(240), first.take(240), first.take(240), first.take(240)];
    first.take(240); // slab 1 is full: a second slab becomes current
    for (const record of slab1) first.release(record); // slab 1 empty and not current: back to the pool
    const taken = second.take(240);
    expect(taken.buffer).toBe(slab1[0]!.buffer); // the other arena reuses it
    expect(second.stats()).toMatchObject({ slabsAllocated: 0, slabsReused: 1 });
    expect(pool.stats()).toMatchObject({ allocated: 2, outstanding: 2, freeBytes: 0 });
  });
});
