/**
 * The router side of the wire protocol (docs/wire-protocol.md): accepts transport connections, runs the
 * handshake, and dispatches requests to an RpcHandler. Each connection serves at most
 * limits.wireServerRequestsInFlightMax requests at once and stops reading from the socket beyond that
 * (TCP then pushes back on the client); replies go out as soon as each request finishes, in any order.
 * A KeelError thrown by the handler becomes an error reply; a malformed frame closes only its connection.
 * All connections of a server share one budget of request frame bytes (limits.wireServerFrameBytesInFlightMax,
 * with a share kept for peer routers): a frame takes its bytes when its preamble arrives and gives them
 * back once its request no longer needs it; a connection that cannot get them stops reading and waits in
 * line, one that holds them reads the frame to its end (docs/wire-protocol.md, "Flow control").
 * What a peer can make happen per connection or per request is logged through a LogRateLimit, so a
 * client that sends garbage in a loop cannot make the router write logs without bound.
 */
import assert, { AssertionError } from 'node:assert';
import type { Logger } from '../logger.ts';
import { BufferPool } from '../buffer-pool.ts';
import { ByteBudget } from '../byte-budget.ts';
import { KeelError } from '../errors.ts';
import { limits } from '../limits.ts';
import { LogRateLimit, type LogRateLimitOptions } from '../log-rate-limit.ts';
import { defaultFrameLimits, encodeFrame, FrameDecoder, type Frame, type FrameLimits, type GatherPool } from './frame-codec.ts';
import type { Transport, TransportConnection, TransportListener } from './transport.ts';
import {
  helloRequestId,
  isRequestId,
  wireMagic,
  wireRoles,
  wireVersion,
  type RequestHeader,
  type WireError,
  type WireRole,
} from './wire-format.ts';

export interface RpcPeer {
  remoteAddress: string;
  role: WireRole;
}

export interface RpcRequest {
  header: RequestHeader;
  /** Zero-length if none. May share memory with a socket chunk: copy it if kept beyond the request. */
  payload: Buffer;
}

export interface RpcResult {
  /** Added to the reply header next to `id` and `ok`. */
  fields?: Record<string, unknown>;
  payload?: Buffer;
  /** Runs once the payload is no longer needed: sent, or dropped with the connection (e.g. back to a pool). */
  onSent?: () => void;
}

/** Per-connection state of a handler, created after the handshake. */
export interface RpcSession {
  /** A plain result (not a promise) is a request finished in this turn: its reply is written at once. */
  handle(request: RpcRequest): Promise<RpcResult> | RpcResult;
  /**
   * True when requests of `op` no longer touch their payload once handle() settled: the server then reuses
   * the payload's memory (frames joined from several socket chunks come from a pool). Absent: never.
   */
  payloadDoneWhenSettled?(op: string): boolean;
  /** The connection is gone (requests may still be running): release what the session holds. */
  close(): void;
}

export interface RpcHandler {
  openSession(peer: RpcPeer): RpcSession;
}

export interface RpcServerOptions {
  transport: Transport;
  handler: RpcHandler;
  logger: Logger;
  /** Sent to clients in the hello reply. */
  routerId: string;
  requestsInFlightMax?: number;
  handshakeTimeoutMs?: number;
  /** Connections served at once (default limits.wireConnectionsMax); more are closed as they arrive. */
  connectionsMax?: number;
  /** Overrides of the log rate limit (limits.logLinesPerKeyMax per limits.logRateIntervalMs), for tests. */
  logRateLimit?: Partial<LogRateLimitOptions>;
  /** Bytes of request frames held at once, all connections (default limits.wireServerFrameBytesInFlightMax). */
  frameBytesInFlightMax?: number;
  /** The part of frameBytesInFlightMax kept for role `router` connections (default limits.wireServerPeerFrameBytesInFlightMax). */
  peerFrameBytesInFlightMax?: number;
  /** How long a frame holding budget may take to arrive before its connection is closed (default limits.wireFrameReceiveTimeoutMs). */
  frameReceiveTimeoutMs?: number;
}

/**
 * Where a connection's request frames get their bytes, chosen by its role at the hello. Peer routers
 * (DTL streams) have a budget of their own: an owner's writes hold their frames while they wait for the
 * DTL peer's ack, and the peer's DTL frames must not queue behind writes that wait for them.
 */
