/**
 * Pure frame codec for the wire protocol (layout in wire-format.ts, spec in docs/wire-protocol.md).
 * No I/O: the encoder turns a header object and an optional payload into buffers to be written with
 * writev; the decoder takes socket chunks in any split and yields frames. Payloads are never copied
 * when they lie within one chunk (a subarray of it is returned), and a frame's lengths are validated as
 * soon as its 8-byte preamble arrives, so a garbage length never makes us buffer megabytes.
 */
import { Packr, Unpackr } from 'msgpackr';
import { KeelError } from '../errors.ts';
import { limits } from '../limits.ts';
import { compactHeaderBytes, readCompactHeader, writeCompactHeader } from './compact-header.ts';
import { compactHeaderMarker, framePreambleBytes, frameLengthFieldBytes, headerLengthFieldBytes } from './wire-format.ts';

export interface Frame {
  header: Record<string, unknown>;
  /** Zero-length when the frame has no payload. May share memory with the chunk it arrived in. */
  payload: Buffer;
  /** The frame was joined from several chunks into this buffer from the decoder's GatherPool (payload is a view of it). */
  gathered?: Buffer;
}

/**
 * Buffers for frames that span socket chunks (a 1 MiB write arrives in 64 KiB reads). A fresh 1 MiB
 * buffer per frame costs page faults on first touch and external memory that V8 answers with
 * mark-compacts; a pool hands the same memory out again once its owner gives it back.
 */
export interface GatherPool {
  /** A buffer of at least `bytes`, or undefined to allocate one. */
  acquire(bytes: number): Buffer | undefined;
  /** A buffer acquired for a frame the decoder then rejected: it goes back unused. */
  discard(buffer: Buffer): void;
}

export interface FrameLimits {
  frameBytesMax: number;
  headerBytesMax: number;
  /** Said after the maximum when a frame exceeds it, e.g. which bound applies and why. */
  frameBytesMaxNote?: string;
}

export const defaultFrameLimits: FrameLimits = {
  frameBytesMax: limits.wireFrameBytesMax,
  headerBytesMax: limits.wireHeaderBytesMax,
};

// Plain msgpack maps (no record extension) so any msgpack implementation can speak the protocol.
const packr = new Packr({ useRecords: false, variableMapSize: true });
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true });
const emptyPayload = Buffer.alloc(0);

/**
 * Encodes one frame as [preamble + header, ...payload]. The payload (one buffer, or several sent back to
 * back) is referenced, not copied. Throws PROTOCOL if the header is too large and REQUEST_TOO_LARGE if
 * the frame is.
 */
export function encodeFrame(header: object, payload?: Buffer | readonly Buffer[], frameLimits: FrameLimits = defaultFrameLimits): Buffer[] {
  const compactBytes = compactHeaderBytes(header);
  // packr returns a view of its reusable scratch buffer: copy it out before the next pack().
  const packed = compactBytes === 0 ? packr.pack(header) : undefined;
  const headerBytes = packed?.length ?? compactBytes;
  if (headerBytes > frameLimits.headerBytesMax) {
    throw KeelError.protocol(`frame header of ${headerBytes} bytes exceeds ${frameLimits.headerBytesMax}`);
  }
  const payloadBytes = payloadLength(payload);
  const restBytes = headerLengthFieldBytes + headerBytes + payloadBytes;
  if (frameLengthFieldBytes + restBytes > frameLimits.frameBytesMax) {
    throw KeelError.requestTooLarge(frameLengthFieldBytes + restBytes, frameLimits.frameBytesMax);
  }
  const head = Buffer.allocUnsafe(framePreambleBytes + headerBytes);
  head.writeUInt32BE(restBytes, 0);
  head.writeUInt32BE(headerBytes, frameLengthFieldBytes);
  if (packed === undefined) writeCompactHeader(header, head, framePreambleBytes);
  else packed.copy(head, framePreambleBytes);
  if (payloadBytes === 0) return [head];
  return Buffer.isBuffer(payload) ? [head, payload] : [head, ...(payload as readonly Buffer[]).filter((part) => part.length > 0)];
}

