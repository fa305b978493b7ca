/**
 * Bytes received from a stream, kept as the chunks the socket delivered. Readers look at the front without
 * copying when the bytes they need sit in one chunk (the common case), and copy only across chunk edges.
 */
import assert from 'node:assert';

export class ByteQueue {
  private chunks: Buffer[] = [];
  private headOffset = 0;
  /** Bytes held. */
  length = 0;
  /** Reused for fixed-size headers that straddle two chunks, so parsing them allocates nothing. */
  private readonly scratch: Buffer;

  constructor(scratchBytes = 64) {
    this.scratch = Buffer.alloc(scratchBytes);
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  /**
   * The first `count` bytes, not consumed, as a buffer and the offset where they start in it. Valid only
   * until the next call on this queue (it may be the shared scratch buffer).
   */
  peekHeader(count: number): { buffer: Buffer; offset: number } {
    assert(count <= this.length && count <= this.scratch.length);
    const head = this.chunks[0];
    if (head.length - this.headOffset >= count) return { buffer: head, offset: this.headOffset };
    this.copyFront(this.scratch, count);
    return { buffer: this.scratch, offset: 0 };
  }

  /** Removes and returns the first `count` bytes: a view into the received chunk when it holds them all. */
  take(count: number): Buffer {
    assert(count <= this.length);
    if (count === 0) return Buffer.alloc(0);
    const head = this.chunks[0];
    if (head.length - this.headOffset >= count) {
      const view = head.subarray(this.headOffset, this.headOffset + count);
      this.skip(count);
      return view;
    }
    const copy = Buffer.allocUnsafe(count);
    this.copyFront(copy, count);
    this.skip(count);
    return copy;
  }

  skip(count: number): void {
    assert(count <= this.length);
    this.length -= count;
    while (count > 0) {
      const head = this.chunks[0];
      const available = head.length - this.headOffset;
      if (count < available) {
        this.headOffset += count;
        return;
      }
      count -= available;
      this.chunks.shift();
      this.headOffset = 0;
    }
  }

  clear(): void {
    this.chunks = [];
    this.headOffset = 0;
    this.length = 0;
  }

  private copyFront(target: Buffer, count: number): void {
    let copied = 0;
    let offset = this.headOffset;
    for (const chunk of this.chunks) {
      const n = Math.min(chunk.length - offset, count - copied);
      chunk.copy(target, copied, offset, offset + n);
      copied += n;
      offset = 0;
      if (copied === count) return;
    }
  }
}
