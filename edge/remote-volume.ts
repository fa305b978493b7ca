/**
 * The edge's view of one volume: an OpenBlockTarget whose operations run on the router that owns the
 * volume, over the wire protocol (docs/wire-protocol.md, section "Failover").
 *
 * Every request stays in an ordered table until the router acknowledges it. When the connection dies,
 * a request times out, or the router answers NOT_OWNER (or CLOSED: it is shutting the volume down),
 * the volume fails over: it drops the connection, asks the OwnerLocator for the owner again (bounded
 * backoff, limits.reconnectBackoffMaxMs / reconnectAttemptsMax), connects, re-opens the volume and
 * re-sends every unacknowledged request in its original order. Callers only see latency. If no owner can
 * be reached within ownerWaitMaxMs, the waiting requests fail with NO_OWNER (the NBD server maps it to
 * EIO); the next request starts a fresh search with a fresh deadline. Errors about the request itself
 * (OUT_OF_RANGE, CHECKSUM_MISMATCH, IO, ...) go to the caller unchanged and are never retried.
 *
 * Re-sending is safe because every operation is idempotent: a write (or trim, or zero) of the same bytes
 * at the same offset leaves the same state however often it is applied, and read/flush have no effect
 * on data. Could a re-sent write undo a later write to an overlapping range? Only if that later write
 * were acknowledged while the earlier one was not. NBD gives no order among requests in flight at the
 * same time (a client that needs one waits for the first reply before it sends the second), so such a
 * pair was concurrent and either final state is a correct outcome; a write that was acknowledged is
 * never re-sent, so a write issued after an acknowledgement is never overtaken.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { OpenBlockTarget } from '../shared/block-target.ts';
import { KeelError, isKeelError, type KeelErrorCode } from '../shared/errors.ts';
import { limits } from '../shared/limits.ts';
import type { Logger } from '../shared/logger.ts';
import { RpcClient, type RpcResponse } from '../shared/wire/rpc-client.ts';
import type { Transport } from '../shared/wire/transport.ts';

export interface OwnerLocator {
  /** Current owner's wire address "host:port" (+ routerId). Throws VOLUME_NOT_FOUND; may throw NO_OWNER. */
  locate(volumeName: string): Promise<{ routerId: string; address: string }>;
}

export interface RemoteVolumeOptions {
  transport: Transport;
  logger: Logger;
  /** How long to keep looking for an owner before failing requests with NO_OWNER. */
  ownerWaitMaxMs?: number;
  /** Deadline of one request at a router; past it the request is re-sent after a failover. */
  requestTimeoutMs?: number;
}

export interface RemoteVolumeStats {
  routerId: string | undefined;
  /** Connections lost and replaced (or given up on). */
  failovers: number;
  /** Requests sent again after a failover. */
  resentRequests: number;
  unacknowledgedRequests: number;
}

/** Replies that mean "this connection or router cannot serve the volume now": fail over and re-send. */
const failoverCodes: ReadonlySet<KeelErrorCode> = new Set(['CONNECTION_CLOSED', 'TIMEOUT', 'NOT_OWNER', 'CLOSED']);

type DataOp = 'read' | 'write' | 'flush' | 'trim' | 'zero';

interface UnackedRequest {
  op: DataOp;
  fields: { offset?: number; length?: number; fua?: boolean };
  payload: Buffer | undefined;
  /** The connection it was last sent on; replies from older connections are ignored. */
  generation: number;
  resolve: (response: RpcResponse) => void;
  reject: (error: KeelError) => void;
}

interface OwnerConnection {
  client: RpcClient;
  handle: number;
  routerId: string;
  generation: number;
  sizeBytes: number;
  readOnly: boolean;
}

type RemoteVolumeStatus =
  | { state: 'opening' }
  | { state: 'connected'; connection: OwnerConnection }
  | { state: 'failing-over'; reason: string; deadlineMs: number }
  | { state: 'no-owner'; reason: KeelError }
  | { state: 'closed' };

export class RemoteVolume implements OpenBlockTarget {
  readonly volumeName: string;
  private size: number;
  private readOnlyFlag: boolean;
  private status: RemoteVolumeStatus;
  private readonly locator: OwnerLocator;
  private readonly transport: Transport;
  private readonly logger: Logger;
  private readonly ownerWaitMaxMs: number;
  private readonly requestTimeoutMs: number;
  /** Unacknowledged requests by sequence number; a Map iterates in insertion (= submission) order. */
  private readonly unacked = new Map<number, UnackedRequest>();
  private lastSeq = 0;
  private lastGeneration = 0;
  private failovers = 0;
  private resentRequests = 0;
  /** Set by close(): new requests are refused while outstanding ones finish. */
  private closing: Promise<void> | undefined;
  private drained: (() => void) | undefined;

