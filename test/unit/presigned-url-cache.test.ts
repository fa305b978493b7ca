import { describe, expect, it } from 'vitest';
import { PresignedUrlCache } from '../../backend/presigned-url-cache.ts';

function cacheWith(entriesMax: number) {
  let nowMs = 0;
  const signed: string[] = [];
  let failNext = false;
  const cache = new PresignedUrlCache({
    presign: async (key, expirySeconds) => {
      signed.push(key);
      await new Promise((r) => setTimeout(r, 5));
      if (failNext) {
        failNext = false;
        throw new Error('no credentials');
      }
      return `https://s3/${key}?exp=${expirySeconds}&n=${signed.length}`;
    },
    expirySeconds: 60,
    reuseMs: 30_000,
    entriesMax,
    nowMs: () => nowMs,
  });
  return { cache, signed, advance: (ms: number) => (nowMs += ms), failNextPresign: () => (failNext = true) };
}

describe('presigned URL cache', () => {
  it('concurrent misses of a key share one presign, and the URL is reused until its reuse period ends', async () => {
    const { cache, signed, advance } = cacheWith(10);
    const urls = await Promise.all([cache.url('a'), cache.url('a'), cache.url('a')]);
    expect(new Set(urls)).toEqual(new Set(['https://s3/a?exp=60&n=1']));
    advance(29_999);
    expect(await cache.url('a')).toBe('https://s3/a?exp=60&n=1');
    advance(1);
    expect(await cache.url('a')).toBe('https://s3/a?exp=60&n=2');
    expect(signed).toEqual(['a', 'a']);
  });

  it('holds at most entriesMax URLs, dropping the least recently used; forget and failed presigns leave nothing behind', async () => {
    const { cache, signed, failNextPresign } = cacheWith(2);
    await cache.url('a');
    await cache.url('b');
    await cache.url('a'); // a is now the most recent
    await cache.url('c'); // drops b
    expect(cache.stats()).toEqual({ urls: 2, presigned: 3 });
    await cache.url('a');
    await cache.url('b');
    expect(signed).toEqual(['a', 'b', 'c', 'b']);
    cache.forget('b');
    failNextPresign();
    await expect(cache.url('b')).rejects.toThrow('no credentials');
    expect(await cache.url('b')).toMatch(/^https:\/\/s3\/b\?/);
    expect(signed).toEqual(['a', 'b', 'c', 'b', 'b', 'b']);
  });

  it('refuses a reuse period that reaches the expiry (a URL would be used after it expired)', () => {
    expect(() => new PresignedUrlCache({ presign: async () => '', expirySeconds: 60, reuseMs: 60_000, entriesMax: 1 })).toThrow(/before it expires/);
  });
});