function payloadLength(payload: Buffer | readonly Buffer[] | undefined): number {
  if (payload === undefined) return 0;
  if (Buffer.isBuffer(payload)) return payload.length;
  let total = 0;
  for (const part of payload as readonly Buffer[]) total += part.length;
  return total;
}

/** A frame at least this large is read straight into a buffer of its own (FrameDecoder.readTarget). */
export const directReadFrameBytesMin = 64 * 1024;
/**
 * The most room one read in place is offered. Offering a large frame's whole rest made 1M sequential
 * reads 5% slower (the owner spent more CPU per MiB sending them); 64 KiB reads, as a socket read into
 * a buffer of its own gets, made them 5% faster.
 */
const directReadBytesMax = 64 * 1024;

/** A large frame being read in place (FrameDecoder.readTarget). */
interface FrameInPlace {
  /** The whole frame's buffer. */
  frame: Buffer;
  /** Bytes of it received so far. */
  filledBytes: number;
  /** The gather pool's buffer that `frame` is a view of, if it came from the pool. */
  pooled: Buffer | undefined;
}

/**
 * Streaming decoder. push() socket chunks, then call next() until it returns undefined. Pull-based so a
 * server can stop taking frames while its request window is full and resume later.
 * After it throws PROTOCOL once, the decoder stays broken: the connection must be closed.
 */
export class FrameDecoder {
  private frameLimits: FrameLimits;
  private filling: FrameInPlace | undefined;
  private readonly chunks: Buffer[] = [];
  /** Bytes of chunks[0] already consumed. */
  private headOffset = 0;
  private bufferedBytes = 0;
  private failure: KeelError | undefined;
  /** Set by gather() when the joined bytes came from the pool; next() hands it over with the frame. */
  private gatheredFromPool: Buffer | undefined;

  constructor(
    frameLimits: FrameLimits = defaultFrameLimits,
    private readonly gatherPool?: GatherPool,
  ) {
    this.frameLimits = frameLimits;
  }

  /**
   * Bounds the frames after the ones already returned by next() (a server raises them once a connection
   * has said hello). Frames already buffered are checked against them when next() gets to them.
   */
  setLimits(frameLimits: FrameLimits): void {
    this.frameLimits = frameLimits;
  }

  /** Bytes received and not yet returned as frames. */
  get pendingBytes(): number {
    return this.bufferedBytes;
  }

  /**
   * Bytes of the next frame next() will return (all of it, preamble included) once its preamble has
   * arrived, else 0: what a server must have room for before it lets the rest of the frame in. Throws
   * PROTOCOL, as next() would, if the lengths are out of bounds.
   */
  nextFrameBytes(): number {
    if (this.failure) throw this.failure;
    if (this.filling !== undefined) return this.filling.frame.length;
    if (this.bufferedBytes < framePreambleBytes) return 0;
    const first = this.chunks[0]!;
    const inFirst = first.length - this.headOffset >= framePreambleBytes;
    const preamble = inFirst ? first : this.peek(framePreambleBytes);
    const at = inFirst ? this.headOffset : 0;
    const restBytes = preamble.readUInt32BE(at);
    this.validateLengths(restBytes, preamble.readUInt32BE(at + frameLengthFieldBytes));
    return frameLengthFieldBytes + restBytes;
  }

  push(chunk: Buffer): void {
    if (this.failure) throw this.failure;
    if (chunk.length === 0) return;
    if (this.filling !== undefined) chunk = this.fill(this.filling, chunk);
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.bufferedBytes += chunk.length;
  }

