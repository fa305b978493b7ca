/**
 * A raw TCP socket speaking just enough NBD to misbehave on purpose: tests write arbitrary bytes and read
 * exact replies, with timeouts so a server that fails to answer fails the test instead of hanging it.
 */
import net from 'node:net';
import { pino, type Logger } from 'pino';
import { ByteQueue } from '../../edge/byte-queue.ts';
import {
  type OptionReply,
  encodeClientFlags,
  encodeInfoRequest,
  encodeOption,
  takeOptionReply,
} from '../../edge/nbd-handshake.ts';
import {
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_GREETING_BYTES,
  NBD_OPT_GO,
  NBD_REP_ACK,
  NBD_REP_INFO,
  NBD_REQUEST_HEADER_BYTES,
  NBD_SIMPLE_REPLY_HEADER_BYTES,
} from '../../edge/nbd-protocol.ts';
import { type SimpleReplyHeader, encodeRequestHeader, parseSimpleReplyHeader } from '../../edge/nbd-requests.ts';

const readTimeoutMs = 3_000;

export class RawNbdSocket {
  private readonly queue = new ByteQueue();
  private waiter: (() => void) | undefined;
  isClosed = false;
  readonly closed: Promise<void>;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.queue.push(chunk);
      this.wake();
    });
    socket.on('error', () => {});
    this.closed = new Promise((resolve) =>
      socket.on('close', () => {
        this.isClosed = true;
        this.wake();
        resolve();
      }),
    );
  }

  /** With allowHalfOpen the socket keeps its side open after the server's FIN, like a sloppy client. */
  static async connect(port: number, options: { allowHalfOpen?: boolean } = {}): Promise<RawNbdSocket> {
    const socket = net.connect({ host: '127.0.0.1', port, noDelay: true, allowHalfOpen: options.allowHalfOpen ?? false });
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    return new RawNbdSocket(socket);
  }

  /** Greeting, client flags, then NBD_OPT_GO for `exportName`; returns once in transmission. */
  static async inTransmission(port: number, exportName: string, options: { allowHalfOpen?: boolean } = {}): Promise<RawNbdSocket> {
    const raw = await RawNbdSocket.connect(port, options);
    await raw.read(NBD_GREETING_BYTES);
    raw.write(encodeClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES));
    raw.write(encodeOption(NBD_OPT_GO, encodeInfoRequest(exportName, [])));
    for (;;) {
      const reply = await raw.readOptionReply();
      if (reply.replyType === NBD_REP_ACK) return raw;
      if (reply.replyType !== NBD_REP_INFO) throw new Error(`GO failed with reply type ${reply.replyType}`);
    }
  }

  /** Stops reading from the kernel: the server's replies pile up in the socket buffers. */
  stopReading(): void {
    this.socket.pause();
  }

  write(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  async read(count: number): Promise<Buffer> {
    await this.until(() => this.queue.length >= count, `${count} bytes`);
    return Buffer.from(this.queue.take(count));
  }

  async readOptionReply(): Promise<OptionReply> {
    let reply: OptionReply | null = null;
    await this.until(() => (reply = takeOptionReply(this.queue, 1 << 20)) !== null, 'an option reply');
    return reply!;
  }

  request(type: number, options: { flags?: number; handle?: number; offset?: number; length?: number; payload?: Buffer }): void {
    const header = Buffer.alloc(NBD_REQUEST_HEADER_BYTES);
    const length = options.length ?? options.payload?.length ?? 0;
    encodeRequestHeader(header, 0, {
      type,
      flags: options.flags ?? 0,
      handleHi: 0,
      handleLo: options.handle ?? 1,
      offset: options.offset ?? 0,
      length,
    });
    this.write(options.payload ? Buffer.concat([header, options.payload]) : header);
  }

  async readSimpleReply(dataBytes = 0): Promise<SimpleReplyHeader & { data: Buffer }> {
    const header = parseSimpleReplyHeader(await this.read(NBD_SIMPLE_REPLY_HEADER_BYTES), 0);
    const data = header.error === 0 && dataBytes > 0 ? await this.read(dataBytes) : Buffer.alloc(0);
    return { ...header, data };
  }

  async expectClosed(): Promise<void> {
    await this.until(() => this.isClosed, 'the server to close the connection');
  }

  get bufferedBytes(): number {
    return this.queue.length;
  }

  destroy(): void {
    this.socket.destroy();
  }

  private wake(): void {
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.();
  }

  private async until(condition: () => boolean, what: string): Promise<void> {
    const deadline = Date.now() + readTimeoutMs;
    while (!condition()) {
      if (this.isClosed && !condition()) throw new Error(`connection closed while waiting for ${what}`);
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw new Error(`timed out waiting for ${what}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, remaining);
        this.waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }
}

/** A pino logger whose JSON lines land in `lines`, so tests can assert that bad input was logged. */
export function capturingLogger(): { logger: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const logger = pino({ level: 'debug' }, { write: (line: string) => lines.push(JSON.parse(line)) });
  return { logger, lines };
}
