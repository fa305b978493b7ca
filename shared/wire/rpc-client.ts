/**
 * One wire-protocol connection from a client (the edge) to one router (docs/wire-protocol.md).
 * Runs the versioned handshake, numbers requests, keeps at most limits.wireRequestsInFlightMax of them
 * on the wire (callers queue beyond that, up to limits.wireRequestsQueuedMax), and matches replies,
 * which may come in any order, by id. Each request has its own deadline, counted from when it is sent
 * (checked by one shared timer).
 * The client does not reconnect: when the connection dies every pending request fails with
 * CONNECTION_CLOSED and the owner of the client (edge/remote-volume.ts) decides what to do.
 */
import type { Logger } from '../logger.ts';
import { KeelError, keelErrorFromWire } from '../errors.ts';
import { limits } from '../limits.ts';
import { encodeFrame, FrameDecoder, type Frame } from './frame-codec.ts';
import type { Transport, TransportConnection } from './transport.ts';
import {
  helloRequestId,
  isRequestId,
  requestIdMax,
  wireMagic,
  wireVersion,
  type HelloResult,
  type ResponseOkHeader,
  type WireError,
  type WireRole,
} from './wire-format.ts';

export type RpcClientStatus =
  | { state: 'handshaking' }
  | { state: 'ready'; routerId: string; version: number }
  | { state: 'closed'; reason: KeelError };

/** The request header minus `id`, which the client assigns (on this object: pass a fresh one per request). */
export interface RpcRequestFields {
  op: string;
  [field: string]: unknown;
}

export interface RpcResponse {
  header: ResponseOkHeader;
  /** Zero-length if the reply has none. May share memory with a received socket chunk. */
  payload: Buffer;
}

export interface RpcClientOptions {
  transport: Transport;
  logger: Logger;
  role?: WireRole;
  /** Deadline of each request (and of the handshake), from when it is written. */
  requestTimeoutMs?: number;
  connectTimeoutMs?: number;
  requestsInFlightMax?: number;
  requestsQueuedMax?: number;
}

interface PendingRequest {
  fields: RpcRequestFields;
  payload: Buffer | readonly Buffer[] | undefined;
  timeoutMs: number;
  resolve: (response: RpcResponse) => void;
  reject: (error: KeelError) => void;
  /** performance.now() past which the request fails with TIMEOUT (set when it is written). */
  deadlineMs: number;
  /** Only the handshake has its own timer; requests share the sweep (see armSweep). */
  timer?: NodeJS.Timeout;
}

export class RpcClient {
  readonly address: string;
  private status: RpcClientStatus = { state: 'handshaking' };
  private readonly connection: TransportConnection;
  private readonly logger: Logger;
  private readonly decoder = new FrameDecoder();
  private readonly requestTimeoutMs: number;
  private readonly requestsInFlightMax: number;
  private readonly requestsQueuedMax: number;
  private readonly inFlight = new Map<number, PendingRequest>();
  /** Requests waiting for a window slot or for the send queue to drain, oldest first. */
  private queued: PendingRequest[] = [];
  private queuedHead = 0;
  private sendBlocked = false;
  private lastRequestId = helloRequestId;
  private readonly closeListeners: Array<(reason: KeelError) => void> = [];
  private handshake: PendingRequest | undefined;

  /** Connects and completes the handshake. Rejects with IO/TIMEOUT (transport), VERSION_MISMATCH, PROTOCOL. */
  static async connect(address: string, options: RpcClientOptions): Promise<RpcClient> {
    const connection = await options.transport.connect(address, {
      timeoutMs: options.connectTimeoutMs ?? limits.wireConnectTimeoutMs,
    });
    const client = new RpcClient(address, connection, options);
    await client.sayHello(options.role ?? 'edge');
    return client;
  }

  private constructor(address: string, connection: TransportConnection, options: RpcClientOptions) {
    this.address = address;
    this.connection = connection;
    this.logger = options.logger.child({ peer: address });
    this.requestTimeoutMs = options.requestTimeoutMs ?? limits.wireRequestTimeoutMs;
    this.requestsInFlightMax = options.requestsInFlightMax ?? limits.wireRequestsInFlightMax;
    this.requestsQueuedMax = options.requestsQueuedMax ?? limits.wireRequestsQueuedMax;
    connection.onData((chunk) => this.onData(chunk));
    connection.readInto?.(() => this.decoder.readTarget()); // a large reply is read into its own buffer, not joined
    connection.onDrain(() => this.onDrain());
    connection.onClose((error) => this.onTransportClose(error));
  }

  get currentStatus(): RpcClientStatus {
    return this.status;
  }

  get routerId(): string | undefined {
    return this.status.state === 'ready' ? this.status.routerId : undefined;
  }

  /** Requests on the wire plus requests waiting to be sent. */
  get pendingCount(): number {
    return this.inFlight.size + (this.queued.length - this.queuedHead);
  }

  onClose(listener: (reason: KeelError) => void): void {
    this.closeListeners.push(listener);
  }