  /**
   * Where the next socket read may land, for a transport that can read into given memory: the rest of a
   * frame of at least directReadFrameBytesMin whose preamble has arrived. Read there and push()ed, its
   * bytes need no join (a 1 MiB reply arrives in many reads; joining them cost a copy of every byte).
   * Undefined: read anywhere. Call only once next() has returned undefined.
   */
  readTarget(): Buffer | undefined {
    if (this.failure) return undefined;
    if (this.filling !== undefined) return this.filling.frame.subarray(this.filling.filledBytes, this.filling.filledBytes + directReadBytesMax);
    if (this.bufferedBytes < framePreambleBytes) return undefined;
    const preamble = this.peek(framePreambleBytes);
    const restBytes = preamble.readUInt32BE(0);
    const frameBytes = frameLengthFieldBytes + restBytes;
    // Garbage lengths are next()'s to reject; here they only mean "not in place".
    if (lengthProblem(restBytes, preamble.readUInt32BE(frameLengthFieldBytes), this.frameLimits) !== undefined) return undefined;
    if (frameBytes < directReadFrameBytesMin || this.bufferedBytes >= frameBytes) return undefined;
    // All that is buffered is the start of this frame: move it into the frame's own buffer.
    const pooled = this.gatherPool?.acquire(frameBytes);
    const frame = pooled === undefined ? Buffer.allocUnsafe(frameBytes) : pooled.subarray(0, frameBytes);
    const filledBytes = this.bufferedBytes;
    this.copyFront(frame, filledBytes);
    this.chunks.length = 0;
    this.headOffset = 0;
    this.filling = { frame, filledBytes, pooled };
    return frame.subarray(filledBytes, filledBytes + directReadBytesMax);
  }

  /** Takes what of `chunk` belongs to the frame being filled (copied unless it was read in place); returns the rest. */
  private fill(filling: FrameInPlace, chunk: Buffer): Buffer {
    const { frame, filledBytes } = filling;
    const taken = Math.min(frame.length - filledBytes, chunk.length);
    const inPlace = chunk.buffer === frame.buffer && chunk.byteOffset === frame.byteOffset + filledBytes;
    if (!inPlace) chunk.copy(frame, filledBytes, 0, taken);
    filling.filledBytes += taken;
    this.bufferedBytes += taken;
    return chunk.subarray(taken);
  }

  /** The next complete frame, or undefined if more bytes are needed. Throws KeelError PROTOCOL on garbage. */
  next(): Frame | undefined {
    if (this.failure) throw this.failure;
    if (this.filling !== undefined) return this.nextFilled(this.filling);
    if (this.bufferedBytes < framePreambleBytes) return undefined;
    const first = this.chunks[0]!;
    // The preamble is read in place when it lies in the first chunk (nearly always): no view to allocate.
    const inFirst = first.length - this.headOffset >= framePreambleBytes;
    const preamble = inFirst ? first : this.peek(framePreambleBytes);
    const at = inFirst ? this.headOffset : 0;
    const restBytes = preamble.readUInt32BE(at);
    const headerBytes = preamble.readUInt32BE(at + frameLengthFieldBytes);
    this.validateLengths(restBytes, headerBytes);
    const frameBytes = frameLengthFieldBytes + restBytes;
    if (this.bufferedBytes < frameBytes) return undefined;
    const frame = this.take(frameBytes);
    const gathered = this.gatheredFromPool;
    this.gatheredFromPool = undefined;
    return this.decodeFrame(frame, headerBytes, gathered);
  }

  private nextFilled(filling: FrameInPlace): Frame | undefined {
    const { frame, filledBytes, pooled } = filling;
    if (filledBytes < frame.length) return undefined;
    this.filling = undefined;
    this.bufferedBytes -= frame.length;
    return this.decodeFrame(frame, frame.readUInt32BE(frameLengthFieldBytes), pooled); // lengths checked by readTarget
  }

  /** Header and payload of a whole frame; `gathered` (its pool buffer) goes back to the pool if it is garbage. */
  private decodeFrame(frame: Buffer, headerBytes: number, gathered: Buffer | undefined): Frame {
    let header: Record<string, unknown>;
    try {
      header = this.decodeHeader(frame, framePreambleBytes, headerBytes);
    } catch (err) {
      if (gathered !== undefined) this.gatherPool!.discard(gathered);
      throw err;
    }
    const payloadStart = framePreambleBytes + headerBytes;
    const payload = payloadStart === frame.length ? emptyPayload : frame.subarray(payloadStart);
    return gathered === undefined ? { header, payload } : { header, payload, gathered };
  }

