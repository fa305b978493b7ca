/**
 * Pure codec for the NBD transmission phase (docs/nbd-protocol.md, "Transmission"): the 28-byte request
 * header, simple replies, request validation and the mapping between Keel errors and NBD error values.
 * Request headers are parsed in place from the received chunk; write payloads are views, not copies.
 */
import { KeelError, isKeelError } from '../shared/errors.ts';
import type { ByteQueue } from './byte-queue.ts';
import { readUint64, writeUint64 } from './nbd-handshake.ts';
import {
  NBD_CMD_DISC,
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
  NBD_ESHUTDOWN,
  NBD_REQUEST_HEADER_BYTES,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_HEADER_BYTES,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  commandNames,
} from './nbd-protocol.ts';

/** One request. The 64-bit handle is opaque and echoed back, so it is kept as two 32-bit halves. */
export interface NbdRequest {
  flags: number;
  type: number;
  handleHi: number;
  handleLo: number;
  /** May exceed 2^53 (imprecise) for hostile input; such offsets are always beyond the device. */
  offset: number;
  length: number;
  /** The data of a WRITE; undefined for every other command. */
  payload: Buffer | undefined;
}

/** Throws PROTOCOL on a wrong magic: the stream cannot be resynchronised. */
export function parseRequestHeader(buffer: Buffer, at: number): NbdRequest {
  const magic = buffer.readUInt32BE(at);
  if (magic !== NBD_REQUEST_MAGIC) throw KeelError.protocol('bad NBD request magic', { magic: magic.toString(16) });
  return {
    flags: buffer.readUInt16BE(at + 4),
    type: buffer.readUInt16BE(at + 6),
    handleHi: buffer.readUInt32BE(at + 8),
    handleLo: buffer.readUInt32BE(at + 12),
    offset: readUint64(buffer, at + 16),
    length: buffer.readUInt32BE(at + 24),
    payload: undefined,
  };
}

/**
 * The request at the front of the queue, parsed but not consumed (its WRITE payload may still be arriving),
 * or null while its header is incomplete. Throws PROTOCOL on a wrong magic and REQUEST_TOO_LARGE for a
 * WRITE whose payload exceeds `requestBytesMax` (its bytes cannot be skipped without reading them, so the
 * connection ends). The server peeks first so it can reserve memory before the payload is read.
 */
export function peekRequest(queue: ByteQueue, requestBytesMax: number): NbdRequest | null {
  if (queue.length < NBD_REQUEST_HEADER_BYTES) return null;
  const { buffer, offset } = queue.peekHeader(NBD_REQUEST_HEADER_BYTES);
  const request = parseRequestHeader(buffer, offset);
  if (request.type === NBD_CMD_WRITE && request.length > requestBytesMax) throw KeelError.requestTooLarge(request.length, requestBytesMax);
  return request;
}

/**
 * Consumes `request` (from peekRequest on this queue) once it is complete: the header, and a WRITE's
 * payload, which becomes `request.payload`. Returns false, consuming nothing, while the payload is incomplete.
 */
export function consumeRequest(queue: ByteQueue, request: NbdRequest): boolean {
  const payloadBytes = request.type === NBD_CMD_WRITE ? request.length : 0;
  if (queue.length < NBD_REQUEST_HEADER_BYTES + payloadBytes) return false;
  queue.skip(NBD_REQUEST_HEADER_BYTES);
  if (request.type === NBD_CMD_WRITE) request.payload = queue.take(payloadBytes);
  return true;
}

/** peekRequest and consumeRequest in one: a complete request, or null while it is incomplete. */
export function takeRequest(queue: ByteQueue, requestBytesMax: number): NbdRequest | null {
  const request = peekRequest(queue, requestBytesMax);
  return request && consumeRequest(queue, request) ? request : null;
}

/** Client side: writes a request header into `target` at `at`. */
export function encodeRequestHeader(
  target: Buffer,
  at: number,
  request: { type: number; flags: number; handleHi: number; handleLo: number; offset: number; length: number },
): void {
  target.writeUInt32BE(NBD_REQUEST_MAGIC, at);
  target.writeUInt16BE(request.flags, at + 4);
  target.writeUInt16BE(request.type, at + 6);
  target.writeUInt32BE(request.handleHi, at + 8);
  target.writeUInt32BE(request.handleLo, at + 12);
  writeUint64(target, request.offset, at + 16);
  target.writeUInt32BE(request.length, at + 24);
}

/** A 16-byte simple reply header (small allocations come from Node's buffer pool). */
export function encodeSimpleReplyHeader(error: number, handleHi: number, handleLo: number): Buffer {
  const buffer = Buffer.allocUnsafe(NBD_SIMPLE_REPLY_HEADER_BYTES);
  buffer.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
  buffer.writeUInt32BE(error, 4);
  buffer.writeUInt32BE(handleHi, 8);
  buffer.writeUInt32BE(handleLo, 12);
  return buffer;
}

