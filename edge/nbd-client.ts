/**
 * A TypeScript NBD client for programs and tests: fixed-newstyle handshake (NBD_OPT_GO, falling back to
 * NBD_OPT_EXPORT_NAME), then read/write/flush/trim/writeZeroes with many requests in flight, replies
 * matched by handle. Simple replies only. Protocol: docs/nbd-protocol.md.
 *
 *   const client = await NbdClient.connect('nbd://127.0.0.1:10809/vol1');
 *   await client.write(0, Buffer.alloc(4096, 1), { fua: true });
 *   const data = await client.read(0, 4096);
 *   await client.close();
 */
import net from 'node:net';
import { KeelError, isKeelError } from '../shared/errors.ts';
import { limits } from '../shared/limits.ts';
import { type Logger, createLogger } from '../shared/logger.ts';
import { ByteQueue } from './byte-queue.ts';
import {
  type BlockSizeConstraints,
  type OptionReply,
  encodeClientFlags,
  encodeInfoRequest,
  encodeOption,
  parseExportNameReply,
  parseGreeting,
  parseInfoReply,
  parseServerEntry,
  takeOptionReply,
} from './nbd-handshake.ts';
import {
  NBD_CMD_DISC,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EXPORT_NAME_REPLY_BYTES,
  NBD_EXPORT_NAME_ZEROES_BYTES,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_GREETING_BYTES,
  NBD_INFO_BLOCK_SIZE,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_LIST,
  NBD_REP_ACK,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_SERVER,
  NBD_REQUEST_HEADER_BYTES,
  NBD_SIMPLE_REPLY_HEADER_BYTES,
  isOptionReplyError,
} from './nbd-protocol.ts';
import { encodeRequestHeader, keelErrorFromNbd, parseSimpleReplyHeader } from './nbd-requests.ts';

export interface NbdClientOptions {
  host: string;
  port: number;
  /** Empty string asks for the server's default export. */
  exportName?: string;
  logger?: Logger;
  /** Connect plus handshake must finish within this. */
  handshakeTimeoutMs?: number;
  /** Requests on the wire at once; more callers wait for a slot. */
  requestsInFlightMax?: number;
}

export interface NbdAddress {
  host: string;
  port: number;
  exportName: string;
}

/** connecting -> handshaking -> ready -> closing -> closed; any state -> closed when the socket goes. */
export type NbdClientStatus = 'connecting' | 'handshaking' | 'ready' | 'closing' | 'closed';

const NBD_DEFAULT_PORT = 10809;
/** Option replies larger than this are refused (a list of exports or an error message). */
const OPTION_REPLY_BYTES_MAX = limits.nbdOptionBytesMax;
/** Without NBD_INFO_BLOCK_SIZE the spec tells clients to stay within 2^25 bytes per request. */
const DEFAULT_MAXIMUM_BLOCK_BYTES = 2 ** 25;

interface PendingRequest {
  type: number;
  offset: number;
  length: number;
  resolve: (data: Buffer | undefined) => void;
  reject: (err: KeelError) => void;
}

