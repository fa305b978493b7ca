/**
 * Buffers that are used again instead of being allocated for every request. A router allocated a fresh
 * buffer for every read reply (4 KiB at 30k reads/s is 120 MB/s of memory outside V8's heap), and V8
 * answers that much external allocation with a full mark-compact every ~200 ms: --trace-gc showed the
 * router's mutator utilisation at 80%. A reply buffer goes back to the pool once the socket has taken
 * its bytes (see RpcResult.onSent).
 *
 * Free buffers are kept by exact size (NBD clients use a few request sizes), bounded in total bytes
 * (limits.replyBufferPoolBytesMax) and in size (limits.replyBufferBytesMax: larger requests allocate).
 */
import assert from 'node:assert';
import { limits } from './limits.ts';

export class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private freeBytes = 0;
  /** Buffers handed out and not released (a leak shows here). */
  private outstanding = 0;
  private readonly counters = { acquired: 0, allocated: 0 };

  constructor(
    private readonly bufferBytesMax: number = limits.replyBufferBytesMax,
    private readonly poolBytesMax: number = limits.replyBufferPoolBytesMax,
  ) {}

  /** A buffer of exactly `bytes` with undefined contents, or undefined when that size is not pooled. */
  acquire(bytes: number): Buffer | undefined {
    if (bytes <= 0 || bytes > this.bufferBytesMax) return undefined;
    this.counters.acquired += 1;
    this.outstanding += 1;
    const reused = this.free.get(bytes)?.pop();
    if (reused !== undefined) {
      this.freeBytes -= bytes;
      return reused;
    }
    this.counters.allocated += 1;
    return Buffer.allocUnsafeSlow(bytes); // its own memory: a pooled slice of a shared slab could not be reused alone
  }

  /**
   * The smallest free buffer of at least `bytes`, else a new one of `bytes` rounded up to `classBytes`;
   * undefined when that is beyond the pooled size. For sizes that vary from use to use (a SCO sealed early
   * is smaller than a full one): exact sizes, or powers of two, rarely matched a free buffer, and every
   * miss was fresh memory. The caller uses a view of the first `bytes`.
   */
  acquireFitting(bytes: number, classBytes: number): Buffer | undefined {
    let fitting: number | undefined;
    for (const [size, list] of this.free) if (size >= bytes && list.length > 0 && (fitting === undefined || size < fitting)) fitting = size;
    if (fitting !== undefined) return this.acquire(fitting);
    return this.acquire(Math.ceil(Math.max(bytes, 1) / classBytes) * classBytes);
  }

  /** True when acquire(bytes) would hand out a free buffer instead of allocating one. */
  hasFree(bytes: number): boolean {
    return (this.free.get(bytes)?.length ?? 0) > 0;
  }

  /** The buffer will not be read or written again by the caller. */
  release(buffer: Buffer): void {
    assert(this.outstanding > 0, 'BufferPool.release without acquire');
    this.outstanding -= 1;
    if (this.freeBytes + buffer.length > this.poolBytesMax) return; // the garbage collector takes it
    let list = this.free.get(buffer.length);
    if (list === undefined) {
      list = [];
      this.free.set(buffer.length, list);
    }
    list.push(buffer);
    this.freeBytes += buffer.length;
  }

  /** The buffer is done with but may still be read by work the caller gave up on (a timed-out write): not reused. */
  discard(_buffer: Buffer): void {
    assert(this.outstanding > 0, 'BufferPool.discard without acquire');
    this.outstanding -= 1;
  }

  stats(): { acquired: number; allocated: number; outstanding: number; freeBytes: number } {
    return { ...this.counters, outstanding: this.outstanding, freeBytes: this.freeBytes };
  }
}