interface FrameBudget {
  bytes: ByteBudget;
  /** The frame limits after the hello: no frame may be larger than the whole budget. */
  frameLimits: FrameLimits;
}

function frameBudget(capacityBytes: number, name: string): FrameBudget {
  const bytes = new ByteBudget(capacityBytes);
  if (capacityBytes >= defaultFrameLimits.frameBytesMax) return { bytes, frameLimits: defaultFrameLimits };
  // Only with a budget injected below a wireFrameBytesMax frame (checkLimits forbids it otherwise): such a frame could never be read.
  return { bytes, frameLimits: { ...defaultFrameLimits, frameBytesMax: capacityBytes, frameBytesMaxNote: `(the ${name} frame budget)` } };
}

type ConnectionStatus =
  | { state: 'handshaking' }
  | { state: 'serving'; role: WireRole }
  | { state: 'closing'; reason: KeelError }
  | { state: 'closed' };

/**
 * Until a connection has said hello, its frames may be no larger than a hello needs: a stranger's socket
 * could otherwise make the router buffer a wireFrameBytesMax frame (1000 of them: 32 GB).
 */
const helloFrameLimits: FrameLimits = {
  frameBytesMax: limits.wireHelloFrameBytesMax,
  headerBytesMax: limits.wireHeaderBytesMax,
  frameBytesMaxNote: 'for a frame before the hello (wireHelloFrameBytesMax)',
};

/** Turns what a handler threw into the error part of a reply. */
export function toWireError(err: unknown): WireError {
  if (err instanceof KeelError) return { code: err.code, message: err.message, details: err.details };
  return { code: 'IO', message: `internal error: ${(err as Error)?.message ?? String(err)}` };
}

/** Frames joined from socket chunks, by size class: large ones only (small ones come from V8's own pool). */
class FrameGatherPool implements GatherPool {
  private readonly buffers = new BufferPool(limits.wireFrameBytesMax + limits.wireGatherClassBytes, limits.wireGatherPoolBytesMax);

  acquire(bytes: number): Buffer | undefined {
    return bytes < limits.wireGatherClassBytes ? undefined : this.buffers.acquireFitting(bytes, limits.wireGatherClassBytes);
  }

  /** Its request is done with it. */
  release(buffer: Buffer): void {
    this.buffers.release(buffer);
  }

  /** Its request may still read it: the garbage collector takes it. */
  discard(buffer: Buffer): void {
    this.buffers.discard(buffer);
  }

  stats(): ReturnType<BufferPool['stats']> {
    return this.buffers.stats();
  }
}

class ServerConnection {
  private status: ConnectionStatus = { state: 'handshaking' };
  private readonly decoder: FrameDecoder;
  private session: RpcSession | undefined;
  private requestsInFlight = 0;
  private sendBlocked = false;
  private paused = false;
  private readonly handshakeTimer: NodeJS.Timeout;
  private readonly logger: Logger;
  /** Set at the hello: frames before it are bounded by helloFrameLimits alone. */
  private budget: ByteBudget | undefined;
  /** Budget held for the frame next() returns next (its preamble has arrived); 0: none. */
  private frameBytesHeld = 0;
  /** Bytes asked for while waiting in the budget's line; 0: not waiting. */
  private budgetAsk = 0;
  /** Called by the budget once the bytes asked for are ours. One per connection: nothing is allocated per frame. */
  private readonly budgetGranted = (): void => {
    const bytes = this.budgetAsk;
    this.budgetAsk = 0;
    if (!this.isOpen()) return this.budget!.release(bytes); // gone while the grant was on its way
    this.frameBytesHeld = bytes;
    this.takeFrames();
  };
  /** Frames taken from the decoder, for the receive check of a frame that holds budget. */
  private framesTaken = 0;
  private framesAtReceiveCheck = 0;
  private receiveTimer: NodeJS.Timeout | undefined;
  private receiveCheckArmed = false;