/** Parses `nbd://host[:port]/exportname` (port 10809 by default). */
export function parseNbdUri(uri: string): NbdAddress {
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    throw KeelError.badArgument(`'${uri}' is not a URI (expected nbd://host:port/export)`);
  }
  if (url.protocol !== 'nbd:') throw KeelError.badArgument(`'${uri}' is not an nbd:// URI`);
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  return { host, port: url.port ? Number(url.port) : NBD_DEFAULT_PORT, exportName: decodeURIComponent(url.pathname.replace(/^\//, '')) };
}

export class NbdClient {
  private status: NbdClientStatus = 'connecting';
  private readonly incoming = new ByteQueue();
  private readonly pending = new Map<number, PendingRequest>();
  private readonly slotWaiters: Array<() => void> = [];
  /** Callers waiting for a slot or about to send: close() waits for them too. */
  private queuedRequests = 0;
  private readonly idleWaiters: Array<() => void> = [];
  private nextHandle = 1;
  private corked = false;
  private dataWaiter: (() => void) | undefined;
  private closeError: KeelError | undefined;
  private resolveClosed!: () => void;
  /** Resolves when the socket is gone. */
  readonly closed: Promise<void> = new Promise((resolve) => (this.resolveClosed = resolve));

  exportName = '';
  sizeBytes = 0;
  transmissionFlags = 0;
  blockSize: BlockSizeConstraints = { minimumBytes: 1, preferredBytes: 4096, maximumBytes: DEFAULT_MAXIMUM_BLOCK_BYTES };

  private constructor(
    private readonly socket: net.Socket,
    private readonly peer: string,
    private readonly logger: Logger,
    private readonly requestsInFlightMax: number,
  ) {
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err) => {
      this.closeError ??= KeelError.io(`NBD connection to ${peer} failed`, err);
      this.logger.debug({ err }, 'nbd client socket error');
    });
    socket.on('close', () => this.onSocketClosed());
  }

  /** Connects and negotiates an export, from options or an nbd:// URI. */
  static async connect(target: NbdClientOptions | string, extra: { logger?: Logger } = {}): Promise<NbdClient> {
    const options: NbdClientOptions = typeof target === 'string' ? { ...parseNbdUri(target), ...extra } : target;
    const client = await NbdClient.open(options);
    try {
      await client.withTimeout(client.negotiateExport(options.exportName ?? ''));
    } catch (err) {
      client.destroy();
      throw err;
    }
    return client;
  }

  /** The server's exports (NBD_OPT_LIST), then a soft disconnect (NBD_OPT_ABORT). */
  static async list(options: Omit<NbdClientOptions, 'exportName'>): Promise<Array<{ name: string; description: string }>> {
    const client = await NbdClient.open(options);
    try {
      return await client.withTimeout(client.listExports());
    } finally {
      client.destroy();
    }
  }

  private static async open(options: NbdClientOptions): Promise<NbdClient> {
    const logger = (options.logger ?? createLogger('nbd-client')).child({ peer: `${options.host}:${options.port}` });
    const socket = net.connect({ host: options.host, port: options.port, noDelay: true });
    const client = new NbdClient(
      socket,
      `${options.host}:${options.port}`,
      logger,
      options.requestsInFlightMax ?? limits.nbdRequestsInFlightMax,
    );
    client.handshakeTimeoutMs = options.handshakeTimeoutMs ?? limits.nbdHandshakeTimeoutMs;
    await client.withTimeout(
      new Promise<void>((resolve, reject) => {
        socket.once('connect', resolve);
        socket.once('error', (err) => reject(KeelError.io(`cannot connect to NBD server ${options.host}:${options.port}`, err)));
      }),
    ).catch((err) => {
      client.destroy();
      throw err;
    });
    client.setStatus('handshaking');
    return client;
  }

  private handshakeTimeoutMs: number = limits.nbdHandshakeTimeoutMs;

  private async withTimeout<T>(work: Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        reject(KeelError.timeout(`NBD handshake with ${this.peer}`, this.handshakeTimeoutMs));
        this.destroy();
      }, this.handshakeTimeoutMs);
    });
    try {
      return await Promise.race([work, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  get currentStatus(): NbdClientStatus {
    return this.status;
  }

  get readOnly(): boolean {
    return (this.transmissionFlags & NBD_FLAG_READ_ONLY) !== 0;
  }

  get requestsInFlight(): number {
    return this.pending.size;
  }

  // ------------------------------------------------------------------------------------------ handshake

  private async negotiateExport(exportName: string): Promise<void> {
    const handshakeFlags = await this.readGreeting();
    const noZeroes = (handshakeFlags & NBD_FLAG_NO_ZEROES) !== 0;
    this.socket.write(encodeClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | (noZeroes ? NBD_FLAG_C_NO_ZEROES : 0)));
    this.socket.write(encodeOption(NBD_OPT_GO, encodeInfoRequest(exportName, [NBD_INFO_BLOCK_SIZE])));
    let sawExportInfo = false;
    for (;;) {
      const reply = await this.readOptionReply();
      if (reply.replyType === NBD_REP_INFO) {
        sawExportInfo = this.applyInfo(reply.data) || sawExportInfo;
      } else if (reply.replyType === NBD_REP_ACK) {
        if (!sawExportInfo) throw KeelError.protocol('NBD_OPT_GO succeeded without NBD_INFO_EXPORT');
        break;
      } else if (reply.replyType === NBD_REP_ERR_UNSUP) {
        await this.negotiateWithExportName(exportName, noZeroes);
        break;
      } else {
        throw optionError(reply, exportName);
      }
    }
    this.exportName = exportName;
    this.setStatus('ready');
  }

  /** Returns true for NBD_INFO_EXPORT. */
  private applyInfo(data: Buffer): boolean {
    const info = parseInfoReply(data);
    if (info.type === 'export') {
      this.sizeBytes = info.sizeBytes;
      this.transmissionFlags = info.transmissionFlags;
      return true;
    }
    if (info.type === 'block_size') {
      const { minimumBytes, preferredBytes, maximumBytes } = info;
      this.blockSize = { minimumBytes, preferredBytes, maximumBytes };
    }
    return false;
  }

  private async negotiateWithExportName(exportName: string, noZeroes: boolean): Promise<void> {
    this.socket.write(encodeOption(NBD_OPT_EXPORT_NAME, Buffer.from(exportName, 'utf8')));
    const replyBytes = NBD_EXPORT_NAME_REPLY_BYTES + (noZeroes ? 0 : NBD_EXPORT_NAME_ZEROES_BYTES);
    await this.waitForBytes(replyBytes);
    const reply = parseExportNameReply(this.incoming.take(replyBytes));
    this.sizeBytes = reply.sizeBytes;
    this.transmissionFlags = reply.transmissionFlags;
  }

  private async listExports(): Promise<Array<{ name: string; description: string }>> {
    const handshakeFlags = await this.readGreeting();
    const noZeroes = (handshakeFlags & NBD_FLAG_NO_ZEROES) !== 0;
    this.socket.write(encodeClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | (noZeroes ? NBD_FLAG_C_NO_ZEROES : 0)));
    this.socket.write(encodeOption(NBD_OPT_LIST));
    const exports: Array<{ name: string; description: string }> = [];
    for (;;) {
      const reply = await this.readOptionReply();
      if (reply.replyType === NBD_REP_SERVER) exports.push(parseServerEntry(reply.data));
      else if (reply.replyType === NBD_REP_ACK) break;
      else throw optionError(reply, '');
    }
    this.socket.write(encodeOption(NBD_OPT_ABORT));
    return exports;
  }

  private async readGreeting(): Promise<number> {
    await this.waitForBytes(NBD_GREETING_BYTES);
    const handshakeFlags = parseGreeting(this.incoming.take(NBD_GREETING_BYTES));
    if ((handshakeFlags & NBD_FLAG_FIXED_NEWSTYLE) === 0)
      throw KeelError.protocol(`NBD server ${this.peer} does not support fixed newstyle negotiation`);
    return handshakeFlags;
  }

  private async readOptionReply(): Promise<OptionReply> {
    for (;;) {
      const reply = takeOptionReply(this.incoming, OPTION_REPLY_BYTES_MAX);
      if (reply) return reply;
      await this.waitForData();
    }
  }

  private async waitForBytes(count: number): Promise<void> {
    while (this.incoming.length < count) await this.waitForData();
  }

  private waitForData(): Promise<void> {
    if (this.status === 'closed') return Promise.reject(this.closedError());
    return new Promise<void>((resolve) => (this.dataWaiter = resolve)).then(() => {
      if (this.status === 'closed' && this.incoming.length === 0) throw this.closedError();
    });
  }

  // --------------------------------------------------------------------------------------- transmission

  /** Reads `length` bytes at `offset`; requests above the maximum block size are split. */
  async read(offset: number, length: number): Promise<Buffer> {
    const max = this.blockSize.maximumBytes;
    if (length <= max) return (await this.request(NBD_CMD_READ, 0, offset, length)) ?? Buffer.alloc(0);
    const parts = await Promise.all(
      pieces(offset, length, max).map(([o, l]) => this.request(NBD_CMD_READ, 0, o, l) as Promise<Buffer>),
    );
    return Buffer.concat(parts, length);
  }

  async write(offset: number, data: Buffer, options: { fua?: boolean } = {}): Promise<void> {
    const flags = this.fuaFlag(options.fua);
    const max = this.blockSize.maximumBytes;
    await Promise.all(
      pieces(offset, data.length, max).map(([o, l]) =>
        this.request(NBD_CMD_WRITE, flags, o, l, data.subarray(o - offset, o - offset + l)),
      ),
    );
  }

  async flush(): Promise<void> {
    this.requireFlag(NBD_FLAG_SEND_FLUSH, 'flush');
    await this.request(NBD_CMD_FLUSH, 0, 0, 0);
  }

  async trim(offset: number, length: number, options: { fua?: boolean } = {}): Promise<void> {
    this.requireFlag(NBD_FLAG_SEND_TRIM, 'trim');
    const flags = this.fuaFlag(options.fua);
    await Promise.all(pieces(offset, length, this.blockSize.maximumBytes).map(([o, l]) => this.request(NBD_CMD_TRIM, flags, o, l)));
  }

  async writeZeroes(offset: number, length: number, options: { fua?: boolean; noHole?: boolean } = {}): Promise<void> {
    this.requireFlag(NBD_FLAG_SEND_WRITE_ZEROES, 'write zeroes');
    const flags = this.fuaFlag(options.fua) | (options.noHole ? NBD_CMD_FLAG_NO_HOLE : 0);
    await Promise.all(
      pieces(offset, length, this.blockSize.maximumBytes).map(([o, l]) => this.request(NBD_CMD_WRITE_ZEROES, flags, o, l)),
    );
  }

  /** Soft disconnect: waits for requests in flight, sends NBD_CMD_DISC, then closes the socket. */
  async close(): Promise<void> {
    if (this.status === 'closed' || this.status === 'closing') return this.closed;
    this.setStatus('closing');
    await this.whenIdle();
    if (this.socket.writable) {
      const header = Buffer.allocUnsafe(NBD_REQUEST_HEADER_BYTES);
      encodeRequestHeader(header, 0, { type: NBD_CMD_DISC, flags: 0, handleHi: 0, handleLo: 0, offset: 0, length: 0 });
      this.socket.end(header);
    }
    return this.closed;
  }

  /** Hard disconnect: requests in flight fail with CONNECTION_CLOSED. */
  destroy(): void {
    this.socket.destroy();
  }

  private fuaFlag(fua: boolean | undefined): number {
    if (!fua) return 0;
    this.requireFlag(NBD_FLAG_SEND_FUA, 'FUA');
    return NBD_CMD_FLAG_FUA;
  }

  private requireFlag(flag: number, what: string): void {
    if ((this.transmissionFlags & flag) === 0) throw KeelError.badArgument(`NBD server ${this.peer} does not support ${what}`);
  }

  private async request(type: number, flags: number, offset: number, length: number, payload?: Buffer): Promise<Buffer | undefined> {
    if (this.status !== 'ready') throw this.status === 'closed' ? this.closedError() : KeelError.closed(`NBD client for ${this.peer}`);
    if (this.pending.size >= this.requestsInFlightMax) {
      this.queuedRequests += 1;
      try {
        while (!this.isClosed() && this.pending.size >= this.requestsInFlightMax)
          await new Promise<void>((resolve) => this.slotWaiters.push(resolve));
      } finally {
        this.queuedRequests -= 1;
      }
      if (this.isClosed()) throw this.closedError();
    }
    const handleLo = this.allocateHandle();
    const header = Buffer.allocUnsafe(NBD_REQUEST_HEADER_BYTES);
    encodeRequestHeader(header, 0, { type, flags, handleHi: 0, handleLo, offset, length });
    const reply = new Promise<Buffer | undefined>((resolve, reject) => {
      this.pending.set(handleLo, { type, offset, length, resolve, reject });
    });
    this.send(header, payload);
    return reply;
  }

  private allocateHandle(): number {
    // Handles wrap at 2^32; one still in flight is skipped (at most requestsInFlightMax are).
    do this.nextHandle = (this.nextHandle + 1) >>> 0;
    while (this.pending.has(this.nextHandle));
    return this.nextHandle;
  }

  /** Header and payload in one writev; requests issued in the same tick share a syscall. */
  private send(header: Buffer, payload: Buffer | undefined): void {
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(this.uncork);
    }
    this.socket.write(header);
    if (payload && payload.length > 0) this.socket.write(payload);
  }

  private readonly uncork = (): void => {
    this.corked = false;
    this.socket.uncork();
  };

  private onData(chunk: Buffer): void {
    this.incoming.push(chunk);
    if (this.status === 'ready' || this.status === 'closing') this.parseReplies();
    const waiter = this.dataWaiter;
    this.dataWaiter = undefined;
    waiter?.();
  }

  private parseReplies(): void {
    try {
      while (this.incoming.length >= NBD_SIMPLE_REPLY_HEADER_BYTES) {
        const { buffer, offset } = this.incoming.peekHeader(NBD_SIMPLE_REPLY_HEADER_BYTES);
        const header = parseSimpleReplyHeader(buffer, offset);
        const request = header.handleHi === 0 ? this.pending.get(header.handleLo) : undefined;
        if (!request) throw KeelError.protocol(`NBD reply for unknown handle ${header.handleHi}:${header.handleLo}`);
        const dataBytes = header.error === 0 && request.type === NBD_CMD_READ ? request.length : 0;
        if (this.incoming.length < NBD_SIMPLE_REPLY_HEADER_BYTES + dataBytes) return;
        this.incoming.skip(NBD_SIMPLE_REPLY_HEADER_BYTES);
        const data = dataBytes > 0 ? this.incoming.take(dataBytes) : undefined;
        this.pending.delete(header.handleLo);
        if (header.error === 0) request.resolve(data);
        else request.reject(keelErrorFromNbd(header.error, request.type, request.offset, request.length, this.sizeBytes));
        this.slotWaiters.shift()?.();
        this.notifyIfIdle();
      }
    } catch (err) {
      if (!isKeelError(err)) throw err;
      this.logger.warn({ err }, 'bad reply from NBD server; disconnecting');
      this.closeError = err;
      this.destroy();
    }
  }

  /** A method, not a field comparison, because the status changes across awaits. */
  private isClosed(): boolean {
    return this.status === 'closed';
  }

  private whenIdle(): Promise<void> {
    if (this.pending.size === 0 && this.queuedRequests === 0) return Promise.resolve();
    return new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }

  private notifyIfIdle(): void {
    if (this.pending.size > 0 || this.queuedRequests > 0) return;
    for (const waiter of this.idleWaiters.splice(0)) waiter();
  }

  private closedError(): KeelError {
    return this.closeError ?? KeelError.connectionClosed(this.peer);
  }

  private onSocketClosed(): void {
    this.setStatus('closed');
    for (const request of this.pending.values()) request.reject(this.closedError());
    this.pending.clear();
    for (const waiter of this.slotWaiters.splice(0)) waiter();
    for (const waiter of this.idleWaiters.splice(0)) waiter();
    const waiter = this.dataWaiter;
    this.dataWaiter = undefined;
    waiter?.();
    this.resolveClosed();
  }

  private setStatus(next: NbdClientStatus): void {
    if (next === this.status) return;
    this.logger.debug({ from: this.status, to: next, exportName: this.exportName }, 'nbd client status');
    this.status = next;
  }
}

function optionError(reply: OptionReply, exportName: string): KeelError {
  const message = reply.data.toString('utf8');
  if (reply.replyType === NBD_REP_ERR_UNKNOWN) return KeelError.volumeNotFound(exportName);
  if (isOptionReplyError(reply.replyType))
    return KeelError.protocol(`NBD server refused option ${reply.option}: reply 0x${reply.replyType.toString(16)} ${message}`);
  return KeelError.protocol(`unexpected NBD option reply type ${reply.replyType}`);
}

/** [offset, length] pieces of at most `max` bytes covering the range (one empty piece for length 0). */
function pieces(offset: number, length: number, max: number): Array<[number, number]> {
  if (length <= max) return [[offset, length]];
  const result: Array<[number, number]> = [];
  for (let done = 0; done < length; done += max) result.push([offset + done, Math.min(max, length - done)]);
  return result;
}
