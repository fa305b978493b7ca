import { describe, expect, it } from 'vitest';
import { ByteQueue } from '../../edge/byte-queue.ts';
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOSPC,
  NBD_EPERM,
} from '../../edge/nbd-protocol.ts';
import {
  type NbdRequest,
  encodeRequestHeader,
  encodeSimpleReplyHeader,
  keelErrorFromNbd,
  nbdErrorFor,
  parseRequestHeader,
  parseSimpleReplyHeader,
  takeRequest,
  validateRequest,
} from '../../edge/nbd-requests.ts';
import { KeelError, isKeelError } from '../../shared/errors.ts';

function requestBytes(type: number, fields: Partial<NbdRequest> = {}, payload?: Buffer): Buffer {
  const header = Buffer.alloc(28);
  encodeRequestHeader(header, 0, {
    type,
    flags: fields.flags ?? 0,
    handleHi: fields.handleHi ?? 0xdeadbeef,
    handleLo: fields.handleLo ?? 7,
    offset: fields.offset ?? 0,
    length: fields.length ?? payload?.length ?? 0,
  });
  return payload ? Buffer.concat([header, payload]) : header;
}

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    if (isKeelError(err)) return err.code;
    throw err;
  }
  return undefined;
}

function request(type: number, offset: number, length: number, flags = 0): NbdRequest {
  return { type, offset, length, flags, handleHi: 0, handleLo: 1, payload: undefined };
}

describe('NBD request codec', () => {
  it('parses the 28-byte header, 64-bit offsets included', () => {
    const bytes = requestBytes(NBD_CMD_READ, { flags: NBD_CMD_FLAG_FUA, offset: 2 ** 40 + 4096, length: 65536 });
    expect(bytes.toString('hex', 0, 4)).toBe('25609513');
    expect(parseRequestHeader(bytes, 0)).toEqual({
      flags: NBD_CMD_FLAG_FUA,
      type: NBD_CMD_READ,
      handleHi: 0xdeadbeef,
      handleLo: 7,
      offset: 2 ** 40 + 4096,
      length: 65536,
      payload: undefined,
    });
  });

  it('refuses a bad request magic', () => {
    const bytes = requestBytes(NBD_CMD_READ);
    bytes.writeUInt32BE(0x12560953, 0); // the historic magic is not accepted either
    expect(codeOf(() => parseRequestHeader(bytes, 0))).toBe('PROTOCOL');
    const queue = new ByteQueue();
    queue.push(bytes);
    expect(codeOf(() => takeRequest(queue, 1 << 20))).toBe('PROTOCOL');
  });

  it('waits for truncated headers and payloads without consuming anything', () => {
    const payload = Buffer.alloc(5000, 0xab);
    const bytes = Buffer.concat([requestBytes(NBD_CMD_WRITE, { offset: 1000 }, payload), requestBytes(NBD_CMD_FLUSH)]);
    for (const split of [1, 27, 28, 29, 4000, 5027, 5028, 5029, 5055]) {
      const queue = new ByteQueue();
      queue.push(bytes.subarray(0, split));
      const taken: NbdRequest[] = [];
      for (let r = takeRequest(queue, 1 << 20); r; r = takeRequest(queue, 1 << 20)) taken.push(r);
      // Nothing of an incomplete request is consumed.
      expect(queue.length).toBe(split - (taken.length > 0 ? 5028 : 0));
      queue.push(bytes.subarray(split));
      for (let r = takeRequest(queue, 1 << 20); r; r = takeRequest(queue, 1 << 20)) taken.push(r);
      expect(taken.map((r) => r.type)).toEqual([NBD_CMD_WRITE, NBD_CMD_FLUSH]);
      expect(taken[0].offset).toBe(1000);
      expect(taken[0].payload!.equals(payload)).toBe(true);
      expect(queue.length).toBe(0);
    }
  });

  it('hands out a write payload as a view of the received chunk when it fits in one', () => {
    const chunk = requestBytes(NBD_CMD_WRITE, {}, Buffer.alloc(4096, 1));
    const queue = new ByteQueue();
    queue.push(chunk);
    const write = takeRequest(queue, 1 << 20)!;
    expect(write.payload!.buffer).toBe(chunk.buffer);
    expect(write.payload!.byteOffset).toBe(chunk.byteOffset + 28);
  });

  it('refuses a write whose payload exceeds the maximum before reading it', () => {
    const queue = new ByteQueue();
    queue.push(requestBytes(NBD_CMD_WRITE, { length: (1 << 20) + 1 }));
    expect(codeOf(() => takeRequest(queue, 1 << 20))).toBe('REQUEST_TOO_LARGE');
    const readQueue = new ByteQueue();
    readQueue.push(requestBytes(NBD_CMD_READ, { length: 2 ** 32 - 1 }));
    expect(takeRequest(readQueue, 1 << 20)!.length).toBe(2 ** 32 - 1); // no payload: validated later
  });

  it('encodes and parses simple replies', () => {
    const reply = encodeSimpleReplyHeader(NBD_EIO, 0xdeadbeef, 7);
    expect(reply.toString('hex', 0, 4)).toBe('67446698');
    expect(parseSimpleReplyHeader(reply, 0)).toEqual({ error: NBD_EIO, handleHi: 0xdeadbeef, handleLo: 7 });
    const structured = Buffer.from(reply);
    structured.writeUInt32BE(0x668e33ef, 0);
    expect(codeOf(() => parseSimpleReplyHeader(structured, 0))).toBe('PROTOCOL');
  });
});

