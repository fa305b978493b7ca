import { describe, expect, it } from 'vitest';
import { Packr } from 'msgpackr';
import { isKeelError } from '../../shared/errors.ts';
import { directReadFrameBytesMin, encodeFrame, FrameDecoder, type Frame } from '../../shared/wire/frame-codec.ts';

const smallLimits = { frameBytesMax: 4096, headerBytesMax: 256 };

function frameBytes(header: object, payload?: Buffer): Buffer {
  return Buffer.concat(encodeFrame(header, payload));
}

function drain(decoder: FrameDecoder): Frame[] {
  const frames: Frame[] = [];
  for (let frame = decoder.next(); frame; frame = decoder.next()) frames.push(frame);
  return frames;
}

function expectProtocolError(run: () => unknown): void {
  let caught: unknown;
  try {
    run();
  } catch (err) {
    caught = err;
  }
  expect(isKeelError(caught, 'PROTOCOL'), `expected PROTOCOL, got ${String(caught)}`).toBe(true);
}

/** The preamble of a frame with arbitrary (possibly lying) lengths. */
function preamble(restBytes: number, headerBytes: number): Buffer {
  const buf = Buffer.alloc(8);
  buf.writeUInt32BE(restBytes, 0);
  buf.writeUInt32BE(headerBytes, 4);
  return buf;
}