  constructor(
    private readonly connection: TransportConnection,
    private readonly options: Required<RpcServerOptions>,
    private readonly onGone: (connection: ServerConnection) => void,
    private readonly gatherPool: FrameGatherPool,
    private readonly logLimit: LogRateLimit,
    private readonly budgets: { clients: FrameBudget; peers: FrameBudget },
  ) {
    this.decoder = new FrameDecoder(helloFrameLimits, gatherPool);
    this.logger = options.logger.child({ peer: connection.remoteAddress });
    this.handshakeTimer = setTimeout(
      () => this.fail(KeelError.timeout('handshake', options.handshakeTimeoutMs)),
      options.handshakeTimeoutMs,
    );
    connection.onData((chunk) => this.onData(chunk));
    connection.onDrain(() => {
      this.sendBlocked = false;
      this.takeFrames();
    });
    connection.onClose((error) => this.onClose(error));
  }

  destroy(): void {
    this.connection.destroy();
  }

  private setStatus(next: ConnectionStatus): void {
    const log: Record<string, unknown> = { from: this.status.state, to: next.state };
    if (next.state === 'closing') log.reason = next.reason.message;
    this.status = next;
    this.logger.debug(log, 'rpc connection status');
  }

  private onData(chunk: Buffer): void {
    if (this.status.state !== 'handshaking' && this.status.state !== 'serving') return;
    this.decoder.push(chunk);
    this.takeFrames();
  }

  /**
   * Dispatches buffered frames while the window and the frame budget allow, and pauses or resumes the
   * socket to match. After the hello, a frame's bytes are taken from the budget as soon as its preamble is
   * here, before the rest of it is let in.
   */
  private takeFrames(): void {
    while (this.isOpen() && this.requestsInFlight < this.options.requestsInFlightMax) {
      let frame: Frame | undefined;
      try {
        if (this.budget !== undefined && this.frameBytesHeld === 0) {
          if (this.budgetAsk > 0) break; // in line: budgetGranted calls again
          const bytes = this.decoder.nextFrameBytes();
          if (bytes === 0) break; // no preamble yet
          if (!this.budget.acquire(bytes, this.budgetGranted)) {
            this.budgetAsk = bytes;
            break;
          }
          this.frameBytesHeld = bytes;
        }
        frame = this.decoder.next();
      } catch (err) {
        this.fail(err as KeelError);
        return;
      }
      if (!frame) break;
      const frameBytes = this.frameBytesHeld;
      this.frameBytesHeld = 0;
      this.framesTaken++;
      this.onFrame(frame, frameBytes);
    }
    if (!this.isOpen()) return;
    // A frame that holds budget is read to its end whatever else holds the connection up (replies the
    // client does not read): its bytes come back only once it has been served, and other connections may
    // be waiting for them. (It got them with room in the window, which cannot fill before it is served.)
    const frameArriving = this.frameBytesHeld > 0 && this.decoder.pendingBytes < this.frameBytesHeld;
    const mustWait = !frameArriving && (this.sendBlocked || this.budgetAsk > 0 || this.requestsInFlight >= this.options.requestsInFlightMax);
    if (mustWait && !this.paused) this.connection.pause();
    if (!mustWait && this.paused) this.connection.resume();
    this.paused = mustWait;
    if (frameArriving && !this.receiveCheckArmed) this.armReceiveCheck();
  }

  /**
   * Closes the connection if a frame that holds budget was arriving when the check was armed and still is
   * a frameReceiveTimeoutMs later: a stalled or trickling sender would pin its bytes for good. Armed only
   * while a frame arrives, and then left armed (a check finding none arriving does nothing).
   */
  private armReceiveCheck(): void {
    this.receiveCheckArmed = true;
    this.framesAtReceiveCheck = this.framesTaken;
    if (this.receiveTimer === undefined) this.receiveTimer = setTimeout(this.receiveCheck, this.options.frameReceiveTimeoutMs);
    else this.receiveTimer.refresh(); // one timer per connection, re-armed: nothing allocated per frame
  }

  private readonly receiveCheck = (): void => {
    this.receiveCheckArmed = false;
    if (!this.isOpen() || !(this.frameBytesHeld > 0 && this.decoder.pendingBytes < this.frameBytesHeld)) return;
    if (this.framesTaken === this.framesAtReceiveCheck) {
      const what = `receiving a request frame of ${this.frameBytesHeld} bytes (${this.decoder.pendingBytes} arrived)`;
      return this.fail(KeelError.timeout(what, this.options.frameReceiveTimeoutMs));
    }
    this.armReceiveCheck(); // another frame is arriving now: it gets a whole period
  };