export interface SimpleReplyHeader {
  error: number;
  handleHi: number;
  handleLo: number;
}

/** Client side. Throws PROTOCOL on a wrong magic (structured replies are never negotiated by Keel). */
export function parseSimpleReplyHeader(buffer: Buffer, at: number): SimpleReplyHeader {
  const magic = buffer.readUInt32BE(at);
  if (magic === NBD_STRUCTURED_REPLY_MAGIC) throw KeelError.protocol('structured NBD reply without negotiation');
  if (magic !== NBD_SIMPLE_REPLY_MAGIC) throw KeelError.protocol('bad NBD reply magic', { magic: magic.toString(16) });
  return { error: buffer.readUInt32BE(at + 4), handleHi: buffer.readUInt32BE(at + 8), handleLo: buffer.readUInt32BE(at + 12) };
}

/** Command flags each served command accepts. FUA is valid on every command once SEND_FUA is advertised. */
const allowedFlags: Record<number, number> = {
  [NBD_CMD_READ]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_WRITE]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_DISC]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_FLUSH]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_TRIM]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_WRITE_ZEROES]: NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE,
};

export function isWriteCommand(type: number): boolean {
  return type === NBD_CMD_WRITE || type === NBD_CMD_TRIM || type === NBD_CMD_WRITE_ZEROES;
}

export interface ServedExport {
  sizeBytes: number;
  readOnly: boolean;
  requestBytesMax: number;
}

/**
 * The NBD error a request earns before it reaches the target, or 0 when it may run. Follows the spec's
 * "Error values": EINVAL for unknown commands/flags, EPERM for writes to a read-only export, ENOSPC for
 * writes past the end, EINVAL for reads/trims past the end and for lengths above the advertised maximum.
 */
export function validateRequest(request: NbdRequest, served: ServedExport): number {
  const allowed = allowedFlags[request.type];
  if (allowed === undefined) return NBD_EINVAL;
  if ((request.flags & ~allowed) !== 0) return NBD_EINVAL;
  if (request.type === NBD_CMD_FLUSH || request.type === NBD_CMD_DISC) return 0;
  if (served.readOnly && isWriteCommand(request.type)) return NBD_EPERM;
  // TRIM is the one ranged command whose length the spec does not tie to the maximum block size.
  if (request.type !== NBD_CMD_TRIM && request.length > served.requestBytesMax) return NBD_EINVAL;
  if (request.offset + request.length > served.sizeBytes) return outOfRangeError(request.type);
  return 0;
}

function outOfRangeError(type: number): number {
  return type === NBD_CMD_WRITE || type === NBD_CMD_WRITE_ZEROES ? NBD_ENOSPC : NBD_EINVAL;
}

/**
 * The one place target errors become NBD error values. Only KeelErrors are operating errors; anything else
 * is a programmer error and is rethrown, never swallowed into an EIO.
 */
export function nbdErrorFor(err: unknown, type: number): number {
  if (!isKeelError(err)) throw err;
  switch (err.code) {
    case 'READ_ONLY':
      return NBD_EPERM;
    case 'OUT_OF_RANGE':
      return outOfRangeError(type);
    case 'NO_SPACE': // QEMU's default werror=enospc pauses the guest on it, where EIO would reach the guest
      return NBD_ENOSPC;
    case 'BAD_ARGUMENT':
    case 'REQUEST_TOO_LARGE':
      return NBD_EINVAL;
    case 'CLOSED':
      return NBD_ESHUTDOWN;
    default: // IO, NO_OWNER, TIMEOUT, CHECKSUM_MISMATCH, CORRUPT, CONNECTION_CLOSED, NOT_OWNER, BUSY, ...
      return NBD_EIO;
  }
}

/**
 * Client side: the KeelError a program sees for an NBD error value (unknown values count as EINVAL).
 * ENOSPC means a write past the end, or a full store: the export's size tells them apart.
 */
export function keelErrorFromNbd(error: number, type: number, offset: number, length: number, exportSizeBytes: number): KeelError {
  const details = { nbdError: error, command: commandNames[type] ?? type, offset, length };
  const what = `NBD ${commandNames[type] ?? type} [${offset}, +${length})`;
  switch (error) {
    case NBD_EPERM:
      return new KeelError('READ_ONLY', `${what}: operation not permitted (EPERM)`, details);
    case NBD_EIO:
      return new KeelError('IO', `${what}: input/output error (EIO)`, details);
    case NBD_ENOSPC:
      if (offset + length > exportSizeBytes) return new KeelError('OUT_OF_RANGE', `${what}: past the end of the device (ENOSPC)`, details);
      return KeelError.noSpace(`${what}: no space left on device (ENOSPC)`, undefined, details);
    case NBD_ESHUTDOWN:
      return new KeelError('CLOSED', `${what}: server is shutting down (ESHUTDOWN)`, details);
    default:
      return new KeelError('BAD_ARGUMENT', `${what}: invalid argument (error ${error})`, details);
  }
}
