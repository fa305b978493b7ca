import { describe, expect, it } from 'vitest';
import { LruMap } from '../../shared/lru-map.ts';

describe('LruMap', () => {
  it('drops the least recently used key past its bound; get and set touch, peek does not', () => {
    const lru = new LruMap<string, number>(2);
    lru.set('a', 1);
    lru.set('b', 2);
    expect(lru.get('a')).toBe(1); // b is now the oldest
    lru.set('c', 3);
    expect([lru.peek('a'), lru.peek('b'), lru.peek('c'), lru.size]).toEqual([1, undefined, 3, 2]);
    expect(lru.peek('a')).toBe(1); // a stays the oldest
    lru.set('d', 4);
    expect([lru.peek('a'), lru.peek('c'), lru.peek('d')]).toEqual([undefined, 3, 4]);
    lru.set('c', 30); // set touches too: d is the oldest
    lru.set('e', 5);
    expect([lru.peek('c'), lru.peek('d'), lru.peek('e')]).toEqual([30, undefined, 5]);
    expect(lru.delete('c')).toBe(true);
    expect([lru.size, lru.get('c')]).toEqual([1, undefined]);
  });
});

describe('LruMap eviction callback', () => {
  it('hears of each entry set() pushes out, and of no other removal', () => {
    const evicted: Array<[string, number]> = [];
    const lru = new LruMap<string, number>(2, (key, value) => evicted.push([key, value]));
    lru.set('a', 1);
    lru.set('b', 2);
    lru.set('a', 10); // replacing a key evicts nothing
    lru.set('c', 3);
    expect(evicted).toEqual([['b', 2]]);
    lru.delete('a');
    lru.clear();
    expect(evicted).toEqual([['b', 2]]);
    expect([lru.size, [...lru.values()]]).toEqual([0, []]);
  });
});
