/**
 * The edge's NBD server: listens on host:port, runs one NbdConnection per client (at most
 * limits.nbdConnectionsMax, of which at most limits.nbdHandshakingConnectionsMax in the handshake, sharing limits.nbdEdgeRequestBytesInFlightMax of payload; a connection
 * whose payload stalls or whose replies go unread while they hold some of it is cut after a deadline), and on stop() lets in-flight requests finish before closing everything.
 * Protocol and decisions: docs/nbd-protocol.md.
 */
import net from 'node:net';
import type { ExportResolver } from '../shared/block-target.ts';
import { KeelError } from '../shared/errors.ts';
import { limits } from '../shared/limits.ts';
import { type Logger, createLogger } from '../shared/logger.ts';
import { LogRateLimit, type LogRateLimitOptions } from '../shared/log-rate-limit.ts';
import { ByteBudget } from '../shared/byte-budget.ts';
import { NbdConnection, type NbdConnectionSettings } from './nbd-connection.ts';

export interface NbdServerOptions {
  /** Address to bind; use port 0 for an OS-assigned port (read it back from `start()` or `port`). */
  host: string;
  port: number;
  resolver: ExportResolver;
  /** Served when a client asks for the empty export name. */
  defaultExport?: string;
  logger?: Logger;
  /** Overrides of the shared/limits.ts bounds (tests use small ones). */
  bounds?: Partial<NbdServerBounds>;
  /** Overrides of the log rate limit's bounds (tests use an injected clock). */
  logRateLimit?: Partial<LogRateLimitOptions>;
}

export interface NbdServerBounds {
  connectionsMax: number;
  handshakingConnectionsMax: number;
  requestsInFlightMax: number;
  requestBytesInFlightMax: number;
  edgeRequestBytesInFlightMax: number;
  requestBytesMax: number;
  optionBytesMax: number;
  handshakeTimeoutMs: number;
  drainTimeoutMs: number;
  closeLingerMs: number;
  payloadReceiveTimeoutMs: number;
  replyDrainTimeoutMs: number;
}

export function defaultNbdServerBounds(): NbdServerBounds {
  return {
    connectionsMax: limits.nbdConnectionsMax,
    handshakingConnectionsMax: limits.nbdHandshakingConnectionsMax,
    requestsInFlightMax: limits.nbdRequestsInFlightMax,
    requestBytesInFlightMax: limits.nbdRequestBytesInFlightMax,
    edgeRequestBytesInFlightMax: limits.nbdEdgeRequestBytesInFlightMax,
    requestBytesMax: limits.nbdRequestBytesMax,
    optionBytesMax: limits.nbdOptionBytesMax,
    handshakeTimeoutMs: limits.nbdHandshakeTimeoutMs,
    drainTimeoutMs: limits.nbdDrainTimeoutMs,
    closeLingerMs: limits.nbdCloseLingerMs,
    payloadReceiveTimeoutMs: limits.nbdPayloadReceiveTimeoutMs,
    replyDrainTimeoutMs: limits.nbdReplyDrainTimeoutMs,
  };
}

/** stopped -> listening -> stopping -> stopped. */
export type NbdServerStatus = 'stopped' | 'starting' | 'listening' | 'stopping';

export class NbdServer {
  private status: NbdServerStatus = 'stopped';
  private readonly server: net.Server;
  private readonly connections = new Set<NbdConnection>();
  private readonly bounds: NbdServerBounds;
  private readonly settings: NbdConnectionSettings;
  private readonly logger: Logger;
  /** Payload bytes in flight of all connections (bounds.edgeRequestBytesInFlightMax). */
  private readonly requestBytes: ByteBudget;
  private nextConnectionId = 1;
  private boundPort = 0;