  /**
   * Sends a request and resolves with the reply. Rejects with the router's KeelError if it answered with
   * an error, TIMEOUT if it did not answer in time, CONNECTION_CLOSED if the connection died, or BUSY if
   * too many requests are already waiting.
   */
  request(fields: RpcRequestFields, payload?: Buffer | readonly Buffer[], timeoutMs = this.requestTimeoutMs): Promise<RpcResponse> {
    if (this.status.state !== 'ready') return Promise.reject(this.notReadyError());
    if (this.queued.length - this.queuedHead >= this.requestsQueuedMax) {
      return Promise.reject(KeelError.busy(`request queue to ${this.address}`));
    }
    return new Promise((resolve, reject) => {
      this.queued.push({ fields, payload, timeoutMs, resolve, reject, deadlineMs: 0 });
      this.pump();
    });
  }

  /** Sends the requests made so far in this turn now, instead of at the end of the turn. */
  flush(): void {
    this.connection.flush();
  }

  /** Closes the connection; pending requests fail with CONNECTION_CLOSED. */
  close(): void {
    this.shutDown(KeelError.connectionClosed(this.address));
  }

  private sayHello(role: WireRole): Promise<void> {
    return new Promise((resolve, reject) => {
      this.handshake = {
        fields: { op: 'hello', magic: wireMagic, version: wireVersion, role },
        payload: undefined,
        timeoutMs: this.requestTimeoutMs,
        deadlineMs: 0,
        resolve: (response) => {
          const result = response.header as unknown as HelloResult;
          if (result.version !== wireVersion) {
            const error = KeelError.versionMismatch(wireVersion, result.version);
            this.shutDown(error);
            reject(error);
            return;
          }
          if (typeof result.routerId !== 'string') {
            const error = KeelError.protocol('hello reply has no routerId');
            this.shutDown(error);
            reject(error);
            return;
          }
          this.setStatus({ state: 'ready', routerId: result.routerId, version: result.version });
          resolve();
        },
        reject,
      };
      this.send(helloRequestId, this.handshake);
    });
  }

  private setStatus(next: RpcClientStatus): void {
    const previous = this.status.state;
    this.status = next;
    const log = { from: previous, to: next.state } as Record<string, unknown>;
    if (next.state === 'ready') log.routerId = next.routerId;
    if (next.state === 'closed') {
      log.code = next.reason.code;
      log.reason = next.reason.message;
    }
    this.logger.debug(log, 'rpc client status');
  }

  private isClosed(): boolean {
    return this.status.state === 'closed';
  }

  private notReadyError(): KeelError {
    return this.status.state === 'closed' ? this.requestErrorFor(this.status.reason) : KeelError.connectionClosed(this.address);
  }

  /**
   * Requests always fail with CONNECTION_CLOSED when the connection dies (details.cause says why), so a
   * caller can tell a dead connection from an error reply to its request.
   */
  private requestErrorFor(reason: KeelError): KeelError {
    if (reason.code === 'CONNECTION_CLOSED') return reason;
    return new KeelError('CONNECTION_CLOSED', `connection to ${this.address} closed: ${reason.message}`, {
      peer: this.address,
      cause: reason.code,
    });
  }

  /** Moves queued requests onto the wire while the window and the send queue allow. */
  private pump(): void {
    while (
      this.status.state === 'ready' &&
      !this.sendBlocked &&
      this.inFlight.size < this.requestsInFlightMax &&
      this.queuedHead < this.queued.length
    ) {
      const request = this.queued[this.queuedHead]!;
      this.queued[this.queuedHead++] = undefined as unknown as PendingRequest;
      this.send(this.nextRequestId(), request);
    }
    if (this.queuedHead > 1024 && this.queuedHead * 2 > this.queued.length) {
      this.queued = this.queued.slice(this.queuedHead);
      this.queuedHead = 0;
    }
  }

  private send(id: number, request: PendingRequest): void {
    let buffers: Buffer[];
    try {
      // The fields object is the caller's fresh literal, encoded right here: tag it instead of copying it.
      request.fields.id = id;
      buffers = encodeFrame(request.fields, request.payload);
    } catch (err) {
      request.reject(err as KeelError);
      return;
    }
    if (id === helloRequestId) {
      request.timer = setTimeout(() => this.onRequestTimeout(id, request), request.timeoutMs);
    } else {
      this.inFlight.set(id, request);
      request.deadlineMs = performance.now() + request.timeoutMs;
      this.armSweep(request.deadlineMs);
    }
    if (!this.connection.write(buffers)) this.sendBlocked = true;
  }

  /*
   * Deadlines without a timer per request: one timer, armed for the earliest deadline that may be due.
   * Requests usually share one timeout, so deadlines grow in send order and a busy connection re-arms
   * about once per timeout period instead of setting and clearing a timer for every request.
   */
  private sweepTimer: NodeJS.Timeout | undefined;
  private sweepAtMs = Number.POSITIVE_INFINITY;

