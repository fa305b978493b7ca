/**
 * Presigned GET URLs of an S3 ASD's objects, one per key, reused until they near their expiry.
 *
 * Why: a GetObjectCommand through the SDK costs the router 1.1-1.5 ms of CPU (middleware stack, serde,
 * signing), and presigning costs about as much, but a presigned URL is valid for every ranged GET of its
 * object until it expires: the Range header is not part of the signature (only `host` is signed). So a
 * key is presigned once per `reuseMs` and each GET after that is a plain HTTP request (0.3 ms of CPU).
 *
 * Bounded: at most `entriesMax` URLs (least recently used dropped first); concurrent misses of one key
 * share a single presign. `forget` drops a URL the server refused (rotated credentials, clock skew).
 */
import assert from 'node:assert';
import { LruMap } from '../shared/lru-map.ts';

export interface PresignedUrlCacheOptions {
  /** Signs a GET of `key`, valid for `expirySeconds`. */
  presign: (key: string, expirySeconds: number) => Promise<string>;
  expirySeconds: number;
  /** A URL is presigned again once it is this old, well before it expires, so a request in flight never outlives it. */
  reuseMs: number;
  entriesMax: number;
  /** Wall clock (ms); tests pass their own. */
  nowMs?: () => number;
}

interface Entry {
  url: string;
  signedAtMs: number;
}

export class PresignedUrlCache {
  private readonly entries: LruMap<string, Entry>;
  private readonly signing = new Map<string, Promise<string>>();
  private readonly nowMs: () => number;
  private presignCount = 0;

  constructor(private readonly options: PresignedUrlCacheOptions) {
    assert(options.entriesMax >= 1 && options.reuseMs < options.expirySeconds * 1000, 'a URL must be reused only before it expires');
    this.nowMs = options.nowMs ?? Date.now;
    this.entries = new LruMap(options.entriesMax);
  }

  /** A URL for GET of `key`: cached, or presigned now. */
  url(key: string): Promise<string> {
    const entry = this.entries.get(key);
    if (entry && this.nowMs() - entry.signedAtMs < this.options.reuseMs) return Promise.resolve(entry.url);
    return this.signing.get(key) ?? this.sign(key);
  }

  forget(key: string): void {
    this.entries.delete(key);
  }

  stats(): { urls: number; presigned: number } {
    return { urls: this.entries.size, presigned: this.presignCount };
  }

  private sign(key: string): Promise<string> {
    const signedAtMs = this.nowMs();
    this.presignCount++;
    const pending = this.options.presign(key, this.options.expirySeconds).then(
      (url) => {
        this.signing.delete(key);
        this.entries.set(key, { url, signedAtMs });
        return url;
      },
      (err: unknown) => {
        this.signing.delete(key);
        throw err;
      },
    );
    this.signing.set(key, pending);
    return pending;
  }

}
