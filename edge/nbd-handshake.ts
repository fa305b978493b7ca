/**
 * Pure codec for the NBD fixed-newstyle handshake (docs/nbd-protocol.md, "Handshake"): the greeting, client
 * flags, options and option replies, NBD_REP_INFO payloads. Both sides: the server (nbd-connection.ts) and
 * the client library (nbd-client.ts) use it. No I/O here.
 */
import { KeelError } from '../shared/errors.ts';
import type { ByteQueue } from './byte-queue.ts';
import {
  NBD_EXPORT_NAME_REPLY_BYTES,
  NBD_EXPORT_NAME_ZEROES_BYTES,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_NO_ZEROES,
  NBD_GREETING_BYTES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_BLOCK_SIZE_BYTES,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_EXPORT_BYTES,
  NBD_INFO_NAME,
  NBD_INIT_MAGIC_HI,
  NBD_INIT_MAGIC_LO,
  NBD_OPTION_HEADER_BYTES,
  NBD_OPTION_REPLY_HEADER_BYTES,
  NBD_OPTS_MAGIC_HI,
  NBD_OPTS_MAGIC_LO,
  NBD_REP_MAGIC_HI,
  NBD_REP_MAGIC_LO,
  NBD_STRING_BYTES_MAX,
} from './nbd-protocol.ts';

const twoTo32 = 2 ** 32;

export function writeUint64(buffer: Buffer, value: number, offset: number): void {
  buffer.writeUInt32BE(Math.floor(value / twoTo32), offset);
  buffer.writeUInt32BE(value >>> 0, offset + 4);
}

/** A 64-bit unsigned field as a number; values above 2^53 lose precision (callers range-check them). */
export function readUint64(buffer: Buffer, offset: number): number {
  return buffer.readUInt32BE(offset) * twoTo32 + buffer.readUInt32BE(offset + 4);
}

// ---------------------------------------------------------------------------------------------- server

export function encodeGreeting(handshakeFlags: number): Buffer {
  const buffer = Buffer.alloc(NBD_GREETING_BYTES);
  buffer.writeUInt32BE(NBD_INIT_MAGIC_HI, 0);
  buffer.writeUInt32BE(NBD_INIT_MAGIC_LO, 4);
  buffer.writeUInt32BE(NBD_OPTS_MAGIC_HI, 8);
  buffer.writeUInt32BE(NBD_OPTS_MAGIC_LO, 12);
  buffer.writeUInt16BE(handshakeFlags, 16);
  return buffer;
}

export interface ClientFlags {
  fixedNewstyle: boolean;
  noZeroes: boolean;
}

/** The spec says the server MUST drop the connection on unknown client flags or ones it did not offer. */
export function parseClientFlags(raw: number, offeredHandshakeFlags: number): ClientFlags {
  const known = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES;
  if ((raw & ~known) !== 0) throw KeelError.protocol(`unknown NBD client flags 0x${raw.toString(16)}`);
  const noZeroes = (raw & NBD_FLAG_C_NO_ZEROES) !== 0;
  if (noZeroes && (offeredHandshakeFlags & NBD_FLAG_NO_ZEROES) === 0)
    throw KeelError.protocol('client set NBD_FLAG_C_NO_ZEROES which the server did not offer');
  return { fixedNewstyle: (raw & NBD_FLAG_C_FIXED_NEWSTYLE) !== 0, noZeroes };
}

export interface ClientOption {
  option: number;
  data: Buffer;
}

/**
 * Takes one complete option (header + data) from the queue, or returns null while it is incomplete.
 * Throws PROTOCOL on a wrong magic and REQUEST_TOO_LARGE when the data would exceed `optionBytesMax`
 * (both end the connection: the stream cannot be resynchronised or the client is abusive).
 */
export function takeOption(queue: ByteQueue, optionBytesMax: number): ClientOption | null {
  if (queue.length < NBD_OPTION_HEADER_BYTES) return null;
  const { buffer, offset } = queue.peekHeader(NBD_OPTION_HEADER_BYTES);
  if (buffer.readUInt32BE(offset) !== NBD_OPTS_MAGIC_HI || buffer.readUInt32BE(offset + 4) !== NBD_OPTS_MAGIC_LO)
    throw KeelError.protocol('bad NBD option magic', { magic: buffer.toString('hex', offset, offset + 8) });
  const option = buffer.readUInt32BE(offset + 8);
  const length = buffer.readUInt32BE(offset + 12);
  if (length > optionBytesMax) throw KeelError.requestTooLarge(length, optionBytesMax);
  if (queue.length < NBD_OPTION_HEADER_BYTES + length) return null;
  queue.skip(NBD_OPTION_HEADER_BYTES);
  return { option, data: queue.take(length) };
}

export interface InfoRequest {
  exportName: string;
  infoTypes: number[];
}

