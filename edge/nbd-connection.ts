/**
 * One NBD client connection: the fixed-newstyle handshake, then the transmission phase against the
 * BlockTarget the export name resolves to (docs/nbd-protocol.md). Many requests run at once; replies go out
 * as they complete, matched by handle. Reading stops while the connection is at its in-flight bounds
 * (backpressure) and resumes as requests finish.
 */
import assert from 'node:assert';
import type { Socket } from 'node:net';
import type { ExportResolver, OpenBlockTarget } from '../shared/block-target.ts';
import { KeelError, isKeelError } from '../shared/errors.ts';
import { limits } from '../shared/limits.ts';
import type { Logger } from '../shared/logger.ts';
import { WritevBatch } from '../shared/writev-batch.ts';
import type { LogRateLimit } from '../shared/log-rate-limit.ts';
import type { ByteBudget } from '../shared/byte-budget.ts';
import { ByteQueue } from './byte-queue.ts';
import {
  type ClientFlags,
  type ClientOption,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeOptionReply,
  encodeServerEntry,
  parseClientFlags,
  parseExportName,
  parseInfoRequest,
  takeOption,
} from './nbd-handshake.ts';
import {
  KEEL_BLOCK_SIZE_MINIMUM_BYTES,
  KEEL_BLOCK_SIZE_PREFERRED_BYTES,
  NBD_CLIENT_FLAGS_BYTES,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_NO_ZEROES,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_INFO_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_SERVER,
  commandNames,
  optionNames,
} from './nbd-protocol.ts';
import {
  type NbdRequest,
  consumeRequest,
  encodeSimpleReplyHeader,
  nbdErrorFor,
  peekRequest,
  validateRequest,
} from './nbd-requests.ts';

export const SERVER_HANDSHAKE_FLAGS = NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES;

/** What a connection needs from its server; the bounds default to shared/limits.ts. */
export interface NbdConnectionSettings {
  resolver: ExportResolver;
  /** The export served for an empty export name; undefined means an empty name is unknown. */
  defaultExport: string | undefined;
  requestsInFlightMax: number;
  requestBytesInFlightMax: number;
  /** Payload bytes of all the edge's connections (limits.nbdEdgeRequestBytesInFlightMax), shared. */
  edgeRequestBytes: ByteBudget;
  /** Lines a client can cause (bad requests, failed opens, aborts) go through it: a client in a loop must not flood the log. */
  logLimit: LogRateLimit;
  requestBytesMax: number;
  optionBytesMax: number;
  handshakeTimeoutMs: number;
  closeLingerMs: number;
  /** How long the payload of a request holding edge bytes may take to arrive (limits.nbdPayloadReceiveTimeoutMs). */
  payloadReceiveTimeoutMs: number;
  /** How long reply data holding edge bytes may wait with no byte of it taken by the client (limits.nbdReplyDrainTimeoutMs). */
  replyDrainTimeoutMs: number;
}

/**
 * handshake: options are being negotiated. transmission: serving requests. draining: no new requests are
 * read (NBD_CMD_DISC or server stop); in-flight ones finish, then the socket ends. closed: socket gone; the
 * target is closed once in-flight requests settle.
 */
export type NbdConnectionStatus = 'handshake' | 'transmission' | 'draining' | 'closed';

/** Transmission flags for an export: everything Keel supports, plus READ_ONLY when the target is. */
export function transmissionFlagsFor(readOnly: boolean): number {
  const flags =
    NBD_FLAG_HAS_FLAGS |
    NBD_FLAG_SEND_FLUSH |
    NBD_FLAG_SEND_FUA |
    NBD_FLAG_SEND_TRIM |
    NBD_FLAG_SEND_WRITE_ZEROES |
    NBD_FLAG_CAN_MULTI_CONN;
  return readOnly ? flags | NBD_FLAG_READ_ONLY : flags;
}