  private armSweep(deadlineMs: number): void {
    if (deadlineMs >= this.sweepAtMs) return;
    clearTimeout(this.sweepTimer);
    this.sweepAtMs = deadlineMs;
    this.sweepTimer = setTimeout(this.sweep, Math.max(0, deadlineMs - performance.now()) + 1);
    this.sweepTimer.unref();
  }

  private readonly sweep = (): void => {
    this.sweepTimer = undefined;
    this.sweepAtMs = Number.POSITIVE_INFINITY;
    const nowMs = performance.now();
    let nextMs = Number.POSITIVE_INFINITY;
    for (const [id, request] of this.inFlight) {
      if (request.deadlineMs <= nowMs) this.onRequestTimeout(id, request);
      else nextMs = Math.min(nextMs, request.deadlineMs);
    }
    if (nextMs !== Number.POSITIVE_INFINITY && !this.isClosed()) this.armSweep(nextMs);
  };

  private nextRequestId(): number {
    // Skips 0 (the handshake) and ids still in flight after a wrap-around.
    do {
      this.lastRequestId = this.lastRequestId === requestIdMax ? 1 : this.lastRequestId + 1;
    } while (this.inFlight.has(this.lastRequestId));
    return this.lastRequestId;
  }

  private onRequestTimeout(id: number, request: PendingRequest): void {
    const error = KeelError.timeout(`request ${String(request.fields.op)} #${id} to ${this.address}`, request.timeoutMs);
    if (request === this.handshake) {
      this.handshake = undefined;
      request.reject(error);
      this.shutDown(error);
      return;
    }
    // A late reply for this id will find nothing and be dropped; the slot is free for others now.
    this.inFlight.delete(id);
    request.reject(error);
    this.pump();
  }

  private onDrain(): void {
    this.sendBlocked = false;
    this.pump();
  }

  private onData(chunk: Buffer): void {
    if (this.status.state === 'closed') return;
    try {
      this.decoder.push(chunk);
      for (let frame = this.decoder.next(); frame; frame = this.decoder.next()) {
        this.onFrame(frame);
        if (this.isClosed()) return;
      }
    } catch (err) {
      this.logger.warn({ err }, 'malformed frame from router; closing the connection');
      this.shutDown(err as KeelError);
    }
  }

  private onFrame(frame: Frame): void {
    const header = frame.header;
    if (!isRequestId(header.id)) throw KeelError.protocol('reply without a valid id');
    const err = header.err as WireError | undefined;
    if (err !== undefined && (typeof err !== 'object' || typeof err?.code !== 'string' || typeof err.message !== 'string')) {
      throw KeelError.protocol('reply with a malformed error');
    }
    if (err === undefined && header.ok !== true) throw KeelError.protocol('reply is neither ok nor an error');
    if (header.id === helloRequestId) return this.onHelloReply(frame);
    const request = this.inFlight.get(header.id);
    if (!request) {
      this.logger.debug({ id: header.id }, 'dropping a reply to a request that already timed out');
      return;
    }
    this.inFlight.delete(header.id);
    if (err) request.reject(keelErrorFromWire(err));
    else request.resolve({ header: header as ResponseOkHeader, payload: frame.payload });
    this.pump();
  }

  /** Id 0 answers the hello; after the handshake it carries a connection-level error from the router. */
  private onHelloReply(frame: Frame): void {
    const err = frame.header.err as WireError | undefined;
    const handshake = this.handshake;
    this.handshake = undefined;
    if (handshake) clearTimeout(handshake.timer);
    if (err) {
      const error = keelErrorFromWire(err);
      handshake?.reject(error);
      this.logger.warn({ code: error.code, reason: error.message }, 'router refused the connection');
      this.shutDown(error);
      return;
    }
    if (!handshake) throw KeelError.protocol('unexpected hello reply');
    handshake.resolve({ header: frame.header as ResponseOkHeader, payload: frame.payload });
  }

  private onTransportClose(error?: Error): void {
    const reason = KeelError.connectionClosed(this.address);
    if (error) reason.details.cause = error.message;
    this.shutDown(reason);
  }

  /** Fails everything pending with `reason`, once; later calls are no-ops. */
  private shutDown(reason: KeelError): void {
    if (this.status.state === 'closed') return;
    this.setStatus({ state: 'closed', reason });
    this.connection.destroy();
    // The handshake fails with the real reason (connect() shows it); requests with CONNECTION_CLOSED.
    if (this.handshake) {
      clearTimeout(this.handshake.timer);
      this.handshake.reject(reason);
      this.handshake = undefined;
    }
    const requestError = this.requestErrorFor(reason);
    clearTimeout(this.sweepTimer);
    this.sweepTimer = undefined;
    for (const request of this.inFlight.values()) request.reject(requestError);
    this.inFlight.clear();
    for (let i = this.queuedHead; i < this.queued.length; i++) this.queued[i]!.reject(requestError);
    this.queued = [];
    this.queuedHead = 0;
    for (const listener of this.closeListeners) listener(reason);
  }
}