/** The data of NBD_OPT_INFO / NBD_OPT_GO. Throws PROTOCOL when malformed (answered NBD_REP_ERR_INVALID). */
export function parseInfoRequest(data: Buffer): InfoRequest {
  if (data.length < 6) throw KeelError.protocol('NBD_OPT_INFO/GO data shorter than 6 bytes');
  const nameLength = data.readUInt32BE(0);
  if (nameLength > data.length - 6) throw KeelError.protocol('NBD_OPT_INFO/GO name length exceeds the option');
  const exportName = decodeString(data.subarray(4, 4 + nameLength), 'export name');
  const count = data.readUInt16BE(4 + nameLength);
  if (data.length !== 6 + nameLength + 2 * count)
    throw KeelError.protocol('NBD_OPT_INFO/GO information request count does not match the option length');
  const infoTypes: number[] = [];
  for (let i = 0; i < count; i++) infoTypes.push(data.readUInt16BE(6 + nameLength + 2 * i));
  return { exportName, infoTypes };
}

/** The data of NBD_OPT_EXPORT_NAME: the whole payload is the name. */
export function parseExportName(data: Buffer): string {
  return decodeString(data, 'export name');
}

function decodeString(bytes: Buffer, what: string): string {
  if (bytes.length > NBD_STRING_BYTES_MAX) throw KeelError.protocol(`${what} longer than ${NBD_STRING_BYTES_MAX} bytes`);
  if (bytes.includes(0)) throw KeelError.protocol(`${what} contains NUL`);
  return bytes.toString('utf8');
}

export function encodeOptionReply(option: number, replyType: number, data?: Buffer): Buffer {
  const dataBytes = data?.length ?? 0;
  const buffer = Buffer.allocUnsafe(NBD_OPTION_REPLY_HEADER_BYTES + dataBytes);
  buffer.writeUInt32BE(NBD_REP_MAGIC_HI, 0);
  buffer.writeUInt32BE(NBD_REP_MAGIC_LO, 4);
  buffer.writeUInt32BE(option >>> 0, 8);
  buffer.writeUInt32BE(replyType >>> 0, 12);
  buffer.writeUInt32BE(dataBytes, 16);
  if (data) data.copy(buffer, NBD_OPTION_REPLY_HEADER_BYTES);
  return buffer;
}

export function encodeInfoExport(sizeBytes: number, transmissionFlags: number): Buffer {
  const buffer = Buffer.allocUnsafe(NBD_INFO_EXPORT_BYTES);
  buffer.writeUInt16BE(NBD_INFO_EXPORT, 0);
  writeUint64(buffer, sizeBytes, 2);
  buffer.writeUInt16BE(transmissionFlags, 10);
  return buffer;
}

export interface BlockSizeConstraints {
  minimumBytes: number;
  preferredBytes: number;
  maximumBytes: number;
}

export function encodeInfoBlockSize(sizes: BlockSizeConstraints): Buffer {
  const buffer = Buffer.allocUnsafe(NBD_INFO_BLOCK_SIZE_BYTES);
  buffer.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0);
  buffer.writeUInt32BE(sizes.minimumBytes, 2);
  buffer.writeUInt32BE(sizes.preferredBytes, 6);
  buffer.writeUInt32BE(sizes.maximumBytes, 10);
  return buffer;
}

/** NBD_INFO_NAME or NBD_INFO_DESCRIPTION. */
export function encodeInfoString(infoType: typeof NBD_INFO_NAME | typeof NBD_INFO_DESCRIPTION, text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  const buffer = Buffer.allocUnsafe(2 + bytes.length);
  buffer.writeUInt16BE(infoType, 0);
  bytes.copy(buffer, 2);
  return buffer;
}

/** The data of one NBD_REP_SERVER reply to NBD_OPT_LIST. */
export function encodeServerEntry(name: string, description?: string): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const descriptionBytes = Buffer.from(description ?? '', 'utf8');
  const buffer = Buffer.allocUnsafe(4 + nameBytes.length + descriptionBytes.length);
  buffer.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(buffer, 4);
  descriptionBytes.copy(buffer, 4 + nameBytes.length);
  return buffer;
}

/** The answer to NBD_OPT_EXPORT_NAME: size, transmission flags, and 124 zeroes unless NO_ZEROES. */
export function encodeExportNameReply(sizeBytes: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const buffer = Buffer.alloc(NBD_EXPORT_NAME_REPLY_BYTES + (noZeroes ? 0 : NBD_EXPORT_NAME_ZEROES_BYTES));
  writeUint64(buffer, sizeBytes, 0);
  buffer.writeUInt16BE(transmissionFlags, 8);
  return buffer;
}

// ---------------------------------------------------------------------------------------------- client

/** Returns the server's handshake flags. Throws PROTOCOL when the greeting is not fixed-newstyle NBD. */
export function parseGreeting(buffer: Buffer, offset = 0): number {
  if (buffer.readUInt32BE(offset) !== NBD_INIT_MAGIC_HI || buffer.readUInt32BE(offset + 4) !== NBD_INIT_MAGIC_LO)
    throw KeelError.protocol('not an NBD server (bad NBDMAGIC)');
  if (buffer.readUInt32BE(offset + 8) !== NBD_OPTS_MAGIC_HI || buffer.readUInt32BE(offset + 12) !== NBD_OPTS_MAGIC_LO)
    throw KeelError.protocol('NBD server does not speak newstyle negotiation (oldstyle is not supported)');
  return buffer.readUInt16BE(offset + 16);
}