interface Served {
  target: OpenBlockTarget;
  exportName: string;
  sizeBytes: number;
  readOnly: boolean;
  requestBytesMax: number;
}

export class NbdConnection {
  private status: NbdConnectionStatus = 'handshake';
  private readonly incoming = new ByteQueue();
  private clientFlags: ClientFlags | undefined;
  private handshakeBusy = false;
  private optionInProgress = false;
  private handshakeTimer: NodeJS.Timeout | undefined;
  private drainTimer: NodeJS.Timeout | undefined;
  private lingerTimer: NodeJS.Timeout | undefined;
  private served: Served | undefined;
  private inFlight = 0;
  private inFlightBytes = 0;
  private readingPaused = false;
  /**
   * The request at the front of `incoming` whose bytes this connection holds in the edge's budget: its
   * payload is read to the end whatever else happens, so bytes held never wait for bytes wanted.
   */
  private next: HeldRequest | undefined;
  /** The request at the front of `incoming` waiting in the edge budget's line; reading stops meanwhile. */
  private waitingForBytes: HeldRequest | undefined;
  /**
   * Deadline of a payload that holds edge bytes (payloadCheck): one timer per connection, armed when a
   * payload is left arriving and not re-armed per request, so the hot path pays a flag test and a counter.
   */
  private payloadTimer: NodeJS.Timeout | undefined;
  private payloadCheckArmed = false;
  /** Requests whose payload was read to the end: a change between checks means the stream moved on. */
  private requestsTaken = 0;
  private requestsTakenAtPayloadCheck = 0;
  /** Edge bytes held by READ reply data written to the socket and not yet left for the kernel. */
  private replyBytesHeld = 0;
  /** Deadline of reply data holding edge bytes that the client does not take (replyCheck); like payloadTimer. */
  private replyTimer: NodeJS.Timeout | undefined;
  private replyCheckArmed = false;
  private sentAtReplyCheck = 0;
  private readonly replies: WritevBatch;
  private targetClosing = false;
  /** Why the last open for negotiation failed: the client hears it in NBD_OPT_GO's error reply. */
  private openFailure: KeelError | undefined;
  /** The export being opened for NBD_OPT_GO / NBD_OPT_EXPORT_NAME, if any. */
  private opening: Promise<unknown> | undefined;
  private resolveClosed!: () => void;
  /** Resolves once the socket is gone and the target (if any) is closed. */
  readonly closed: Promise<void> = new Promise((resolve) => (this.resolveClosed = resolve));

  constructor(
    private readonly socket: Socket,
    private readonly settings: NbdConnectionSettings,
    private readonly logger: Logger,
    /** The client's address, for the server's log lines. */
    readonly remote = '',
  ) {
    socket.setNoDelay(true);
    this.replies = new WritevBatch(socket, limits.writevFramesMax);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('drain', () => this.pumpRequests());
    socket.on('error', (err) => this.logger.debug({ err }, 'nbd socket error'));
    socket.on('close', () => this.onSocketClosed());
    this.handshakeTimer = setTimeout(() => this.onHandshakeTimeout(), settings.handshakeTimeoutMs);
    this.logger.debug('nbd connection accepted');
    socket.write(encodeGreeting(SERVER_HANDSHAKE_FLAGS));
  }

  get currentStatus(): NbdConnectionStatus {
    return this.status;
  }

  get requestsInFlight(): number {
    return this.inFlight;
  }

  /** True while the edge works on one of the client's options (opening or describing an export, listing). */
  get workingOnOption(): boolean {
    return this.optionInProgress;
  }

  /** Closes a connection still in the handshake to make room for a new one; an established one is kept. */
  evictFromHandshake(): void {
    if (this.status === 'handshake') this.abort('evicted: too many connections in the handshake');
  }