describe('NBD request validation', () => {
  const served = { sizeBytes: 1 << 20, readOnly: false, requestBytesMax: 65536 };
  const readOnly = { ...served, readOnly: true };

  it('accepts well-formed requests, unaligned ones included', () => {
    expect(validateRequest(request(NBD_CMD_READ, 1000, 5000), served)).toBe(0);
    expect(validateRequest(request(NBD_CMD_WRITE, (1 << 20) - 1, 1, NBD_CMD_FLAG_FUA), served)).toBe(0);
    expect(validateRequest(request(NBD_CMD_WRITE_ZEROES, 0, 4096, NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE), served)).toBe(0);
    expect(validateRequest(request(NBD_CMD_TRIM, 0, 1 << 20), served)).toBe(0); // trim is not bound by the maximum
    expect(validateRequest(request(NBD_CMD_FLUSH, 0, 0, NBD_CMD_FLAG_FUA), served)).toBe(0);
    expect(validateRequest(request(NBD_CMD_READ, 1 << 20, 0), served)).toBe(0);
  });

  it('answers EINVAL for unknown commands and flags', () => {
    expect(validateRequest(request(NBD_CMD_BLOCK_STATUS, 0, 4096), served)).toBe(NBD_EINVAL);
    expect(validateRequest(request(42, 0, 0), served)).toBe(NBD_EINVAL);
    expect(validateRequest(request(NBD_CMD_READ, 0, 4096, NBD_CMD_FLAG_DF), served)).toBe(NBD_EINVAL);
    expect(validateRequest(request(NBD_CMD_WRITE, 0, 4096, NBD_CMD_FLAG_NO_HOLE), served)).toBe(NBD_EINVAL);
    expect(validateRequest(request(NBD_CMD_WRITE_ZEROES, 0, 4096, NBD_CMD_FLAG_FAST_ZERO), served)).toBe(NBD_EINVAL);
    expect(validateRequest(request(NBD_CMD_READ, 0, 4096, 1 << 15), served)).toBe(NBD_EINVAL);
  });

  it('follows the spec for out-of-range, oversize and read-only requests', () => {
    expect(validateRequest(request(NBD_CMD_READ, (1 << 20) - 100, 101), served)).toBe(NBD_EINVAL);
    expect(validateRequest(request(NBD_CMD_TRIM, 1 << 20, 1), served)).toBe(NBD_EINVAL);
    expect(validateRequest(request(NBD_CMD_WRITE, (1 << 20) - 100, 101), served)).toBe(NBD_ENOSPC);
    expect(validateRequest(request(NBD_CMD_WRITE_ZEROES, 2 ** 62, 1), served)).toBe(NBD_ENOSPC);
    expect(validateRequest(request(NBD_CMD_READ, 0, 65537), served)).toBe(NBD_EINVAL);
    expect(validateRequest(request(NBD_CMD_WRITE_ZEROES, 0, 65537), served)).toBe(NBD_EINVAL);
    expect(validateRequest(request(NBD_CMD_WRITE, 0, 4096), readOnly)).toBe(NBD_EPERM);
    expect(validateRequest(request(NBD_CMD_TRIM, 0, 4096), readOnly)).toBe(NBD_EPERM);
    expect(validateRequest(request(NBD_CMD_WRITE_ZEROES, 0, 4096), readOnly)).toBe(NBD_EPERM);
    expect(validateRequest(request(NBD_CMD_READ, 0, 4096), readOnly)).toBe(0);
    expect(validateRequest(request(NBD_CMD_FLUSH, 0, 0), readOnly)).toBe(0);
    expect(validateRequest(request(NBD_CMD_DISC, 0, 0), served)).toBe(0);
  });
});

