import { describe, expect, it } from 'vitest';
import { ByteQueue } from '../../edge/byte-queue.ts';

describe('ByteQueue', () => {
  it('returns the same bytes however the stream was chunked', () => {
    const bytes = Buffer.from(Array.from({ length: 300 }, (_, i) => i & 0xff));
    for (const chunkBytes of [1, 3, 7, 28, 64, 299, 300]) {
      const queue = new ByteQueue();
      for (let i = 0; i < bytes.length; i += chunkBytes) queue.push(bytes.subarray(i, i + chunkBytes));
      expect(queue.length).toBe(300);
      const { buffer, offset } = queue.peekHeader(28);
      expect(buffer.subarray(offset, offset + 28).equals(bytes.subarray(0, 28))).toBe(true);
      expect(queue.length).toBe(300); // peek consumes nothing
      queue.skip(28);
      expect(queue.take(100).equals(bytes.subarray(28, 128))).toBe(true);
      expect(queue.take(172).equals(bytes.subarray(128))).toBe(true);
      expect(queue.length).toBe(0);
    }
  });

  it('peeks in place when the bytes sit in one chunk', () => {
    const chunk = Buffer.alloc(64, 5);
    const queue = new ByteQueue();
    queue.push(chunk);
    queue.skip(10);
    const { buffer, offset } = queue.peekHeader(28);
    expect(buffer).toBe(chunk);
    expect(offset).toBe(10);
    expect(queue.take(54).buffer).toBe(chunk.buffer);
  });
});