  /** Server stop: no new requests; in-flight ones get `drainTimeoutMs` to finish before the cut. */
  shutdown(drainTimeoutMs: number): Promise<void> {
    if (this.status === 'handshake') this.abort('server stopping during handshake');
    else if (this.status === 'transmission') {
      this.setStatus('draining', 'server stopping');
      this.drainTimer = setTimeout(() => this.abort('in-flight requests did not drain in time'), drainTimeoutMs);
      this.finishIfDrained();
    }
    return this.closed;
  }

  private setStatus(next: NbdConnectionStatus, reason: string): void {
    if (next === this.status) return;
    this.logger.info({ from: this.status, to: next, reason }, 'nbd connection status');
    this.status = next;
    if (next !== 'transmission') this.dropUnreadRequestBytes();
  }

  /** No more requests are read: the bytes held or wanted for the next one go back to the edge. */
  private dropUnreadRequestBytes(): void {
    if (this.next) this.settings.edgeRequestBytes.release(this.next.bytes);
    this.next = undefined;
    // Once granted (the callback is on its way), the callback gives the bytes back.
    if (this.waitingForBytes && this.settings.edgeRequestBytes.cancel(this.onBytesGranted)) this.waitingForBytes = undefined;
  }

  private readonly onBytesGranted = (): void => {
    const granted = this.waitingForBytes!;
    this.waitingForBytes = undefined;
    if (this.status !== 'transmission') return this.settings.edgeRequestBytes.release(granted.bytes);
    this.next = granted;
    this.pumpRequests();
  };

  /** Hard disconnect: the peer broke the protocol or the connection must go now. */
  private abort(reason: string, err?: unknown): void {
    if (this.status === 'closed') return;
    this.settings.logLimit.log(this.logger, 'warn', `nbd-abort:${reason}`, { err, inFlight: this.inFlight }, `nbd connection closed: ${reason}`);
    this.setStatus('closed', reason);
    this.incoming.clear();
    this.socket.destroy();
  }

  private onData(chunk: Buffer): void {
    // After NBD_CMD_DISC the client must not send anything; during a drain new requests are not served.
    if (this.status === 'draining' || this.status === 'closed') return;
    this.incoming.push(chunk);
    if (this.status === 'handshake') void this.pumpHandshake();
    else this.pumpRequests();
  }

  private onSocketClosed(): void {
    clearTimeout(this.handshakeTimer);
    clearTimeout(this.drainTimer);
    clearTimeout(this.lingerTimer);
    clearTimeout(this.payloadTimer);
    clearTimeout(this.replyTimer);
    this.setStatus('closed', 'socket closed');
    this.incoming.clear();
    this.finishIfDrained();
  }

  private onHandshakeTimeout(): void {
    if (this.status === 'handshake') this.abort(`handshake not finished within ${this.settings.handshakeTimeoutMs} ms`);
  }

  // ------------------------------------------------------------------------------------------ handshake

  private async pumpHandshake(): Promise<void> {
    if (this.handshakeBusy) return; // options are answered one at a time, in order
    this.handshakeBusy = true;
    try {
      while (this.status === 'handshake') {
        if (!this.clientFlags) {
          if (this.incoming.length < NBD_CLIENT_FLAGS_BYTES) break;
          const raw = this.incoming.take(NBD_CLIENT_FLAGS_BYTES).readUInt32BE(0);
          this.clientFlags = parseClientFlags(raw, SERVER_HANDSHAKE_FLAGS);
          continue;
        }
        if (this.socket.writableLength > limits.nbdHandshakeReplyBytesMax) await this.waitForClientToRead();
        const option = takeOption(this.incoming, this.settings.optionBytesMax);
        if (!option) break;
        this.optionInProgress = true;
        try {
          await this.handleOption(option);
        } finally {
          this.optionInProgress = false;
        }
      }
    } catch (err) {
      if (!isKeelError(err)) throw err;
      this.abort('bad handshake input', err);
    } finally {
      this.handshakeBusy = false;
    }
    if (this.status === 'transmission') this.pumpRequests();
  }