  /** The connection is done taking frames: the budget of a frame not yet served goes back, a place in line is given up. */
  private dropFrameBudget(): void {
    if (this.receiveTimer !== undefined) clearTimeout(this.receiveTimer);
    if (this.budget === undefined) return;
    if (this.frameBytesHeld > 0) this.budget.release(this.frameBytesHeld);
    this.frameBytesHeld = 0;
    // Not in line any more: the grant is on its way, and budgetGranted gives the bytes back.
    if (this.budgetAsk > 0 && this.budget.cancel(this.budgetGranted)) this.budgetAsk = 0;
  }

  private isOpen(): boolean {
    return this.status.state === 'handshaking' || this.status.state === 'serving';
  }

  /** `frameBytes`: the budget the frame holds (0 before the hello). */
  private onFrame(frame: Frame, frameBytes: number): void {
    if (this.dispatchFrame(frame, frameBytes)) return;
    // Not dispatched (the handshake, or a protocol failure): nothing reads its payload.
    if (frame.gathered !== undefined) this.gatherPool.discard(frame.gathered);
    if (frameBytes > 0) this.budget!.release(frameBytes);
  }

  /** Runs the frame as a request (true), or as the handshake or a protocol failure (false). */
  private dispatchFrame(frame: Frame, frameBytes: number): boolean {
    const header = frame.header;
    if (typeof header.op !== 'string' || !isRequestId(header.id)) {
      this.fail(KeelError.protocol('request header needs a string op and a u32 id'));
      return false;
    }
    if (this.status.state === 'handshaking') {
      this.onHello(header as RequestHeader);
      return false;
    }
    if (header.id === helloRequestId) {
      this.fail(KeelError.protocol('request id 0 is reserved for the handshake'));
      return false;
    }
    this.dispatch({ header: header as RequestHeader, payload: frame.payload }, frame.gathered, frameBytes);
    return true;
  }

  private onHello(header: RequestHeader): void {
    // Armed at accept and cleared only here: a client that sends part of a frame and stalls, or trickles
    // bytes, is still cut off at the deadline.
    clearTimeout(this.handshakeTimer);
    if (header.op !== 'hello' || header.id !== helloRequestId || header.magic !== wireMagic) {
      return this.fail(KeelError.protocol(`expected a hello with magic '${wireMagic}' as the first frame`));
    }
    if (header.version !== wireVersion) return this.fail(KeelError.versionMismatch(wireVersion, header.version));
    const role = header.role as WireRole;
    if (!wireRoles.includes(role)) return this.fail(KeelError.protocol(`unknown role '${String(header.role)}'`));
    this.reply(helloRequestId, { fields: { version: wireVersion, routerId: this.options.routerId } });
    const budget = role === 'router' ? this.budgets.peers : this.budgets.clients;
    this.budget = budget.bytes;
    this.decoder.setLimits(budget.frameLimits);
    this.setStatus({ state: 'serving', role });
    this.session = this.options.handler.openSession({ remoteAddress: this.connection.remoteAddress, role });
  }

  private dispatch(request: RpcRequest, gathered: Buffer | undefined, frameBytes: number): void {
    const id = request.header.id;
    const session = this.session!;
    this.requestsInFlight++;
    let pending: Promise<RpcResult> | RpcResult;
    try {
      pending = session.handle(request);
    } catch (err) {
      pending = Promise.reject(err);
    }
    if (!(pending instanceof Promise)) {
      this.finish(id, pending, this.settle(request, session, gathered, frameBytes));
      return;
    }
    pending.then(
      (result) => this.finish(id, result, this.settle(request, session, gathered, frameBytes)),
      (err: unknown) => this.finishWithError(id, request.header.op, err, this.settle(request, session, gathered, frameBytes)),
    );
  }