describe('NBD error mapping', () => {
  it('maps target errors to NBD errors in one place', () => {
    expect(nbdErrorFor(KeelError.io('disk'), NBD_CMD_READ)).toBe(NBD_EIO);
    expect(nbdErrorFor(KeelError.noOwner('vol', 100), NBD_CMD_WRITE)).toBe(NBD_EIO);
    expect(nbdErrorFor(KeelError.timeout('write', 100), NBD_CMD_WRITE)).toBe(NBD_EIO);
    expect(nbdErrorFor(KeelError.checksumMismatch('cluster'), NBD_CMD_READ)).toBe(NBD_EIO);
    expect(nbdErrorFor(KeelError.readOnly('vol'), NBD_CMD_WRITE)).toBe(NBD_EPERM);
    expect(nbdErrorFor(KeelError.outOfRange(0, 1, 0), NBD_CMD_WRITE)).toBe(NBD_ENOSPC);
    expect(nbdErrorFor(KeelError.outOfRange(0, 1, 0), NBD_CMD_READ)).toBe(NBD_EINVAL);
    expect(nbdErrorFor(KeelError.noSpace('disk full'), NBD_CMD_WRITE)).toBe(NBD_ENOSPC);
    expect(nbdErrorFor(KeelError.noSpace('disk full'), NBD_CMD_FLUSH)).toBe(NBD_ENOSPC);
  });

  it('rethrows programmer errors instead of hiding them as EIO', () => {
    const bug = new TypeError('bug');
    expect(() => nbdErrorFor(bug, NBD_CMD_READ)).toThrow(bug);
  });

  it('gives clients KeelErrors for NBD errors', () => {
    expect(keelErrorFromNbd(NBD_EIO, NBD_CMD_READ, 0, 512, 4096).code).toBe('IO');
    expect(keelErrorFromNbd(NBD_EPERM, NBD_CMD_WRITE, 0, 512, 4096).code).toBe('READ_ONLY');
    expect(keelErrorFromNbd(NBD_ENOSPC, NBD_CMD_WRITE, 4096 - 511, 512, 4096).code).toBe('OUT_OF_RANGE');
    expect(keelErrorFromNbd(NBD_ENOSPC, NBD_CMD_WRITE, 0, 512, 4096).code).toBe('NO_SPACE');
    expect(keelErrorFromNbd(NBD_EINVAL, NBD_CMD_READ, 0, 512, 4096).code).toBe('BAD_ARGUMENT');
    expect(keelErrorFromNbd(9999, NBD_CMD_READ, 0, 512, 4096).details).toMatchObject({ nbdError: 9999, command: 'read' });
  });
});