  /** Stops reading the client's options until it has read our replies (or is gone). */
  private async waitForClientToRead(): Promise<void> {
    this.socket.pause();
    await new Promise<void>((resolve) => {
      const done = () => {
        this.socket.off('drain', done);
        this.socket.off('close', done);
        resolve();
      };
      this.socket.on('drain', done);
      this.socket.on('close', done);
    });
    if (this.status === 'handshake') this.socket.resume();
  }

  private async handleOption({ option, data }: ClientOption): Promise<void> {
    this.logger.debug({ option: optionNames[option] ?? option, dataBytes: data.length }, 'nbd option');
    switch (option) {
      case NBD_OPT_EXPORT_NAME:
        return this.handleExportName(data);
      case NBD_OPT_INFO:
      case NBD_OPT_GO:
        return this.handleInfoOrGo(option, data);
      case NBD_OPT_LIST:
        return this.handleList(data);
      case NBD_OPT_ABORT:
        this.sendOptionReply(option, NBD_REP_ACK);
        this.setStatus('draining', 'client sent NBD_OPT_ABORT');
        this.finishIfDrained();
        return;
      default:
        // STARTTLS, STRUCTURED_REPLY, META_CONTEXT, ...: the client falls back to what we offer.
        this.sendOptionReply(option, NBD_REP_ERR_UNSUP, `option ${option} is not supported`);
    }
  }

  private resolveExportName(requested: string): string | undefined {
    return requested === '' ? this.settings.defaultExport : requested;
  }

  /** NBD_OPT_EXPORT_NAME cannot answer an error: an unknown export ends the session (spec). */
  private async handleExportName(data: Buffer): Promise<void> {
    const exportName = this.resolveExportName(parseExportName(data));
    if (exportName === undefined) return this.abort('NBD_OPT_EXPORT_NAME with an empty name and no default export');
    const target = await this.openForNegotiation(exportName);
    if (this.status !== 'handshake') return;
    if (!target) return this.abort(`NBD_OPT_EXPORT_NAME for unknown or unavailable export '${exportName}'`);
    this.socket.write(
      encodeExportNameReply(target.sizeBytes, transmissionFlagsFor(target.readOnly), this.clientFlags!.noZeroes),
    );
    this.enterTransmission(target, exportName);
  }

  private async handleInfoOrGo(option: number, data: Buffer): Promise<void> {
    let request;
    try {
      request = parseInfoRequest(data);
    } catch (err) {
      if (!isKeelError(err)) throw err;
      this.settings.logLimit.log(this.logger, 'warn', 'nbd-bad-info', { err }, 'malformed NBD_OPT_INFO/GO');
      return this.sendOptionReply(option, NBD_REP_ERR_INVALID, err.message);
    }
    const exportName = this.resolveExportName(request.exportName);
    if (exportName === undefined) return this.sendOptionReply(option, NBD_REP_ERR_UNKNOWN, 'no default export');
    if (option === NBD_OPT_INFO) {
      const described = await this.describeTarget(exportName);
      if (!described) return this.sendOptionReply(option, NBD_REP_ERR_UNKNOWN, `export '${exportName}' is not available`);
      return this.sendInfoReplies(option, exportName, request.infoTypes, described);
    }
    const target = await this.openForNegotiation(exportName);
    if (this.status !== 'handshake') return;
    if (!target) return this.sendOptionReply(option, NBD_REP_ERR_UNKNOWN, unavailableMessage(exportName, this.openFailure));
    this.sendInfoReplies(option, exportName, request.infoTypes, target);
    this.enterTransmission(target, exportName);
  }