  static async open(volumeName: string, locator: OwnerLocator, options: RemoteVolumeOptions): Promise<RemoteVolume> {
    const volume = new RemoteVolume(volumeName, locator, options);
    const connection = await volume.findOwner(Date.now() + volume.ownerWaitMaxMs);
    volume.size = connection.sizeBytes;
    volume.readOnlyFlag = connection.readOnly;
    volume.setStatus({ state: 'connected', connection });
    return volume;
  }

  private constructor(volumeName: string, locator: OwnerLocator, options: RemoteVolumeOptions) {
    this.volumeName = volumeName;
    this.locator = locator;
    this.transport = options.transport;
    this.logger = options.logger.child({ volume: volumeName }); // the one place that names the volume in its logs
    this.ownerWaitMaxMs = options.ownerWaitMaxMs ?? limits.ownerWaitMaxMs;
    this.requestTimeoutMs = options.requestTimeoutMs ?? limits.wireRequestTimeoutMs;
    this.size = 0;
    this.readOnlyFlag = false;
    this.status = { state: 'opening' };
  }

  get sizeBytes(): number {
    return this.size;
  }

  get readOnly(): boolean {
    return this.readOnlyFlag;
  }

  stats(): RemoteVolumeStats {
    return {
      routerId: this.status.state === 'connected' ? this.status.connection.routerId : undefined,
      failovers: this.failovers,
      resentRequests: this.resentRequests,
      unacknowledgedRequests: this.unacked.size,
    };
  }

