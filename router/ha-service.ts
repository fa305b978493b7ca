/**
 * Wire ops of high availability (docs/dtl.md, docs/high-availability.md), in front of the volume service:
 *
 *   dtl-open   {volumeId, epoch, streamId}            start a DTL stream here (a peer's volume)
 *   dtl-append {volumeId, epoch, streamId} + records  append records (router/dtl-format.ts)
 *   dtl-trim   {volumeId, epoch, streamId, throughSeq}
 *   dtl-fetch  {volumeId, epoch}                      seal that epoch's streams; JSON list in the payload
 *   dtl-read   {volumeId, epoch, streamId, afterSeq}  records (payload), `lastSeq`, `more`
 *   dtl-drop   {volumeId, epoch?, streamId?}
 *   volume-move     {volume, to?}       (to the owner) graceful handover; JSON result
 *   volume-takeover {volume, force}     (to the new owner) take over a volume whose owner is gone
 *   router-drain    {}                  hand every volume away; the router is marked draining
 *   volume-set-dtl  {volume}            (to the owner) apply the mode now recorded in coordination
 *
 * Every other op goes to the volume service unchanged.
 */
import { KeelError } from '../shared/errors.ts';
import type { RpcHandler, RpcPeer, RpcRequest, RpcResult, RpcSession } from '../shared/wire/rpc-server.ts';
import type { RequestHeader } from '../shared/wire/wire-format.ts';
import type { DtlStore } from './dtl-store.ts';
import type { VolumeHa } from './volume-ha.ts';

export interface HaOps {
  dtl: DtlStore;
  ha: VolumeHa;
  /** Marks this router draining and hands its volumes over. */
  drain(): Promise<unknown>;
}

export function withHaOps(inner: RpcHandler, ops: HaOps): RpcHandler {
  return {
    openSession: (peer: RpcPeer): RpcSession => {
      const session = inner.openSession(peer);
      return {
        handle: (request) => (request.header.op.startsWith('dtl-') || haAdminOps.has(request.header.op) ? handleHaOp(ops, request) : session.handle(request)),
        close: () => session.close(),
        // dtl-append writes its records to a segment file before it settles; other ops as the inner service says.
        payloadDoneWhenSettled: (op: string) => op === 'dtl-append' || (session.payloadDoneWhenSettled?.(op) ?? false),
      };
    },
  };
}

const haAdminOps = new Set(['volume-move', 'volume-takeover', 'router-drain', 'volume-set-dtl']);
const ok: RpcResult = {};

async function handleHaOp(ops: HaOps, { header, payload }: RpcRequest): Promise<RpcResult> {
  switch (header.op) {
    case 'dtl-open':
      await ops.dtl.openStream(str(header, 'volumeId'), int(header, 'epoch'), str(header, 'streamId'));
      return ok;
    case 'dtl-append':
      return { fields: await ops.dtl.append(str(header, 'volumeId'), int(header, 'epoch'), str(header, 'streamId'), payload) };
    case 'dtl-trim':
      await ops.dtl.trim(str(header, 'volumeId'), int(header, 'epoch'), str(header, 'streamId'), int(header, 'throughSeq'));
      return ok;
    case 'dtl-fetch':
      return json(await ops.dtl.seal(str(header, 'volumeId'), int(header, 'epoch')));
    case 'dtl-read': {
      const page = await ops.dtl.read(str(header, 'volumeId'), int(header, 'epoch'), str(header, 'streamId'), int(header, 'afterSeq'));
      return { fields: { lastSeq: page.lastSeq, more: page.more }, payload: page.payload };
    }
    case 'dtl-drop':
      await ops.dtl.drop(str(header, 'volumeId'), header.epoch === undefined ? undefined : int(header, 'epoch'), header.streamId === undefined ? undefined : str(header, 'streamId'));
      return ok;
    case 'volume-move':
      return json(await ops.ha.handOver(str(header, 'volume'), header.to === undefined ? undefined : str(header, 'to')));
    case 'volume-takeover':
      return json(await ops.ha.forceTakeover(str(header, 'volume'), header.force === true));
    case 'router-drain':
      return json(await ops.drain());
    case 'volume-set-dtl':
      await ops.ha.setDtlMode(str(header, 'volume'));
      return json({});
    default:
      throw KeelError.protocol(`unknown op '${header.op}'`, { op: header.op });
  }
}

function json(value: unknown): RpcResult {
  return { payload: Buffer.from(JSON.stringify(value)) };
}

/** Ids name directories of the DTL store: letters, digits and '-' only. */
const idFields = new Set(['volumeId', 'streamId']);

function str(header: RequestHeader, field: string): string {
  const value = header[field];
  if (typeof value !== 'string' || value.length === 0 || value.length > 256) throw KeelError.protocol(`missing or bad ${field}`);
  if (idFields.has(field) && !/^[A-Za-z0-9-]+$/.test(value)) throw KeelError.protocol(`bad ${field}`);
  return value;
}

function int(header: RequestHeader, field: string): number {
  const value = header[field];
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) throw KeelError.protocol(`missing or bad ${field}`);
  return value;
}