  private sendInfoReplies(
    option: number,
    exportName: string,
    infoTypes: number[],
    description: { sizeBytes: number; readOnly: boolean },
  ): void {
    this.sendOptionReply(option, NBD_REP_INFO, encodeInfoExport(description.sizeBytes, transmissionFlagsFor(description.readOnly)));
    // Sent even when not requested: the spec allows unrequested info, and our maximum is not the default.
    this.sendOptionReply(
      option,
      NBD_REP_INFO,
      encodeInfoBlockSize({
        minimumBytes: KEEL_BLOCK_SIZE_MINIMUM_BYTES,
        preferredBytes: KEEL_BLOCK_SIZE_PREFERRED_BYTES,
        maximumBytes: this.settings.requestBytesMax,
      }),
    );
    if (infoTypes.includes(NBD_INFO_NAME)) this.sendOptionReply(option, NBD_REP_INFO, encodeInfoString(NBD_INFO_NAME, exportName));
    this.sendOptionReply(option, NBD_REP_ACK);
  }

  private async handleList(data: Buffer): Promise<void> {
    if (data.length !== 0) return this.sendOptionReply(NBD_OPT_LIST, NBD_REP_ERR_INVALID, 'NBD_OPT_LIST takes no data');
    let exports;
    try {
      exports = await this.settings.resolver.list();
    } catch (err) {
      if (!isKeelError(err)) throw err;
      this.logger.warn({ err }, 'listing exports failed');
      return this.sendOptionReply(NBD_OPT_LIST, NBD_REP_ERR_POLICY, `listing exports failed: ${err.message}`);
    }
    if (this.status !== 'handshake') return;
    for (const entry of exports) this.sendOptionReply(NBD_OPT_LIST, NBD_REP_SERVER, encodeServerEntry(entry.name, entry.description));
    this.sendOptionReply(NBD_OPT_LIST, NBD_REP_ACK);
  }

  /**
   * Undefined when the export is unknown or cannot be opened now (logged). When the connection ended while
   * the export was opening, the target is closed again and undefined returned; `closed` waits for that.
   */
  private openForNegotiation(exportName: string): Promise<OpenBlockTarget | undefined> {
    const opening = (async () => {
      let target: OpenBlockTarget;
      try {
        target = await this.settings.resolver.open(exportName);
      } catch (err) {
        if (!isKeelError(err)) throw err;
        this.settings.logLimit.log(this.logger, 'warn', `nbd-open-failed:${err.code}`, { err, exportName }, 'cannot open export');
        this.openFailure = err;
        return undefined;
      }
      if (this.status === 'handshake') return target;
      await closeQuietly(target, this.logger);
      return undefined;
    })();
    this.opening = opening;
    return opening;
  }

  private async describeTarget(exportName: string): Promise<{ sizeBytes: number; readOnly: boolean } | undefined> {
    try {
      return await this.settings.resolver.describe(exportName);
    } catch (err) {
      if (!isKeelError(err)) throw err;
      this.settings.logLimit.log(this.logger, 'warn', `nbd-describe-failed:${err.code}`, { err, exportName }, 'cannot describe export');
      return undefined;
    }
  }

  private sendOptionReply(option: number, replyType: number, data?: Buffer | string): void {
    if (!this.socket.writable) return;
    const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    this.socket.write(encodeOptionReply(option, replyType, bytes));
  }

  private enterTransmission(target: OpenBlockTarget, exportName: string): void {
    clearTimeout(this.handshakeTimer);
    this.served = {
      target,
      exportName,
      sizeBytes: target.sizeBytes,
      readOnly: target.readOnly,
      requestBytesMax: this.settings.requestBytesMax,
    };
    this.logger.info({ exportName, sizeBytes: target.sizeBytes, readOnly: target.readOnly }, 'nbd export opened');
    this.setStatus('transmission', `serving '${exportName}'`);
  }

  // --------------------------------------------------------------------------------------- transmission

  private atCapacity(): boolean {
    return (
      this.inFlight >= this.settings.requestsInFlightMax ||
      this.inFlightBytes >= this.settings.requestBytesInFlightMax ||
      this.socket.writableNeedDrain
    );
  }