  /**
   * The handler settled: the frame's joined buffer and its budget go back now if nothing reads the frame
   * any more (no payload, or the session says the op is done with it: a write's data has been copied into
   * a DTL record or written to its SCO by then). Otherwise the handler may still hold the payload: the
   * buffer is left to the garbage collector, and the returned callback gives the budget back once the
   * reply has left (or the connection is gone).
   */
  private settle(request: RpcRequest, session: RpcSession, gathered: Buffer | undefined, frameBytes: number): (() => void) | undefined {
    const payloadDone = request.payload.length === 0 || session.payloadDoneWhenSettled?.(request.header.op) === true;
    if (gathered !== undefined) {
      if (payloadDone) this.gatherPool.release(gathered);
      else this.gatherPool.discard(gathered);
    }
    if (payloadDone) {
      this.budget!.release(frameBytes);
      return undefined;
    }
    const budget = this.budget!;
    return () => budget.release(frameBytes);
  }

  private finish(id: number, result: RpcResult, onReplySent: (() => void) | undefined): void {
    this.requestsInFlight--;
    if (onReplySent !== undefined) {
      const onSent = result.onSent;
      result = { ...result, onSent: onSent === undefined ? onReplySent : () => (onSent(), onReplySent()) };
    }
    this.reply(id, result);
    this.takeFrames();
  }

  private finishWithError(id: number, op: string, err: unknown, onReplySent: (() => void) | undefined): void {
    this.requestsInFlight--;
    // Programmer errors are not operating errors: let them crash the process as assert intends.
    if (err instanceof AssertionError) {
      onReplySent?.();
      process.nextTick(() => {
        throw err;
      });
      return;
    }
    if (!(err instanceof KeelError)) this.logLimit.log(this.logger, 'error', 'wire-request-crashed', { err, op }, 'request handler failed with a non-Keel error');
    this.replyError(id, toWireError(err), onReplySent);
    this.takeFrames();
  }

  private reply(id: number, result: RpcResult): void {
    if (this.status.state === 'closed') return result.onSent?.();
    let buffers: Buffer[];
    try {
      buffers = encodeFrame({ ...result.fields, id, ok: true }, result.payload);
    } catch (err) {
      result.onSent?.();
      return this.replyError(id, toWireError(err));
    }
    this.write(buffers, result.onSent);
  }

  private replyError(id: number, error: WireError, onSent?: () => void): void {
    if (this.status.state === 'closed') return onSent?.();
    let buffers: Buffer[];
    try {
      buffers = encodeFrame({ id, err: error });
    } catch {
      // The details did not fit in a header: send the code and message alone.
      buffers = encodeFrame({ id, err: { code: error.code, message: error.message.slice(0, 1024) } });
    }
    this.write(buffers, onSent);
  }

  private write(buffers: Buffer[], onWritten?: () => void): void {
    if (!this.connection.write(buffers, onWritten)) this.sendBlocked = true;
  }

  /** A connection-level failure: tell the client why (id 0), then close this connection only. */
  private fail(reason: KeelError): void {
    if (!this.isOpen()) return;
    clearTimeout(this.handshakeTimer);
    this.dropFrameBudget();
    this.logLimit.log(this.logger, 'warn', `wire-connection-closed:${reason.code}`, { code: reason.code, reason: reason.message }, 'closing a wire connection');
    this.replyError(helloRequestId, toWireError(reason));
    this.setStatus({ state: 'closing', reason });
    this.connection.close();
  }

  private onClose(error?: Error): void {
    clearTimeout(this.handshakeTimer);
    if (error && this.status.state !== 'closing') {
      const code = (error as NodeJS.ErrnoException).code ?? 'unknown';
      this.logLimit.log(this.logger, 'info', `wire-connection-failed:${code}`, { err: error }, 'wire connection failed');
    }
    this.setStatus({ state: 'closed' });
    this.dropFrameBudget();
    this.session?.close();
    this.session = undefined;
    this.onGone(this);
  }
}

export class RpcServer {
  private readonly connections = new Set<ServerConnection>();
  private readonly gatherPool = new FrameGatherPool();
  private readonly budgets: { clients: FrameBudget; peers: FrameBudget };
  private listener: TransportListener | undefined;
  private readonly options: Required<RpcServerOptions>;
  /** One for all connections: a flood spreads over many connections. */
  private readonly logLimit: LogRateLimit;