  constructor(private readonly options: NbdServerOptions) {
    this.bounds = { ...defaultNbdServerBounds(), ...options.bounds };
    // A smaller connectionsMax given alone shrinks the handshake cap with it.
    if (options.bounds?.handshakingConnectionsMax === undefined)
      this.bounds.handshakingConnectionsMax = Math.min(this.bounds.handshakingConnectionsMax, this.bounds.connectionsMax);
    if (this.bounds.requestBytesInFlightMax < this.bounds.requestBytesMax)
      throw KeelError.badConfig('NBD requestBytesInFlightMax must hold at least one requestBytesMax request');
    if (this.bounds.edgeRequestBytesInFlightMax < this.bounds.requestBytesInFlightMax)
      throw KeelError.badConfig('NBD edgeRequestBytesInFlightMax must hold at least one connection\'s requestBytesInFlightMax');
    if (this.bounds.handshakingConnectionsMax < 1 || this.bounds.handshakingConnectionsMax > this.bounds.connectionsMax)
      throw KeelError.badConfig('NBD handshakingConnectionsMax must lie in [1, connectionsMax]');
    this.requestBytes = new ByteBudget(this.bounds.edgeRequestBytesInFlightMax);
    this.logger = options.logger ?? createLogger('nbd-server');
    this.settings = {
      resolver: options.resolver,
      defaultExport: options.defaultExport,
      requestsInFlightMax: this.bounds.requestsInFlightMax,
      requestBytesInFlightMax: this.bounds.requestBytesInFlightMax,
      edgeRequestBytes: this.requestBytes,
      logLimit: new LogRateLimit(this.logger, { linesMax: limits.logLinesPerKeyMax, intervalMs: limits.logRateIntervalMs, keysMax: limits.logRateKeysMax, ...options.logRateLimit }),
      requestBytesMax: this.bounds.requestBytesMax,
      optionBytesMax: this.bounds.optionBytesMax,
      handshakeTimeoutMs: this.bounds.handshakeTimeoutMs,
      closeLingerMs: this.bounds.closeLingerMs,
      payloadReceiveTimeoutMs: this.bounds.payloadReceiveTimeoutMs,
      replyDrainTimeoutMs: this.bounds.replyDrainTimeoutMs,
    };
    this.server = net.createServer({ noDelay: true }, (socket) => this.onConnection(socket));
    this.server.on('error', (err) => this.logger.error({ err }, 'nbd server error'));
  }

  get port(): number {
    return this.boundPort;
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  /** Request payload bytes all connections hold now (at most bounds.edgeRequestBytesInFlightMax). */
  get requestBytesInFlight(): number {
    return this.requestBytes.usedBytes;
  }

  async start(): Promise<{ host: string; port: number }> {
    if (this.status !== 'stopped') throw KeelError.busy('NBD server (already started)');
    this.setStatus('starting');
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error) => reject(KeelError.io(`cannot listen on ${this.options.host}:${this.options.port}`, err));
      this.server.once('error', onError);
      this.server.listen(this.options.port, this.options.host, () => {
        this.server.off('error', onError);
        resolve();
      });
    }).catch((err) => {
      this.setStatus('stopped');
      throw err;
    });
    this.boundPort = (this.server.address() as net.AddressInfo).port;
    this.setStatus('listening');
    this.logger.info({ host: this.options.host, port: this.boundPort }, 'nbd server listening');
    return { host: this.options.host, port: this.boundPort };
  }

  /** Stops accepting, drains every connection (bounded by drainTimeoutMs), closes their exports. */
  async stop(): Promise<void> {
    if (this.status !== 'listening') return;
    this.setStatus('stopping');
    const listenerClosed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    await Promise.all([...this.connections].map((c) => c.shutdown(this.bounds.drainTimeoutMs)));
    await listenerClosed;
    this.settings.logLimit.flush(); // the counts of lines suppressed so far
    this.setStatus('stopped');
  }

  private setStatus(next: NbdServerStatus): void {
    this.logger.info({ from: this.status, to: next }, 'nbd server status');
    this.status = next;
  }

  private onConnection(socket: net.Socket): void {
    const remote = `${socket.remoteAddress}:${socket.remotePort}`;
    if (this.status !== 'listening') {
      socket.destroy();
      return;
    }
    // Connections that are gone but still finishing requests hold no socket (their bytes are in the budget).
    const live = [...this.connections].filter((c) => c.currentStatus !== 'closed');
    const handshaking = live.filter((c) => c.currentStatus === 'handshake');
    let liveCount = live.length;
    // Clients that connect and say nothing must not lock others out: the oldest handshake makes room.
    if (handshaking.length >= this.bounds.handshakingConnectionsMax || (liveCount >= this.bounds.connectionsMax && handshaking.length > 0)) {
      const oldest = handshaking.find((c) => !c.workingOnOption) ?? handshaking[0];
      this.settings.logLimit.log(
        this.logger,
        'warn',
        'nbd-handshake-evicted',
        { remote, evicted: oldest.remote, handshaking: handshaking.length, handshakingConnectionsMax: this.bounds.handshakingConnectionsMax },
        'nbd handshake evicted: too many connections in the handshake, the oldest makes room',
      );
      oldest.evictFromHandshake();
      liveCount -= 1;
    }
    if (liveCount >= this.bounds.connectionsMax) {
      this.settings.logLimit.log(this.logger, 'warn', 'nbd-refused', { remote, connectionsMax: this.bounds.connectionsMax }, 'nbd connection refused: too many connections');
      socket.destroy();
      return;
    }
    const logger = this.logger.child({ connection: this.nextConnectionId++, remote });
    const connection = new NbdConnection(socket, this.settings, logger, remote);
    this.connections.add(connection);
    void connection.closed.then(() => this.connections.delete(connection));
  }
}
