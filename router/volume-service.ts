/**
 * The router's wire-protocol handler (ops in docs/wire-protocol.md): maps open/read/write/flush/trim/
 * zero/close onto the volumes a VolumeHost serves. Each connection gets its own table of open handles;
 * when the connection drops, every handle still open is released once its running requests finish.
 * Volume drivers are shared between connections: the service releases them, it never closes them.
 */
import type { OpenBlockTarget } from '../shared/block-target.ts';
import { BufferPool } from '../shared/buffer-pool.ts';
import { KeelError } from '../shared/errors.ts';
import { limits } from '../shared/limits.ts';
import type { Logger } from '../shared/logger.ts';
import type { RpcHandler, RpcPeer, RpcRequest, RpcResult, RpcSession } from '../shared/wire/rpc-server.ts';
import type { RequestHeader } from '../shared/wire/wire-format.ts';

export interface VolumeHost {
  /** Throws KeelError VOLUME_NOT_FOUND, or NOT_OWNER (details.owner = router id) if another router owns it. */
  openVolume(volumeName: string): Promise<OpenBlockTarget>; // returns a shared driver; service must NOT close it, only release
  releaseVolume(volumeName: string, target: OpenBlockTarget): void;
}

/**
 * Snapshots, clones and scrubbing (router/snapshot-service.ts): opens export names (`VOL`, `VOL@SNAP`,
 * templates read-only) in place of the host, and runs the admin ops (docs/wire-protocol.md, "Admin ops").
 */
export interface VolumeAdmin {
  openExport(exportName: string): Promise<OpenBlockTarget>;
  releaseExport(exportName: string, target: OpenBlockTarget): void;
  handles(op: string): boolean;
  run(header: RequestHeader): Promise<RpcResult>;
}

export function createVolumeService(host: VolumeHost, logger: Logger, admin?: VolumeAdmin, replyBuffers = new BufferPool()): RpcHandler {
  return {
    openSession: (peer: RpcPeer) => new VolumeSession(host, logger.child({ peer: peer.remoteAddress }), replyBuffers, admin),
  };
}

interface OpenHandle {
  volumeName: string;
  target: OpenBlockTarget;
  requestsInFlight: number;
  /** Closed by the client or by the connection's end: release once requestsInFlight reaches 0. */
  closing: boolean;
}

const emptyResult: RpcResult = {};
const toEmptyResult = (): RpcResult => emptyResult;

class VolumeSession implements RpcSession {
  private readonly handles = new Map<number, OpenHandle>();
  private lastHandle = 0;
  private opensInFlight = 0;
  private closed = false;

  constructor(
    private readonly host: VolumeHost,
    private readonly logger: Logger,
    private readonly replyBuffers: BufferPool,
    private readonly admin?: VolumeAdmin,
  ) {}

  /**
   * No op keeps its request's payload once it settled: a write's data is copied (DTL record) or written
   * (SCO) before the write settles, and no other op reads a payload at all. So a joined frame goes back to
   * the pool, and its bytes to the server's frame budget, as soon as any request settles: a client that
   * does not read its replies cannot pin them (rpc-server.ts).
   */
  payloadDoneWhenSettled(): boolean {
    return true;
  }

  handle(request: RpcRequest): Promise<RpcResult> | RpcResult {
    const { header, payload } = request;
    switch (header.op) {
      case 'open':
        return this.open(header);
      case 'close':
        return this.closeHandle(header);
      case 'read':
        return this.readInline(header) ?? this.withHandle(header, (target) => this.read(target, offsetField(header), lengthField(header)));
      case 'write':
        return this.withHandle(header, (target) => {
          if (payload.length > limits.nbdRequestBytesMax) throw KeelError.requestTooLarge(payload.length, limits.nbdRequestBytesMax);
          return target.write(offsetField(header), payload, fuaField(header)).then(toEmptyResult);
        });
      case 'flush':
        return this.withHandle(header, async (target) => {
          await target.flush();
          return emptyResult;
        });
      case 'trim':
        return this.withHandle(header, async (target) => {
          await target.trim(offsetField(header), lengthField(header, Number.MAX_SAFE_INTEGER), fuaField(header));
          return emptyResult;
        });
      case 'zero':
        return this.withHandle(header, async (target) => {
          await target.writeZeroes(offsetField(header), lengthField(header), fuaField(header));
          return emptyResult;
        });
      default:
        if (this.admin?.handles(header.op)) return this.admin.run(header);
        return Promise.reject(KeelError.protocol(`unknown op '${header.op}'`, { op: header.op }));
    }
  }

  /** A read the target can serve in this turn (readIntoInline): its result, with no promise; else undefined. */
  private readInline(header: RequestHeader): RpcResult | undefined {
    const open = this.lookUp(handleField(header));
    if (open.target.readIntoInline === undefined) return undefined;
    const offset = offsetField(header);
    const buffer = this.replyBuffers.acquire(lengthField(header));
    if (buffer === undefined) return undefined;
    let filled = false;
    try {
      filled = open.target.readIntoInline(buffer, offset);
    } finally {
      if (!filled) this.replyBuffers.release(buffer);
    }
    return filled ? { payload: buffer, onSent: () => this.replyBuffers.release(buffer) } : undefined;
  }