  /** The stream ended: throws PROTOCOL if it stopped in the middle of a frame. */
  end(): void {
    if (this.failure) throw this.failure;
    if (this.bufferedBytes > 0) {
      if (this.filling?.pooled !== undefined) this.gatherPool!.discard(this.filling.pooled);
      this.filling = undefined;
      this.fail(`stream ended inside a frame (${this.bufferedBytes} bytes left over)`);
    }
  }

  private validateLengths(restBytes: number, headerBytes: number): void {
    const problem = lengthProblem(restBytes, headerBytes, this.frameLimits);
    if (problem !== undefined) this.fail(problem);
  }

  private decodeHeader(frame: Buffer, at: number, length: number): Record<string, unknown> {
    if (frame[at] === compactHeaderMarker) {
      const compact = readCompactHeader(frame, at, length);
      if (typeof compact === 'string') this.fail(compact);
      return compact;
    }
    let header: unknown;
    try {
      header = unpackr.unpack(frame.subarray(at, at + length));
    } catch (err) {
      this.fail(`frame header is not valid msgpack: ${(err as Error).message}`);
    }
    if (typeof header !== 'object' || header === null || Object.getPrototypeOf(header) !== Object.prototype) {
      this.fail('frame header is not a msgpack map');
    }
    return header as Record<string, unknown>;
  }

  private fail(message: string): never {
    this.failure = KeelError.protocol(message);
    throw this.failure;
  }

  /** The first n buffered bytes without consuming them (n is small: the preamble). */
  private peek(n: number): Buffer {
    const first = this.chunks[0]!;
    if (first.length - this.headOffset >= n) return first.subarray(this.headOffset, this.headOffset + n);
    return this.gather(n, false);
  }

  /** Consumes n bytes: a view of the first chunk if they lie in it, else a copy that joins chunks. */
  private take(n: number): Buffer {
    const first = this.chunks[0]!;
    if (first.length - this.headOffset >= n) {
      const view = first.subarray(this.headOffset, this.headOffset + n);
      this.consume(n);
      return view;
    }
    return this.gather(n, true);
  }

  private gather(n: number, consume: boolean): Buffer {
    const pooled = consume ? this.gatherPool?.acquire(n) : undefined;
    if (pooled !== undefined) this.gatheredFromPool = pooled;
    const out = pooled === undefined ? Buffer.allocUnsafe(n) : pooled.subarray(0, n);
    this.copyFront(out, n);
    if (consume) this.consume(n);
    return out;
  }

  /** Copies the first n buffered bytes to the start of `out`, joining chunks; consumes nothing. */
  private copyFront(out: Buffer, n: number): void {
    let written = 0;
    let offset = this.headOffset;
    for (let i = 0; written < n; i++) {
      const chunk = this.chunks[i]!;
      written += chunk.copy(out, written, offset, Math.min(chunk.length, offset + (n - written)));
      offset = 0;
    }
  }

  private consume(n: number): void {
    this.bufferedBytes -= n;
    while (n > 0) {
      const available = this.chunks[0]!.length - this.headOffset;
      if (n < available) {
        this.headOffset += n;
        return;
      }
      n -= available;
      this.chunks.shift();
      this.headOffset = 0;
    }
  }
}

/** What is wrong with a frame's two length fields, if anything. */
function lengthProblem(restBytes: number, headerBytes: number, frameLimits: FrameLimits): string | undefined {
  const frameBytes = frameLengthFieldBytes + restBytes;
  if (frameBytes > frameLimits.frameBytesMax) {
    const note = frameLimits.frameBytesMaxNote === undefined ? '' : ` ${frameLimits.frameBytesMaxNote}`;
    return `frame of ${frameBytes} bytes exceeds the maximum of ${frameLimits.frameBytesMax}${note}`;
  }
  if (headerBytes === 0) return 'frame has an empty header';
  if (headerBytes > frameLimits.headerBytesMax) return `frame header of ${headerBytes} bytes exceeds the maximum of ${frameLimits.headerBytesMax}`;
  if (headerLengthFieldBytes + headerBytes > restBytes) return `frame header of ${headerBytes} bytes does not fit in a frame of ${frameBytes} bytes`;
  return undefined;
}