  private pumpRequests(): void {
    while (this.status === 'transmission') {
      if (!this.next) {
        if (this.waitingForBytes || this.atCapacity()) break;
        let request: NbdRequest | null;
        try {
          request = peekRequest(this.incoming, this.settings.requestBytesMax);
        } catch (err) {
          if (!isKeelError(err)) throw err;
          return this.abort('bad request', err);
        }
        if (!request) break;
        // Taken before the payload is read, so a partly received 32 MiB write counts from its header on.
        const held = { request, bytes: budgetBytes(request, this.settings.requestBytesMax) };
        if (!this.settings.edgeRequestBytes.acquire(held.bytes, this.onBytesGranted)) {
          this.waitingForBytes = held;
          break;
        }
        this.next = held;
      }
      const { request, bytes } = this.next;
      if (!consumeRequest(this.incoming, request)) {
        // Payload still arriving: keep reading it, but not forever (its bytes may be what others wait for).
        if (!this.payloadCheckArmed) this.armPayloadCheck();
        break;
      }
      this.next = undefined;
      this.requestsTaken++;
      if (request.type === NBD_CMD_DISC) {
        this.settings.edgeRequestBytes.release(bytes);
        this.setStatus('draining', 'client sent NBD_CMD_DISC');
        this.incoming.clear();
        return this.finishIfDrained();
      }
      this.dispatch(request, bytes);
    }
    this.updateReading();
  }

  /**
   * Aborts the connection if a payload holding edge bytes was arriving when the check was armed and, with no
   * request read to its end since, still is a payloadReceiveTimeoutMs later: a client that sends a header
   * and stalls (or trickles) would otherwise pin the bytes, and 32 such connections held the whole 1 GiB and
   * hung every other client of the edge. A payload gets at least one whole period from its header on (at
   * most two, when an earlier payload was arriving as the period began).
   */
  private armPayloadCheck(): void {
    this.payloadCheckArmed = true;
    this.requestsTakenAtPayloadCheck = this.requestsTaken;
    if (this.payloadTimer === undefined) this.payloadTimer = setTimeout(this.payloadCheck, this.settings.payloadReceiveTimeoutMs);
    else this.payloadTimer.refresh(); // one timer per connection, re-armed: nothing allocated per request
  }

  private readonly payloadCheck = (): void => {
    this.payloadCheckArmed = false;
    const held = this.next;
    if (this.status !== 'transmission' || held === undefined || held.bytes === 0) return;
    if (this.requestsTaken !== this.requestsTakenAtPayloadCheck) return this.armPayloadCheck(); // a later payload: a whole period
    const what = `receiving the ${held.bytes}-byte payload of ${commandNames[held.request.type] ?? held.request.type} (handle ${held.request.handleHi}:${held.request.handleLo})`;
    this.abort('request payload not received in time', KeelError.timeout(what, this.settings.payloadReceiveTimeoutMs));
  };

  /**
   * Aborts the connection if it holds edge bytes for reply data and not one byte of its output has left for
   * the kernel in a whole replyDrainTimeoutMs: a client that sends READs and never reads the replies would
   * otherwise pin up to its per-connection bound, and ten such connections took the whole budget. Progress
   * is measured in bytes, not replies, so a client that reads a 128 MiB batch slowly but steadily is kept.
   * Armed when a reply's data has to wait for the client (the socket needs a drain), at most once a period.
   */
  private armReplyCheck(): void {
    this.replyCheckArmed = true;
    this.sentAtReplyCheck = bytesHandedToKernel(this.socket);
    if (this.replyTimer === undefined) this.replyTimer = setTimeout(this.replyCheck, this.settings.replyDrainTimeoutMs);
    else this.replyTimer.refresh();
  }