  /** Into a pooled buffer when the target can fill one: it goes back to the pool once the reply is sent. */
  private async read(target: OpenBlockTarget, offset: number, length: number): Promise<RpcResult> {
    const buffer = target.readInto === undefined ? undefined : this.replyBuffers.acquire(length);
    if (buffer === undefined) return { payload: await target.read(offset, length) };
    try {
      await target.readInto!(buffer, offset);
    } catch (err) {
      this.replyBuffers.release(buffer);
      throw err;
    }
    return { payload: buffer, onSent: () => this.replyBuffers.release(buffer) };
  }

  close(): void {
    this.closed = true;
    for (const [handle, open] of this.handles) this.startClosing(handle, open);
  }

  private async open(header: RequestHeader): Promise<RpcResult> {
    // `snapshot` (optional) opens VOL@SNAP read-only; the name may also carry it as `VOL@SNAP`.
    const volumeName = typeof header.snapshot === 'string' && typeof header.volume === 'string' ? `${header.volume}@${header.snapshot}` : header.volume;
    if (typeof volumeName !== 'string' || volumeName.length === 0 || volumeName.length > limits.volumeNameLengthMax) {
      throw KeelError.protocol('open needs a volume name');
    }
    if (this.handles.size + this.opensInFlight >= limits.wireHandlesPerConnectionMax) {
      throw KeelError.busy(`connection (${limits.wireHandlesPerConnectionMax} open handles)`);
    }
    this.opensInFlight++;
    let target: OpenBlockTarget;
    try {
      target = this.admin ? await this.admin.openExport(volumeName) : await this.host.openVolume(volumeName);
    } finally {
      this.opensInFlight--;
    }
    if (this.closed) {
      this.releaseTarget(volumeName, target);
      throw KeelError.closed('connection');
    }
    const handle = ++this.lastHandle;
    this.handles.set(handle, { volumeName, target, requestsInFlight: 0, closing: false });
    this.logger.debug({ volume: volumeName, handle }, 'volume opened over the wire');
    return { fields: { handle, sizeBytes: target.sizeBytes, readOnly: target.readOnly } };
  }

  private async closeHandle(header: RequestHeader): Promise<RpcResult> {
    const handle = handleField(header);
    const open = this.lookUp(handle);
    this.startClosing(handle, open);
    return emptyResult;
  }

  private async withHandle(header: RequestHeader, run: (target: OpenBlockTarget) => Promise<RpcResult>): Promise<RpcResult> {
    const handle = handleField(header);
    const open = this.lookUp(handle);
    open.requestsInFlight++;
    try {
      return await run(open.target);
    } finally {
      open.requestsInFlight--;
      if (open.closing && open.requestsInFlight === 0) this.release(open);
    }
  }

  private lookUp(handle: number): OpenHandle {
    const open = this.handles.get(handle);
    if (!open) throw KeelError.badArgument(`no open volume handle ${handle} on this connection`, { handle });
    return open;
  }

  private startClosing(handle: number, open: OpenHandle): void {
    this.handles.delete(handle);
    open.closing = true;
    if (open.requestsInFlight === 0) this.release(open);
  }

  private releaseTarget(volumeName: string, target: OpenBlockTarget): void {
    if (this.admin) this.admin.releaseExport(volumeName, target);
    else this.host.releaseVolume(volumeName, target);
  }

  private release(open: OpenHandle): void {
    this.releaseTarget(open.volumeName, open.target);
    this.logger.debug({ volume: open.volumeName }, 'volume released');
  }
}

function handleField(header: RequestHeader): number {
  const handle = header.handle;
  if (typeof handle !== 'number' || !Number.isSafeInteger(handle) || handle <= 0) throw KeelError.protocol('missing or bad handle');
  return handle;
}

function offsetField(header: RequestHeader): number {
  const offset = header.offset;
  if (typeof offset !== 'number' || !Number.isSafeInteger(offset) || offset < 0) throw KeelError.protocol('missing or bad offset');
  return offset;
}

/** A trim carries no data, and NBD does not tie its length to the maximum block size: it may span the volume. */
function lengthField(header: RequestHeader, lengthMax: number = limits.nbdRequestBytesMax): number {
  const length = header.length;
  if (typeof length !== 'number' || !Number.isSafeInteger(length) || length < 0) throw KeelError.protocol('missing or bad length');
  if (length > lengthMax) throw KeelError.requestTooLarge(length, lengthMax);
  return length;
}

function fuaField(header: RequestHeader): boolean {
  if (header.fua === undefined) return false;
  if (typeof header.fua !== 'boolean') throw KeelError.protocol('fua must be a boolean');
  return header.fua;
}