  async read(offset: number, length: number): Promise<Buffer> {
    checkPayloadBytes(length);
    const response = await this.submit('read', { offset, length });
    return response.payload;
  }

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    checkPayloadBytes(data.length);
    await this.submit('write', { offset, fua }, data);
  }

  async flush(): Promise<void> {
    await this.submit('flush', {});
  }

  async trim(offset: number, length: number, fua: boolean): Promise<void> {
    await this.submit('trim', { offset, length, fua });
  }

  async writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    await this.submit('zero', { offset, length, fua });
  }

  /** Waits for outstanding requests (bounded by the failover deadline), then closes the handle. */
  close(): Promise<void> {
    this.closing ??= this.closeOnce();
    return this.closing;
  }

  private async closeOnce(): Promise<void> {
    if (this.unacked.size > 0) await new Promise<void>((resolve) => (this.drained = resolve));
    const last = this.status;
    this.setStatus({ state: 'closed' });
    if (last.state === 'connected') {
      const { client, handle } = last.connection;
      await client.request({ op: 'close', handle }).catch(() => {});
      client.close();
    }
  }

  private submit(op: DataOp, fields: UnackedRequest['fields'], payload?: Buffer): Promise<RpcResponse> {
    if (this.closing) {
      return Promise.reject(KeelError.closed(`volume '${this.volumeName}'`));
    }
    return new Promise((resolve, reject) => {
      const request: UnackedRequest = { op, fields, payload, generation: 0, resolve, reject };
      const seq = ++this.lastSeq;
      this.unacked.set(seq, request);
      if (this.status.state === 'connected') this.send(seq, request, this.status.connection);
      else if (this.status.state === 'no-owner') this.startFailover('a new request after the owner was lost', 0);
      // failing-over: the request goes out with the others once a new owner is found.
    });
  }

  private send(seq: number, request: UnackedRequest, connection: OwnerConnection): void {
    request.generation = connection.generation;
    connection.client.request({ op: request.op, handle: connection.handle, ...request.fields }, request.payload).then(
      (response) => {
        if (request.generation !== connection.generation || !this.unacked.has(seq)) return;
        this.acknowledge(seq);
        request.resolve(response);
      },
      (error: KeelError) => {
        if (request.generation !== connection.generation || !this.unacked.has(seq)) return;
        if (isKeelError(error) && failoverCodes.has(error.code)) {
          this.startFailover(`${error.code}: ${error.message}`, connection.generation);
          return;
        }
        this.acknowledge(seq);
        request.reject(error);
      },
    );
  }

  private acknowledge(seq: number): void {
    this.unacked.delete(seq);
    if (this.unacked.size === 0 && this.drained) {
      const drained = this.drained;
      this.drained = undefined;
      drained();
    }
  }

  /**
   * Starts one failover after connection `generation` was lost (0: a new request found no owner).
   * Reports about connections already replaced, or arriving while a failover runs, are ignored.
   */
  private startFailover(reason: string, generation: number): void {
    const status = this.status;
    const lostCurrentConnection = status.state === 'connected' && status.connection.generation === generation;
    const newRequestAfterGivingUp = status.state === 'no-owner' && generation === 0;
    if (!lostCurrentConnection && !newRequestAfterGivingUp) return;
    this.failovers++;
    const deadlineMs = Date.now() + this.ownerWaitMaxMs;
    // Status first: closing the client reports its loss here again, which must find us failing over.
    this.setStatus({ state: 'failing-over', reason, deadlineMs });
    if (status.state === 'connected') status.connection.client.close();
    void this.failOver(deadlineMs);
  }

  private async failOver(deadlineMs: number): Promise<void> {
    let connection: OwnerConnection;
    try {
      connection = await this.findOwner(deadlineMs);
    } catch (err) {
      return this.giveUp(err as KeelError);
    }
    if (this.status.state === 'closed') {
      connection.client.close();
      return;
    }
    if (connection.sizeBytes !== this.size) {
      this.logger.info({ from: this.size, to: connection.sizeBytes }, 'volume size changed across failover');
      this.size = connection.sizeBytes;
    }
    this.setStatus({ state: 'connected', connection });
    for (const [seq, request] of this.unacked) {
      if (request.generation !== 0) this.resentRequests++;
      this.send(seq, request, connection);
    }
  }

  /** Fails every waiting request; the next request starts a new search. */
  private giveUp(error: KeelError): void {
    if (this.status.state === 'closed') return;
    this.setStatus({ state: 'no-owner', reason: error });
    const waiting = [...this.unacked.keys()];
    for (const seq of waiting) {
      const request = this.unacked.get(seq)!;
      this.acknowledge(seq);
      request.reject(error);
    }
  }

  /**
   * Locates the owner, connects and opens the volume, retrying with bounded backoff until deadlineMs.
   * Throws NO_OWNER at the deadline, VOLUME_NOT_FOUND at once (waiting will not create the volume).
   */
  private async findOwner(deadlineMs: number): Promise<OwnerConnection> {
    const startedMs = Date.now();
    let lastError: KeelError | undefined;
    for (let attempt = 0; attempt < limits.reconnectAttemptsMax; attempt++) {
      const remainingMs = deadlineMs - Date.now();
      if (remainingMs <= 0 || this.status.state === 'closed') break;
      try {
        return await this.connectToOwner(remainingMs);
      } catch (err) {
        if (!isKeelError(err)) throw err;
        // Waiting will not create the volume, nor repair one its owner found corrupt.
        if (err.code === 'VOLUME_NOT_FOUND' || err.code === 'SNAPSHOT_NOT_FOUND' || err.code === 'VERSION_MISMATCH' || err.code === 'CORRUPT') throw err;
        lastError = err;
        this.logger.debug({ attempt, code: err.code, reason: err.message }, 'owner not reachable yet');
      }
      const backoffMs = Math.min(limits.reconnectBackoffMaxMs, 10 * 2 ** attempt) * (0.5 + Math.random() / 2);
      await sleep(Math.max(0, Math.min(backoffMs, deadlineMs - Date.now())));
    }
    const error = KeelError.noOwner(this.volumeName, Date.now() - startedMs);
    if (lastError) error.details.lastError = `${lastError.code}: ${lastError.message}`;
    throw error;
  }

  private async connectToOwner(remainingMs: number): Promise<OwnerConnection> {
    const owner = await withDeadline(this.locator.locate(this.volumeName), remainingMs, 'locating the owner');
    const client = await RpcClient.connect(owner.address, {
      transport: this.transport,
      logger: this.logger,
      role: 'edge',
      requestTimeoutMs: this.requestTimeoutMs,
      connectTimeoutMs: Math.min(limits.wireConnectTimeoutMs, remainingMs),
    });
    const generation = ++this.lastGeneration;
    client.onClose((reason) => this.startFailover(`${reason.code}: ${reason.message}`, generation));
    try {
      const { header } = await client.request({ op: 'open', volume: this.volumeName });
      if (typeof header.handle !== 'number' || typeof header.sizeBytes !== 'number') {
        throw KeelError.protocol('open reply lacks handle or sizeBytes');
      }
      return {
        client,
        handle: header.handle,
        routerId: client.routerId ?? owner.routerId,
        generation,
        sizeBytes: header.sizeBytes,
        readOnly: header.readOnly === true,
      };
    } catch (err) {
      client.close();
      throw err;
    }
  }

  private setStatus(next: RemoteVolumeStatus): void {
    const log: Record<string, unknown> = { from: this.status.state, to: next.state };
    if (next.state === 'connected') log.routerId = next.connection.routerId;
    if (next.state === 'failing-over') log.reason = next.reason;
    if (next.state === 'no-owner') log.reason = next.reason.message;
    this.status = next;
    if (next.state === 'failing-over' || next.state === 'no-owner') this.logger.warn(log, 'remote volume status');
    else this.logger.info(log, 'remote volume status');
  }
}

function checkPayloadBytes(length: number): void {
  if (length > limits.nbdRequestBytesMax) throw KeelError.requestTooLarge(length, limits.nbdRequestBytesMax);
}

function withDeadline<T>(promise: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(KeelError.timeout(what, timeoutMs)), timeoutMs);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}
