/**
 * Pure codec of the compact headers (docs/wire-protocol.md "Compact headers", layout in wire-format.ts).
 * The block ops and their plain `ok` replies are most of the traffic, and packing and unpacking their
 * msgpack maps cost about 2 us per request across the edge and the router. A compact header is a fixed
 * layout that starts with 0xc1, a byte msgpack never uses, so a receiver tells the two kinds apart by
 * the first byte. A header the layout cannot hold (another op, an extra field, an offset beyond 2^53)
 * is sent as msgpack.
 */
import {
  compactFlagFua,
  compactHeaderMarker,
  compactKindOkReply,
  compactOkReplyBytes,
  compactRequestBytes,
  compactRequestKinds,
  type CompactRequestOp,
} from './wire-format.ts';

const kindOfOp = new Map<string, number>(compactRequestKinds.map((op, index) => [op, index + 1]));
const twoTo32 = 2 ** 32;

/** Header bytes of `header` in compact form, or 0 when it has no compact form. */
export function compactHeaderBytes(header: object): number {
  const fields = header as Record<string, unknown>;
  if (isOkReply(fields)) return compactOkReplyBytes;
  if (isCompactRequest(fields)) return compactRequestBytes;
  return 0;
}

/** Writes the compact form of `header` at `at` (compactHeaderBytes(header) must be > 0). */
export function writeCompactHeader(header: object, target: Buffer, at: number): void {
  const fields = header as Record<string, unknown>;
  target[at] = compactHeaderMarker;
  target[at + 2] = 0;
  target[at + 3] = 0;
  if (fields.ok === true) {
    target[at + 1] = compactKindOkReply;
    target.writeUInt32BE(fields.id as number, at + 4);
    return;
  }
  const offset = (fields.offset as number | undefined) ?? 0;
  target[at + 1] = kindOfOp.get(fields.op as string)!;
  target[at + 2] = fields.fua === true ? compactFlagFua : 0;
  target.writeUInt32BE(fields.id as number, at + 4);
  target.writeUInt32BE(fields.handle as number, at + 8);
  target.writeUInt32BE(Math.floor(offset / twoTo32), at + 12);
  target.writeUInt32BE(offset % twoTo32, at + 16);
  target.writeUInt32BE((fields.length as number | undefined) ?? 0, at + 20);
}

/**
 * The header object the compact header of `length` bytes at `at` stands for: the same fields its msgpack
 * form would have. Returns an error message instead when the bytes are not a valid compact header.
 */
export function readCompactHeader(frame: Buffer, at: number, length: number): Record<string, unknown> | string {
  const kind = length > 1 ? frame[at + 1]! : 0;
  if (kind === compactKindOkReply) {
    if (length !== compactOkReplyBytes) return `compact reply header of ${length} bytes, not ${compactOkReplyBytes}`;
    return { id: frame.readUInt32BE(at + 4), ok: true };
  }
  const op = compactRequestKinds[kind - 1];
  if (op === undefined) return `compact header of unknown kind ${kind}`;
  if (length !== compactRequestBytes) return `compact ${op} header of ${length} bytes, not ${compactRequestBytes}`;
  const flags = frame[at + 2]!;
  if ((flags & ~compactFlagFua) !== 0 || frame[at + 3] !== 0) return `compact ${op} header with reserved bits set`;
  const offsetHigh = frame.readUInt32BE(at + 12);
  if (offsetHigh >= 2 ** 21) return `compact ${op} header with an offset beyond 2^53`;
  const id = frame.readUInt32BE(at + 4);
  const handle = frame.readUInt32BE(at + 8);
  const offset = offsetHigh * twoTo32 + frame.readUInt32BE(at + 16);
  const length32 = frame.readUInt32BE(at + 20);
  const fua = (flags & compactFlagFua) !== 0;
  switch (op) {
    case 'read':
      return { op, id, handle, offset, length: length32 };
    case 'write':
      return { op, id, handle, offset, fua };
    case 'flush':
      return { op, id, handle };
    case 'trim':
    case 'zero':
      return { op, id, handle, offset, length: length32, fua };
  }
}

function isOkReply(fields: Record<string, unknown>): boolean {
  return fields.ok === true && isU32(fields.id) && keyCount(fields) === 2;
}

/** Exactly the fields of the op's msgpack form, each in the range the layout holds. */
function isCompactRequest(fields: Record<string, unknown>): boolean {
  const op = fields.op as CompactRequestOp;
  if (!kindOfOp.has(op) || !isU32(fields.id) || !isU32(fields.handle)) return false;
  const hasOffset = op !== 'flush';
  const hasLength = op === 'read' || op === 'trim' || op === 'zero';
  const hasFua = op === 'write' || op === 'trim' || op === 'zero';
  if (hasOffset && !(Number.isSafeInteger(fields.offset) && (fields.offset as number) >= 0)) return false;
  if (hasLength && !isU32(fields.length)) return false;
  if (hasFua && typeof fields.fua !== 'boolean') return false;
  return keyCount(fields) === 3 + Number(hasOffset) + Number(hasLength) + Number(hasFua);
}

/** Counted without Object.keys: no array per header. */
function keyCount(fields: Record<string, unknown>): number {
  let keys = 0;
  for (const _ in fields) keys += 1;
  return keys;
}

function isU32(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value <= 0xffff_ffff;
}