  private readonly replyCheck = (): void => {
    this.replyCheckArmed = false;
    if (this.status === 'closed' || this.replyBytesHeld === 0) return;
    if (bytesHandedToKernel(this.socket) !== this.sentAtReplyCheck) return this.armReplyCheck(); // the client reads: another period
    const what = `the client taking ${this.replyBytesHeld} bytes of READ replies (${this.socket.writableLength} bytes queued)`;
    this.abort('replies not read by the client in time', KeelError.timeout(what, this.settings.replyDrainTimeoutMs));
  };

  /**
   * Backpressure: stop reading the socket while at capacity or waiting for the edge's bytes, resume when
   * below. A payload whose bytes are held is always read to its end.
   */
  private updateReading(): void {
    const shouldPause =
      this.status === 'transmission' && this.next === undefined && (this.waitingForBytes !== undefined || this.atCapacity());
    if (shouldPause && !this.readingPaused) {
      this.readingPaused = true;
      this.socket.pause();
    } else if (!shouldPause && this.readingPaused && this.status === 'transmission') {
      this.readingPaused = false;
      this.socket.resume();
    }
  }

  /** `bytes`: what the request holds in the edge's budget, given back once its data is gone. */
  private dispatch(request: NbdRequest, bytes: number): void {
    const served = this.served!;
    this.inFlight += 1;
    this.inFlightBytes += payloadBytes(request);
    const error = validateRequest(request, served);
    if (error !== 0) {
      this.settings.logLimit.log(this.logger, 'warn', `nbd-request-rejected:${error}`, requestLogFields(request, error), 'nbd request rejected');
      return this.complete(request, bytes, error, undefined);
    }
    execute(served.target, request).then(
      (data) => this.complete(request, bytes, 0, data),
      (err: unknown) => {
        const nbdError = nbdErrorFor(err, request.type); // rethrows programmer errors
        this.settings.logLimit.log(this.logger, 'warn', `nbd-request-failed:${nbdError}`, { ...requestLogFields(request, nbdError), err }, 'nbd request failed in the target');
        this.complete(request, bytes, nbdError, undefined);
      },
    );
  }

  private complete(request: NbdRequest, bytes: number, error: number, data: Buffer | undefined): void {
    this.inFlight -= 1;
    this.inFlightBytes -= payloadBytes(request);
    if (this.status !== 'closed' && this.socket.writable) this.sendReply(request, bytes, error, data);
    else this.settings.edgeRequestBytes.release(bytes);
    if (this.status === 'transmission') this.pumpRequests();
    else this.finishIfDrained();
  }

  /**
   * Header and data go out in one writev, batched with the replies completing in the same turn. READ data
   * keeps its bytes in the edge's budget until it has left for the kernel: a client that does not read its
   * replies holds edge memory, and that must count.
   */
  private sendReply(request: NbdRequest, bytes: number, error: number, data: Buffer | undefined): void {
    // A short read would desynchronise the client's stream: the target broke its contract.
    assert(error !== 0 || request.type !== NBD_CMD_READ || data?.length === request.length, 'target read returned the wrong length');
    this.replies.beginFrame();
    this.socket.write(encodeSimpleReplyHeader(error, request.handleHi, request.handleLo));
    // The callback runs once the data is written, or with an error when the socket is destroyed first.
    if (error === 0 && data && data.length > 0) {
      this.replyBytesHeld += bytes;
      this.socket.write(data, () => {
        this.replyBytesHeld -= bytes;
        this.settings.edgeRequestBytes.release(bytes);
      });
      // The client has to read before this data leaves: replyCheck cuts it if its output stands still.
      if (!this.replyCheckArmed && bytes > 0 && this.socket.writableNeedDrain) this.armReplyCheck();
    } else this.settings.edgeRequestBytes.release(bytes);
    this.replies.endFrame();
  }

