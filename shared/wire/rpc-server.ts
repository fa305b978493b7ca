/**
 * The router side of the wire protocol (docs/wire-protocol.md): accepts transport connections, runs the
 * handshake, and dispatches requests to an RpcHandler. Each connection serves at most
 * limits.wireServerRequestsInFlightMax requests at once and stops reading from the socket beyond that
 * (TCP then pushes back on the client); replies go out as soon as each request finishes, in any order.
 * A KeelError thrown by the handler becomes an error reply; a malformed frame closes only its connection.
 * What a peer can make happen per connection or per request is logged through a LogRateLimit, so a
 * client that sends garbage in a loop cannot make the router write logs without bound.
 */
import assert, { AssertionError } from 'node:assert';
import type { Logger } from '../logger.ts';
import { BufferPool } from '../buffer-pool.ts';
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

  constructor(
    private readonly connection: TransportConnection,
    private readonly options: Required<RpcServerOptions>,
    private readonly onGone: (connection: ServerConnection) => void,
    private readonly gatherPool: FrameGatherPool,
    private readonly logLimit: LogRateLimit,
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

  /** Dispatches buffered frames while the window allows, and pauses or resumes the socket to match. */
  private takeFrames(): void {
    while (this.isOpen() && this.requestsInFlight < this.options.requestsInFlightMax) {
      let frame: Frame | undefined;
      try {
        frame = this.decoder.next();
      } catch (err) {
        this.fail(err as KeelError);
        return;
      }
      if (!frame) break;
      this.onFrame(frame);
    }
    if (!this.isOpen()) return;
    const mustWait = this.sendBlocked || this.requestsInFlight >= this.options.requestsInFlightMax;
    if (mustWait && !this.paused) this.connection.pause();
    if (!mustWait && this.paused) this.connection.resume();
    this.paused = mustWait;
  }

  private isOpen(): boolean {
    return this.status.state === 'handshaking' || this.status.state === 'serving';
  }

  private onFrame(frame: Frame): void {
    // Not dispatched (the handshake, or a protocol failure): nothing reads its payload.
    if (!this.dispatchFrame(frame) && frame.gathered !== undefined) this.gatherPool.discard(frame.gathered);
  }

  /** Runs the frame as a request (true), or as the handshake or a protocol failure (false). */
  private dispatchFrame(frame: Frame): boolean {
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
    this.dispatch({ header: header as RequestHeader, payload: frame.payload }, frame.gathered);
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
    this.decoder.setLimits(defaultFrameLimits);
    this.setStatus({ state: 'serving', role });
    this.session = this.options.handler.openSession({ remoteAddress: this.connection.remoteAddress, role });
  }

  private dispatch(request: RpcRequest, gathered: Buffer | undefined): void {
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
      if (gathered !== undefined) this.giveBack(gathered, session, request.header.op);
      this.finish(id, pending);
      return;
    }
    pending.then(
      (result) => {
        if (gathered !== undefined) this.giveBack(gathered, session, request.header.op);
        this.finish(id, result);
      },
      (err: unknown) => {
        if (gathered !== undefined) this.giveBack(gathered, session, request.header.op);
        this.finishWithError(id, request.header.op, err);
      },
    );
  }

  private giveBack(gathered: Buffer, session: RpcSession, op: string): void {
    if (session.payloadDoneWhenSettled?.(op) === true) this.gatherPool.release(gathered);
    else this.gatherPool.discard(gathered);
  }

  private finish(id: number, result: RpcResult): void {
    this.requestsInFlight--;
    this.reply(id, result);
    this.takeFrames();
  }

  private finishWithError(id: number, op: string, err: unknown): void {
    this.requestsInFlight--;
    // Programmer errors are not operating errors: let them crash the process as assert intends.
    if (err instanceof AssertionError) {
      process.nextTick(() => {
        throw err;
      });
      return;
    }
    if (!(err instanceof KeelError)) this.logLimit.log(this.logger, 'error', 'wire-request-crashed', { err, op }, 'request handler failed with a non-Keel error');
    this.replyError(id, toWireError(err));
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

  private replyError(id: number, error: WireError): void {
    if (this.status.state === 'closed') return;
    let buffers: Buffer[];
    try {
      buffers = encodeFrame({ id, err: error });
    } catch {
      // The details did not fit in a header: send the code and message alone.
      buffers = encodeFrame({ id, err: { code: error.code, message: error.message.slice(0, 1024) } });
    }
    this.write(buffers);
  }

  private write(buffers: Buffer[], onWritten?: () => void): void {
    if (!this.connection.write(buffers, onWritten)) this.sendBlocked = true;
  }

  /** A connection-level failure: tell the client why (id 0), then close this connection only. */
  private fail(reason: KeelError): void {
    if (!this.isOpen()) return;
    clearTimeout(this.handshakeTimer);
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
    this.session?.close();
    this.session = undefined;
    this.onGone(this);
  }
}

export class RpcServer {
  private readonly connections = new Set<ServerConnection>();
  private readonly gatherPool = new FrameGatherPool();
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
    }, this.gatherPool, this.logLimit);
    this.connections.add(accepted);
  }

  /** The pool of joined request frames shared by this server's connections. */
  gatherPoolStats(): ReturnType<BufferPool['stats']> {
    return this.gatherPool.stats();
  }
}