describe('frame codec', () => {
  const payload = Buffer.from(Array.from({ length: 300 }, (_, i) => (i * 7) & 0xff));
  const stream = Buffer.concat([
    frameBytes({ op: 'write', id: 1, handle: 3, offset: 4096, fua: true }, payload),
    frameBytes({ id: 1, ok: true }),
    frameBytes({ id: 2, err: { code: 'OUT_OF_RANGE', message: 'no', details: { offset: 1 } } }, Buffer.from([9])),
  ]);

  function checkFrames(frames: Frame[]): void {
    expect(frames).toHaveLength(3);
    expect(frames[0]!.header).toEqual({ op: 'write', id: 1, handle: 3, offset: 4096, fua: true });
    expect(frames[0]!.payload.equals(payload)).toBe(true);
    expect(frames[1]!.header).toEqual({ id: 1, ok: true });
    expect(frames[1]!.payload.length).toBe(0);
    expect(frames[2]!.header).toEqual({ id: 2, err: { code: 'OUT_OF_RANGE', message: 'no', details: { offset: 1 } } });
    expect([...frames[2]!.payload]).toEqual([9]);
  }

  it('round-trips frames delivered in one chunk, with payloads as views of that chunk', () => {
    const decoder = new FrameDecoder();
    decoder.push(stream);
    const frames = drain(decoder);
    checkFrames(frames);
    expect(frames[0]!.payload.buffer).toBe(stream.buffer);
    expect(decoder.pendingBytes).toBe(0);
    decoder.end();
  });

  it('round-trips when the stream is split at every byte boundary', () => {
    for (let split = 0; split <= stream.length; split++) {
      const decoder = new FrameDecoder();
      decoder.push(stream.subarray(0, split));
      const frames = drain(decoder);
      decoder.push(stream.subarray(split));
      frames.push(...drain(decoder));
      checkFrames(frames);
      decoder.end();
    }
  });

  it('round-trips a stream fed one byte at a time', () => {
    const decoder = new FrameDecoder();
    const frames: Frame[] = [];
    for (let i = 0; i < stream.length; i++) {
      decoder.push(stream.subarray(i, i + 1));
      frames.push(...drain(decoder));
    }
    checkFrames(frames);
  });

  it('encodes the payload by reference, not by copy', () => {
    const buffers = encodeFrame({ op: 'write', id: 5 }, payload);
    expect(buffers).toHaveLength(2);
    expect(buffers[1]).toBe(payload);
    const head = buffers[0]!;
    expect(head.readUInt32BE(0)).toBe(head.length - 4 + payload.length);
    expect(head.readUInt32BE(4)).toBe(head.length - 8);
  });

  it('joins a frame split across chunks into a buffer from the gather pool when the pool has one', () => {
    const given: Buffer[] = [];
    const pool = { acquire: (bytes: number) => (bytes >= 1000 ? (given[given.length] = Buffer.alloc(bytes + 100)) : undefined), discard: () => undefined };
    const decoder = new FrameDecoder(undefined, pool);
    const big = Buffer.alloc(5000, 7);
    const bytes = Buffer.concat([frameBytes({ op: 'w', id: 1 }, big), frameBytes({ op: 'w', id: 2 }, Buffer.alloc(100, 3))]);
    for (let at = 0; at < bytes.length; at += 999) decoder.push(bytes.subarray(at, Math.min(bytes.length, at + 999)));
    const [first, second] = drain(decoder);
    expect(first!.payload.equals(big)).toBe(true);
    expect(first!.gathered).toBe(given[0]); // the payload is a view of the pool's buffer
    expect(first!.payload.buffer).toBe(given[0]!.buffer);
    expect(second!.payload.equals(Buffer.alloc(100, 3))).toBe(true);
    expect(second!.gathered).toBeUndefined(); // within one chunk: a view of it, no pool
    expect(given).toHaveLength(1);
  });

  it('reads a large frame in place when the reader uses readTarget, and copies what arrives elsewhere', () => {
    const payloads = [100, directReadFrameBytesMin, 5, 3 * directReadFrameBytesMin + 17, 0, 200_000].map((bytes, index) =>
      Buffer.from(Array.from({ length: bytes }, (_, i) => (i * 13 + index) & 0xff)),
    );
    const stream = Buffer.concat(payloads.map((payload, index) => frameBytes({ id: index + 1, ok: true }, payload)));
    for (const inPlaceEvery of [1, 2, 0]) {
      const decoder = new FrameDecoder();
      const frames: Frame[] = [];
      let at = 0;
      let reads = 0;
      let inPlaceBytes = 0;
      while (at < stream.length) {
        reads += 1;
        const want = 1 + ((reads * 40_503) % 90_000); // what one socket read brings, at most
        const target = inPlaceEvery !== 0 && reads % inPlaceEvery === 0 ? decoder.readTarget() : undefined;
        const bytes = Math.min(want, stream.length - at, target?.length ?? Infinity);
        if (target === undefined) {
          decoder.push(Buffer.from(stream.subarray(at, at + bytes)));
        } else {
          stream.copy(target, 0, at, at + bytes); // the kernel's read, straight into the frame's buffer
          decoder.push(target.subarray(0, bytes));
          inPlaceBytes += bytes;
        }
        at += bytes;
        frames.push(...drain(decoder));
      }
      expect(frames.map((frame) => frame.header.id)).toEqual([1, 2, 3, 4, 5, 6]);
      frames.forEach((frame, index) => expect(frame.payload.equals(payloads[index]!)).toBe(true));
      if (inPlaceEvery === 1) expect(inPlaceBytes).toBeGreaterThan(250_000); // most of the three large frames
      expect(decoder.pendingBytes).toBe(0);
    }
  });

  it('offers no read target for small frames or garbage lengths, and reports a stream that ends inside a frame read in place', () => {
    const small = new FrameDecoder();
    small.push(frameBytes({ id: 1, ok: true }, Buffer.alloc(1000)).subarray(0, 20));
    expect(small.readTarget()).toBeUndefined();
    const garbage = new FrameDecoder();
    garbage.push(preamble(2 ** 31, 0));
    expect(garbage.readTarget()).toBeUndefined();
    expectProtocolError(() => garbage.next());
    const large = new FrameDecoder();
    const bytes = frameBytes({ id: 2, ok: true }, Buffer.alloc(directReadFrameBytesMin, 9));
    large.push(bytes.subarray(0, 100));
    const target = large.readTarget()!;
    expect(target.length).toBe(bytes.length - 100);
    bytes.copy(target, 0, 100, 5000);
    large.push(target.subarray(0, 4900));
    expect(large.next()).toBeUndefined();
    expect(large.pendingBytes).toBe(5000);
    expectProtocolError(() => large.end());
  });

  it('tells the size of the next frame once its preamble is here, split or not, before the rest arrives', () => {
    const first = frameBytes({ op: 'write', id: 1 }, Buffer.alloc(1000, 1));
    const second = frameBytes({ op: 'write', id: 2 }, Buffer.alloc(70_000, 2));
    const decoder = new FrameDecoder();
    expect(decoder.nextFrameBytes()).toBe(0);
    decoder.push(first.subarray(0, 5));
    expect(decoder.nextFrameBytes()).toBe(0); // preamble not all here
    decoder.push(first.subarray(5, 9)); // preamble split over two chunks
    expect(decoder.nextFrameBytes()).toBe(first.length);
    expect(decoder.next()).toBeUndefined();
    decoder.push(Buffer.concat([first.subarray(9), second.subarray(0, 100)]));
    expect(decoder.nextFrameBytes()).toBe(first.length); // not consumed by asking
    expect(decoder.next()!.header.id).toBe(1);
    expect(decoder.nextFrameBytes()).toBe(second.length);
    expect(decoder.readTarget()).toBeDefined(); // a large frame read in place
    expect(decoder.nextFrameBytes()).toBe(second.length);
    decoder.push(second.subarray(100));
    expect(decoder.next()!.header.id).toBe(2);
    expect(decoder.nextFrameBytes()).toBe(0);

    const oversized = new FrameDecoder(smallLimits);
    oversized.push(preamble(smallLimits.frameBytesMax, 10));
    expectProtocolError(() => oversized.nextFrameBytes());
    expectProtocolError(() => oversized.next());
  });

  it('rejects an oversized frame as soon as its preamble arrives', () => {
    const decoder = new FrameDecoder(smallLimits);
    decoder.push(preamble(smallLimits.frameBytesMax, 10)); // 4 + rest > max
    expectProtocolError(() => decoder.next());
    // Broken for good: the connection must be closed.
    expectProtocolError(() => decoder.push(Buffer.alloc(1)));
    expectProtocolError(() => decoder.next());
  });

  it('rejects header lengths that are zero, too large, or larger than the frame', () => {
    for (const [rest, header] of [
      [100, 0],
      [1000, smallLimits.headerBytesMax + 1],
      [20, 17],
    ] as const) {
      const decoder = new FrameDecoder(smallLimits);
      decoder.push(preamble(rest, header));
      expectProtocolError(() => decoder.next());
    }
  });

  it('rejects headers that are not a msgpack map', () => {
    const packr = new Packr({ useRecords: false });
    const garbage = [Buffer.from([0xc1]), packr.pack([1, 2, 3]), packr.pack(42), packr.pack(null), Buffer.from([0x85, 0xa1])];
    for (const header of garbage) {
      const decoder = new FrameDecoder(smallLimits);
      decoder.push(Buffer.concat([preamble(4 + header.length, header.length), header]));
      expectProtocolError(() => decoder.next());
    }
  });

  it('rejects random garbage without hanging or crashing', () => {
    let seed = 12345;
    const random = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) & 0xff;
    let rejected = 0;
    for (let round = 0; round < 200; round++) {
      const decoder = new FrameDecoder(smallLimits);
      decoder.push(Buffer.from(Array.from({ length: 64 }, random)));
      try {
        drain(decoder);
        decoder.end();
      } catch (err) {
        expect(isKeelError(err, 'PROTOCOL')).toBe(true);
        rejected++;
      }
    }
    expect(rejected).toBe(200);
  });

  it('reports a stream that ends inside a frame', () => {
    const decoder = new FrameDecoder();
    const one = frameBytes({ id: 1, ok: true }, payload);
    decoder.push(one.subarray(0, one.length - 1));
    expect(decoder.next()).toBeUndefined();
    expectProtocolError(() => decoder.end());
  });

  it('refuses to encode frames beyond the limits', () => {
    expect(() => encodeFrame({ id: 1 }, Buffer.alloc(smallLimits.frameBytesMax), smallLimits)).toThrow(
      expect.objectContaining({ code: 'REQUEST_TOO_LARGE' }),
    );
    expect(() => encodeFrame({ id: 1, blob: 'x'.repeat(300) }, undefined, smallLimits)).toThrow(
      expect.objectContaining({ code: 'PROTOCOL' }),
    );
  });
});

