/**
 * ASD: one place a fragment can live (an S3 bucket/prefix, or a local directory). A flat key -> bytes
 * store with ranged reads. Every call takes an AbortSignal; the object store aborts calls that outlive
 * their deadline. Errors are KeelErrors: OBJECT_NOT_FOUND for a missing key, IO or TIMEOUT otherwise.
 *
 * FaultyAsd wraps any ASD and injects failures, delays, hangs and corrupted reads for tests.
 */
import { KeelError } from '../shared/errors.ts';

export interface Asd {
  readonly id: string;
  /** Stores the concatenation of `buffers` under `key`, atomically (readers see the old or the new object). */
  put(key: string, buffers: readonly Buffer[], signal?: AbortSignal): Promise<void>;
  /** Bytes [offset, offset+length) of the object; shorter when the object ends before. */
  getRange(key: string, offset: number, length: number, signal?: AbortSignal): Promise<Buffer>;
  get(key: string, signal?: AbortSignal): Promise<Buffer>;
  /** Removes the key; no error when it does not exist. */
  delete(key: string, signal?: AbortSignal): Promise<void>;
  /** Keys starting with `prefix`, sorted. */
  list(prefix: string, signal?: AbortSignal): Promise<string[]>;
  /** How puts were written, for ASDs that choose (directory ASDs: O_DIRECT or buffered). */
  writeStats?(): AsdWriteStats;
}

export interface AsdWriteStats {
  directPuts: number;
  bufferedPuts: number;
  directIo: boolean;
  /** Why direct I/O was given up, if it was (the file system refused it). */
  directIoOffReason?: string;
}

export type AsdOp = 'put' | 'getRange' | 'get' | 'delete' | 'list';

export interface AsdFaults {
  /** Operations that fail with an IO error. */
  fail?: readonly AsdOp[];
  /** Operations that never answer (until their signal aborts). */
  hang?: readonly AsdOp[];
  /** Added latency for every operation. */
  delayMs?: number;
  /** Flip one byte in every buffer returned by get/getRange. */
  corruptReads?: boolean;
  /** Fail this many calls (any op) and then behave. */
  failNextCalls?: number;
  /** Cut this many get/getRange bodies to half their length (a truncated response), then behave. */
  truncateNextReads?: number;
  /** Flip one byte in this many get/getRange bodies (bytes corrupted in transit), then behave. */
  corruptNextReads?: number;
}

/** Rejects when the signal aborts; used by ASDs whose underlying call cannot be cancelled. */
export function abortable<T>(promise: Promise<T>, signal: AbortSignal | undefined, what: string): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(abortError(signal, what));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abortError(signal, what));
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (err) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}

export function abortError(signal: AbortSignal, what: string): KeelError {
  const reason: unknown = signal.reason;
  if (reason instanceof KeelError) return reason;
  return KeelError.io(`${what} aborted`, reason);
}

export class FaultyAsd implements Asd {
  faults: AsdFaults = {};
  /** Calls seen, per operation (tests assert on request counts). */
  readonly calls: Record<AsdOp, number> = { put: 0, getRange: 0, get: 0, delete: 0, list: 0 };

  constructor(readonly inner: Asd) {}

  get id(): string {
    return this.inner.id;
  }

  setFaults(faults: AsdFaults): void {
    this.faults = { ...faults };
  }

  clearFaults(): void {
    this.faults = {};
  }

  async put(key: string, buffers: readonly Buffer[], signal?: AbortSignal): Promise<void> {
    await this.before('put', key, signal);
    return this.inner.put(key, buffers, signal);
  }

  async getRange(key: string, offset: number, length: number, signal?: AbortSignal): Promise<Buffer> {
    await this.before('getRange', key, signal);
    return this.corrupt(await this.inner.getRange(key, offset, length, signal));
  }

  async get(key: string, signal?: AbortSignal): Promise<Buffer> {
    await this.before('get', key, signal);
    return this.corrupt(await this.inner.get(key, signal));
  }

  async delete(key: string, signal?: AbortSignal): Promise<void> {
    await this.before('delete', key, signal);
    return this.inner.delete(key, signal);
  }

  async list(prefix: string, signal?: AbortSignal): Promise<string[]> {
    await this.before('list', prefix, signal);
    return this.inner.list(prefix, signal);
  }

  private async before(op: AsdOp, key: string, signal: AbortSignal | undefined): Promise<void> {
    this.calls[op]++;
    const f = this.faults;
    if (f.delayMs) await abortable(new Promise((r) => setTimeout(r, f.delayMs)), signal, `${op} ${key}`);
    if (f.hang?.includes(op)) await abortable(new Promise(() => {}), signal, `${op} ${key}`);
    if (f.failNextCalls && f.failNextCalls > 0) {
      f.failNextCalls--;
      throw KeelError.io(`injected failure of ${op} ${key} on ASD ${this.id}`);
    }
    if (f.fail?.includes(op)) throw KeelError.io(`injected failure of ${op} ${key} on ASD ${this.id}`);
  }

  private corrupt(buf: Buffer): Buffer {
    const f = this.faults;
    if (f.truncateNextReads && f.truncateNextReads > 0 && buf.length > 0) {
      f.truncateNextReads--;
      return buf.subarray(0, buf.length >> 1);
    }
    const once = f.corruptNextReads !== undefined && f.corruptNextReads > 0;
    if (once) f.corruptNextReads!--;
    if ((!f.corruptReads && !once) || buf.length === 0) return buf;
    const copy = Buffer.from(buf);
    copy[copy.length >> 1]! ^= 0xff;
    return copy;
  }
}
