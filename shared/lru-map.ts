/**
 * A Map bounded to `entriesMax` keys that drops the least recently used first. get() and set() make a
 * key the most recent; peek() looks without doing so. The order is the Map's insertion order: a touched
 * key is deleted and inserted again. `onEvict` hears of the entries set() pushes out (not of delete() or
 * clear(): their caller knows), so a cache of handles can close them.
 */
import assert from 'node:assert';

export class LruMap<K, V> {
  private readonly map = new Map<K, V>();

  constructor(
    private readonly entriesMax: number,
    private readonly onEvict?: (key: K, value: V) => void,
  ) {
    assert(Number.isInteger(entriesMax) && entriesMax >= 1, `entriesMax=${entriesMax}`);
  }

  get size(): number {
    return this.map.size;
  }

  get(key: K): V | undefined {
    const value = this.map.get(key);
    if (value !== undefined) {
      this.map.delete(key);
      this.map.set(key, value);
    }
    return value;
  }

  peek(key: K): V | undefined {
    return this.map.get(key);
  }

  set(key: K, value: V): void {
    this.map.delete(key);
    this.map.set(key, value);
    while (this.map.size > this.entriesMax) {
      const [oldestKey, oldest] = this.map.entries().next().value!;
      this.map.delete(oldestKey);
      this.onEvict?.(oldestKey, oldest);
    }
  }

  delete(key: K): boolean {
    return this.map.delete(key);
  }

  entries(): IterableIterator<[K, V]> {
    return this.map.entries();
  }

  values(): IterableIterator<V> {
    return this.map.values();
  }

  clear(): void {
    this.map.clear();
  }
}