describe('compact headers', () => {
  const blockHeaders = [
    { op: 'read', id: 7, handle: 1, offset: 2 ** 53 - 4096, length: 4096 },
    { op: 'write', id: 0xffff_ffff, handle: 2, offset: 12288, fua: true },
    { op: 'flush', id: 9, handle: 3 },
    { op: 'trim', id: 10, handle: 4, offset: 2 ** 40, length: 1 << 20, fua: false },
    { op: 'zero', id: 11, handle: 5, offset: 0, length: 4096, fua: true },
    { id: 12, ok: true },
  ];

  function headerBytesOf(header: object): Buffer {
    const [head] = encodeFrame(header);
    return head!.subarray(8);
  }

  it('round-trips the block ops and plain ok replies in a fixed layout that starts with 0xc1', () => {
    for (const header of blockHeaders) {
      const bytes = headerBytesOf(header);
      expect(bytes[0], JSON.stringify(header)).toBe(0xc1);
      expect(bytes.length).toBe('op' in header ? 24 : 8);
      const decoder = new FrameDecoder();
      decoder.push(frameBytes(header, Buffer.from([1, 2, 3])));
      const [frame] = drain(decoder);
      expect(frame!.header).toEqual(header);
      expect([...frame!.payload]).toEqual([1, 2, 3]);
    }
  });

  it('sends msgpack for headers the layout cannot hold', () => {
    const others = [
      { op: 'write', id: 1, handle: 1, offset: 0, fua: false, extra: 1 }, // an unknown field
      { op: 'read', id: 1, handle: 1, offset: 0, length: 2 ** 32 }, // length beyond u32
      { op: 'read', id: 1, handle: 1, offset: -4096, length: 4096 },
      { op: 'read', id: 1, handle: 1, offset: 0.5, length: 4096 },
      { op: 'write', id: 1, handle: 1, offset: 0 }, // no fua
      { op: 'open', id: 1, volume: 'v' },
      { id: 1, ok: true, handle: 3 }, // a reply with result fields
      { id: 1, err: { code: 'IO', message: 'x' } },
    ];
    for (const header of others) {
      expect(headerBytesOf(header)[0], JSON.stringify(header)).not.toBe(0xc1);
      const decoder = new FrameDecoder();
      decoder.push(frameBytes(header));
      expect(drain(decoder)[0]!.header).toEqual(header);
    }
  });

  it('rejects compact headers of a wrong size, an unknown kind, reserved bits or an offset beyond 2^53', () => {
    const read = headerBytesOf(blockHeaders[0]!);
    const mutate = (edit: (bytes: Buffer) => void, from = read): Buffer => {
      const bytes = Buffer.from(from);
      edit(bytes);
      return bytes;
    };
    const bad = [
      read.subarray(0, 23),
      Buffer.concat([read, Buffer.alloc(1)]),
      headerBytesOf({ id: 1, ok: true }).subarray(0, 7),
      mutate((b) => (b[1] = 0)),
      mutate((b) => (b[1] = 6)),
      mutate((b) => (b[2] = 0x02)),
      mutate((b) => (b[3] = 1)),
      mutate((b) => b.writeUInt32BE(2 ** 21, 12)),
    ];
    for (const header of bad) {
      const decoder = new FrameDecoder();
      decoder.push(Buffer.concat([preamble(4 + header.length, header.length), header]));
      expectProtocolError(() => decoder.next());
    }
  });
});