export function encodeClientFlags(flags: number): Buffer {
  const buffer = Buffer.allocUnsafe(4);
  buffer.writeUInt32BE(flags >>> 0, 0);
  return buffer;
}

export function encodeOption(option: number, data?: Buffer): Buffer {
  const dataBytes = data?.length ?? 0;
  const buffer = Buffer.allocUnsafe(NBD_OPTION_HEADER_BYTES + dataBytes);
  buffer.writeUInt32BE(NBD_OPTS_MAGIC_HI, 0);
  buffer.writeUInt32BE(NBD_OPTS_MAGIC_LO, 4);
  buffer.writeUInt32BE(option >>> 0, 8);
  buffer.writeUInt32BE(dataBytes, 12);
  if (data) data.copy(buffer, NBD_OPTION_HEADER_BYTES);
  return buffer;
}

export function encodeInfoRequest(exportName: string, infoTypes: number[]): Buffer {
  const nameBytes = Buffer.from(exportName, 'utf8');
  const buffer = Buffer.allocUnsafe(6 + nameBytes.length + 2 * infoTypes.length);
  buffer.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(buffer, 4);
  buffer.writeUInt16BE(infoTypes.length, 4 + nameBytes.length);
  infoTypes.forEach((t, i) => buffer.writeUInt16BE(t, 6 + nameBytes.length + 2 * i));
  return buffer;
}

export interface OptionReply {
  option: number;
  replyType: number;
  data: Buffer;
}

/** Takes one complete option reply from the queue, or null while incomplete. Throws PROTOCOL on bad magic. */
export function takeOptionReply(queue: ByteQueue, replyBytesMax: number): OptionReply | null {
  if (queue.length < NBD_OPTION_REPLY_HEADER_BYTES) return null;
  const { buffer, offset } = queue.peekHeader(NBD_OPTION_REPLY_HEADER_BYTES);
  if (buffer.readUInt32BE(offset) !== NBD_REP_MAGIC_HI || buffer.readUInt32BE(offset + 4) !== NBD_REP_MAGIC_LO)
    throw KeelError.protocol('bad NBD option reply magic');
  const option = buffer.readUInt32BE(offset + 8);
  const replyType = buffer.readUInt32BE(offset + 12);
  const length = buffer.readUInt32BE(offset + 16);
  if (length > replyBytesMax) throw KeelError.requestTooLarge(length, replyBytesMax);
  if (queue.length < NBD_OPTION_REPLY_HEADER_BYTES + length) return null;
  queue.skip(NBD_OPTION_REPLY_HEADER_BYTES);
  return { option, replyType, data: queue.take(length) };
}

export type ExportInfo =
  | { type: 'export'; sizeBytes: number; transmissionFlags: number }
  | ({ type: 'block_size' } & BlockSizeConstraints)
  | { type: 'name'; name: string }
  | { type: 'description'; description: string }
  | { type: 'unknown'; infoType: number };

/** The data of one NBD_REP_INFO reply. Throws PROTOCOL when a known type has the wrong length. */
export function parseInfoReply(data: Buffer): ExportInfo {
  if (data.length < 2) throw KeelError.protocol('NBD_REP_INFO shorter than 2 bytes');
  const infoType = data.readUInt16BE(0);
  switch (infoType) {
    case NBD_INFO_EXPORT:
      if (data.length !== NBD_INFO_EXPORT_BYTES) throw KeelError.protocol('NBD_INFO_EXPORT has the wrong length');
      return { type: 'export', sizeBytes: readUint64(data, 2), transmissionFlags: data.readUInt16BE(10) };
    case NBD_INFO_BLOCK_SIZE:
      if (data.length !== NBD_INFO_BLOCK_SIZE_BYTES) throw KeelError.protocol('NBD_INFO_BLOCK_SIZE has the wrong length');
      return {
        type: 'block_size',
        minimumBytes: data.readUInt32BE(2),
        preferredBytes: data.readUInt32BE(6),
        maximumBytes: data.readUInt32BE(10),
      };
    case NBD_INFO_NAME:
      return { type: 'name', name: data.toString('utf8', 2) };
    case NBD_INFO_DESCRIPTION:
      return { type: 'description', description: data.toString('utf8', 2) };
    default:
      return { type: 'unknown', infoType };
  }
}

/** The data of an NBD_REP_SERVER reply. */
export function parseServerEntry(data: Buffer): { name: string; description: string } {
  if (data.length < 4) throw KeelError.protocol('NBD_REP_SERVER shorter than 4 bytes');
  const nameLength = data.readUInt32BE(0);
  if (nameLength > data.length - 4) throw KeelError.protocol('NBD_REP_SERVER name length exceeds the reply');
  return { name: data.toString('utf8', 4, 4 + nameLength), description: data.toString('utf8', 4 + nameLength) };
}

export function parseExportNameReply(buffer: Buffer, offset = 0): { sizeBytes: number; transmissionFlags: number } {
  return { sizeBytes: readUint64(buffer, offset), transmissionFlags: buffer.readUInt16BE(offset + 8) };
}