  constructor(options: RpcServerOptions) {
    this.options = {
      ...options,
      requestsInFlightMax: options.requestsInFlightMax ?? limits.wireServerRequestsInFlightMax,
      handshakeTimeoutMs: options.handshakeTimeoutMs ?? limits.wireHandshakeTimeoutMs,
      connectionsMax: options.connectionsMax ?? limits.wireConnectionsMax,
      logRateLimit: options.logRateLimit ?? {},
      frameBytesInFlightMax: options.frameBytesInFlightMax ?? limits.wireServerFrameBytesInFlightMax,
      peerFrameBytesInFlightMax: options.peerFrameBytesInFlightMax ?? limits.wireServerPeerFrameBytesInFlightMax,
      frameReceiveTimeoutMs: options.frameReceiveTimeoutMs ?? limits.wireFrameReceiveTimeoutMs,
    };
    const { frameBytesInFlightMax, peerFrameBytesInFlightMax } = this.options;
    assert(peerFrameBytesInFlightMax > 0 && peerFrameBytesInFlightMax < frameBytesInFlightMax, 'the peers\' frame budget must be a positive part of the whole');
    this.budgets = {
      clients: frameBudget(frameBytesInFlightMax - peerFrameBytesInFlightMax, 'clients\''),
      peers: frameBudget(peerFrameBytesInFlightMax, 'peer routers\''),
    };
    this.logLimit = new LogRateLimit(options.logger, {
      linesMax: limits.logLinesPerKeyMax,
      intervalMs: limits.logRateIntervalMs,
      keysMax: limits.logRateKeysMax,
      ...options.logRateLimit,
    });
  }

  /** Starts accepting on "host:port" (port 0: any free port) and returns the bound address. */
  async listen(address: string): Promise<string> {
    assert(!this.listener, 'RpcServer.listen called twice');
    this.listener = await this.options.transport.listen(address, (connection) => this.accept(connection));
    this.options.logger.info({ address: this.listener.address }, 'wire server listening');
    return this.listener.address;
  }

  /** The bound "host:port". */
  get address(): string {
    assert(this.listener, 'RpcServer is not listening');
    return this.listener.address;
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  /** Connections closed on arrival because connectionsMax were open. */
  get refusedConnectionCount(): number {
    return this.refusedConnections;
  }

  private refusedConnections = 0;

  /**
   * Stops accepting and drops every connection at once. Resolves when all are gone and their sessions
   * closed (the volume service has released its volumes by then).
   */
  async close(): Promise<void> {
    await this.listener?.close();
    if (this.connections.size > 0) {
      const allGone = new Promise<void>((resolve) => (this.onAllGone = resolve));
      for (const connection of this.connections) connection.destroy();
      await allGone;
    }
    this.logLimit.flush(); // the counts of lines suppressed so far, before the router's last lines
  }

  private onAllGone: (() => void) | undefined;

  private accept(connection: TransportConnection): void {
    if (this.connections.size >= this.options.connectionsMax) {
      // Destroyed, not closed gracefully: a flood must not hold a socket per refused connection for the
      // close linger. The client sees its connection closed during the handshake and retries.
      this.refusedConnections++;
      const fields = { peer: connection.remoteAddress, connectionsMax: this.options.connectionsMax, refused: this.refusedConnections };
      this.logLimit.log(this.options.logger, 'warn', 'wire-connection-refused', fields, 'wire connection refused: wireConnectionsMax connections are open');
      connection.destroy();
      return;
    }
    const accepted = new ServerConnection(connection, this.options, (gone) => {
      this.connections.delete(gone);
      if (this.connections.size === 0) this.onAllGone?.();
    }, this.gatherPool, this.logLimit, this.budgets);
    this.connections.add(accepted);
  }

  /** Bytes of request frames held (being received or served) and connections waiting for some, per budget. */
  frameBudgetStats(): Record<'clients' | 'peers', { capacityBytes: number; usedBytes: number; waiting: number }> {
    const stats = ({ bytes }: FrameBudget) => ({ capacityBytes: bytes.capacityBytes, usedBytes: bytes.usedBytes, waiting: bytes.waiting });
    return { clients: stats(this.budgets.clients), peers: stats(this.budgets.peers) };
  }

  /** The pool of joined request frames shared by this server's connections. */
  gatherPoolStats(): ReturnType<BufferPool['stats']> {
    return this.gatherPool.stats();
  }
}