  private finishIfDrained(): void {
    if (this.inFlight > 0) return;
    if (this.status === 'draining') {
      // End after the queued replies; keep reading (and dropping) so the peer's FIN is seen and 'close'
      // follows, but do not wait for it forever.
      this.socket.resume();
      this.socket.end();
      this.lingerTimer ??= setTimeout(() => this.abort('peer kept the connection open after our FIN'), this.settings.closeLingerMs);
      return;
    }
    if (this.status !== 'closed' || this.targetClosing) return;
    this.targetClosing = true;
    const target = this.served?.target;
    if (!target) {
      void (this.opening ?? Promise.resolve()).then(() => this.resolveClosed());
      return;
    }
    void closeQuietly(target, this.logger).then(() => {
      this.logger.debug({ exportName: this.served?.exportName }, 'nbd export closed');
      this.resolveClosed();
    });
  }
}

/**
 * Bytes of the socket's output that have left for the kernel, which only grows. libuv's write queue shows
 * a large writev (up to writevFramesMax replies) being taken bit by bit, where Node's own counters move only
 * when the whole writev is done; without those internals, the bytes of writes done.
 */
function bytesHandedToKernel(socket: Socket): number {
  const internals = socket as unknown as { _bytesDispatched?: unknown; _handle?: { writeQueueSize?: unknown } | null };
  const dispatched = internals._bytesDispatched;
  const queued = internals._handle?.writeQueueSize;
  if (typeof dispatched === 'number' && typeof queued === 'number') return dispatched - queued;
  return socket.bytesWritten - socket.writableLength;
}

function payloadBytes(request: NbdRequest): number {
  return request.type === NBD_CMD_READ || request.type === NBD_CMD_WRITE ? request.length : 0;
}

/**
 * What a request takes from the edge's budget: its payload, except for a READ above the maximum, which is
 * refused with EINVAL and never gets data (asking for its 4 GiB would wait forever).
 */
function budgetBytes(request: NbdRequest, requestBytesMax: number): number {
  const bytes = payloadBytes(request);
  return bytes <= requestBytesMax ? bytes : 0;
}

interface HeldRequest {
  request: NbdRequest;
  bytes: number;
}

const emptyBuffer = Buffer.alloc(0);

async function execute(target: OpenBlockTarget, request: NbdRequest): Promise<Buffer | undefined> {
  const fua = (request.flags & NBD_CMD_FLAG_FUA) !== 0;
  const { offset, length } = request;
  switch (request.type) {
    case NBD_CMD_READ:
      return length === 0 ? emptyBuffer : target.read(offset, length);
    case NBD_CMD_WRITE:
      if (length > 0) await target.write(offset, request.payload!, fua);
      return undefined;
    case NBD_CMD_FLUSH:
      await target.flush();
      return undefined;
    case NBD_CMD_TRIM:
      if (length > 0) await target.trim(offset, length, fua);
      return undefined;
    case NBD_CMD_WRITE_ZEROES:
      // NBD_CMD_FLAG_NO_HOLE needs nothing: zeroed clusters read as zeros whether mapped or not.
      if (length > 0) await target.writeZeroes(offset, length, fua);
      return undefined;
    default:
      throw new Error(`validateRequest let through command ${request.type}`);
  }
}

function requestLogFields(request: NbdRequest, nbdError: number): Record<string, unknown> {
  return {
    command: commandNames[request.type] ?? request.type,
    flags: request.flags,
    offset: request.offset,
    length: request.length,
    nbdError,
  };
}

async function closeQuietly(target: OpenBlockTarget, logger: Logger): Promise<void> {
  try {
    await target.close();
  } catch (err) {
    if (!isKeelError(err)) throw err;
    logger.warn({ err }, 'closing the export failed');
  }
}

/** NBD_OPT_GO's error text: what stopped the open (clients print it), bounded well below the spec's 4096 bytes. */
function unavailableMessage(exportName: string, failure: KeelError | undefined): string {
  if (failure === undefined) return `export '${exportName}' is not available`;
  const lastError = typeof failure.details.lastError === 'string' ? ` (last: ${failure.details.lastError})` : '';
  return `export '${exportName}' is not available: ${failure.message}${lastError}`.slice(0, 1024);
}
