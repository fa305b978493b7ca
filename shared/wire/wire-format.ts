/**
 * Constants and message shapes of the edge <-> router wire protocol. The format is specified in
 * docs/wire-protocol.md; change both together, and bump `wireVersion` on any incompatible change.
 *
 * A frame is:  u32 BE restLengthBytes | u32 BE headerLengthBytes | header | payload
 * where restLengthBytes counts everything after the first u32 (the header length field, header, payload),
 * and the header is a msgpack map or, for the block ops and their plain replies, a compact header.
 */

export const wireMagic = 'KEEL';
/** 2: compact headers (a version 1 peer could not read them). */
export const wireVersion = 2;

/** Bytes of the leading u32 that counts the rest of the frame. */
export const frameLengthFieldBytes = 4;
/** Bytes of the u32 that counts the msgpack header. */
export const headerLengthFieldBytes = 4;
/** Fixed bytes in front of the header: both length fields. */
export const framePreambleBytes = frameLengthFieldBytes + headerLengthFieldBytes;

/**
 * Compact headers (docs/wire-protocol.md "Compact headers", codec in compact-header.ts). Byte 0 is the
 * marker, 0xc1, which msgpack never uses, so no msgpack header starts with it; byte 1 the kind.
 *   request (24 bytes): marker | kind | flags | 0 | id u32 | handle u32 | offset u64 | length u32
 *   ok reply (8 bytes): marker | 0x80 | 0 | 0 | id u32
 * All big-endian. Kinds 1.. are compactRequestKinds in order; flags bit 0 is fua; a field an op does not
 * have is 0 (a write's length is its payload's).
 */
export const compactHeaderMarker = 0xc1;
export const compactKindOkReply = 0x80;
export const compactFlagFua = 0x01;
export const compactRequestBytes = 24;
export const compactOkReplyBytes = 8;
export const compactRequestKinds = ['read', 'write', 'flush', 'trim', 'zero'] as const;
export type CompactRequestOp = (typeof compactRequestKinds)[number];

/** Request id of the handshake; ordinary requests use 1..2^32-1. */
export const helloRequestId = 0;
export const requestIdMax = 0xffff_ffff;

/** Admin ops (docs/wire-protocol.md "Admin ops", docs/snapshots.md): JSON result in the reply payload. */
export const snapshotAdminOps = [
  'snapshot-create',
  'snapshot-list',
  'snapshot-delete',
  'snapshot-label',
  'snapshot-rollback',
  'snapshot-diff',
  'clone-create',
  'volume-template',
  'volume-tree',
  'volume-scrub',
  'volume-scrub-progress',
  'volume-shrink',
] as const;

/** The operations a client may request. `hello` is only valid as the first frame of a connection. */
export const wireOps = [
  'hello',
  'open',
  'read',
  'write',
  'flush',
  'trim',
  'zero',
  'close',
  ...snapshotAdminOps,
  // High availability (docs/dtl.md, docs/high-availability.md; router/ha-service.ts).
  'dtl-open',
  'dtl-append',
  'dtl-trim',
  'dtl-fetch',
  'dtl-read',
  'dtl-drop',
  'volume-move',
  'volume-takeover',
  'volume-set-dtl',
  'router-drain',
] as const;
export type WireOp = (typeof wireOps)[number];

/** Who opens a connection; a router may later talk to a peer router (DTL) over the same protocol. */
export const wireRoles = ['edge', 'router', 'tool'] as const;
export type WireRole = (typeof wireRoles)[number];

/** Every request header carries `op` and `id`; the rest depends on the op (see the op headers below). */
export interface RequestHeader {
  op: string;
  id: number;
  [field: string]: unknown;
}

export interface HelloRequest extends RequestHeader {
  op: 'hello';
  magic: string;
  version: number;
  role: WireRole;
}
export interface HelloResult {
  version: number;
  routerId: string;
}

export interface OpenRequest extends RequestHeader {
  op: 'open';
  /** A volume name, or `VOL@SNAP` for a snapshot (read-only). */
  volume: string;
  /** Optional: open this snapshot of `volume`, read-only (same as `volume@snapshot`). */
  snapshot?: string;
}
export interface OpenResult {
  handle: number;
  sizeBytes: number;
  readOnly: boolean;
}
/** Reply payload: `length` bytes of data. */
export interface ReadRequest extends RequestHeader {
  op: 'read';
  handle: number;
  offset: number;
  length: number;
}
/** Request payload: the data; its length is the payload's length. */
export interface WriteRequest extends RequestHeader {
  op: 'write';
  handle: number;
  offset: number;
  fua: boolean;
}
export interface FlushRequest extends RequestHeader {
  op: 'flush';
  handle: number;
}
export interface RangeRequest extends RequestHeader {
  op: 'trim' | 'zero';
  handle: number;
  offset: number;
  length: number;
  fua: boolean;
}
export interface CloseRequest extends RequestHeader {
  op: 'close';
  handle: number;
}

/** A KeelError as it travels: `code` is a KeelErrorCode, `details` a plain msgpack-able object. */
export interface WireError {
  code: string;
  message: string;
  details?: Record<string, unknown>;
}

/** Success replies echo the id, set ok, and add the op's result fields. */
export interface ResponseOkHeader {
  id: number;
  ok: true;
  [field: string]: unknown;
}
export interface ResponseErrHeader {
  id: number;
  err: WireError;
}
export type ResponseHeader = ResponseOkHeader | ResponseErrHeader;

export function isRequestId(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value <= requestIdMax;
}
