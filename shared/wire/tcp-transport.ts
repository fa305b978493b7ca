/**
 * The wire protocol's transport over TCP (node:net). Nagle is off (small request headers must not wait
 * for an ACK), and a frame's buffers go out in one writev via cork/uncork without being joined.
 * See transport.ts for the contract and docs/wire-protocol.md for the protocol above it.
 */
import net from 'node:net';
import { KeelError } from '../errors.ts';
import { limits } from '../limits.ts';
import { WritevBatch } from '../writev-batch.ts';
import type { Transport, TransportConnection, TransportListener } from './transport.ts';

export interface TcpTransportOptions {
  /** Bytes queued in the socket before write() asks the caller to wait. */
  sendQueueBytesMax?: number;
  closeLingerMs?: number;
}

/** Splits "host:port" or "[v6]:port". Throws BAD_ARGUMENT on anything else. */
export function parseAddress(address: string): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(address);
  const port = match ? Number(match[3]) : NaN;
  if (!match || port > 65535) throw KeelError.badArgument(`'${address}' is not a host:port address`);
  return { host: match[1] ?? match[2]!, port };
}

export function formatAddress(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

class TcpConnection implements TransportConnection {
  readonly remoteAddress: string;
  private readonly socket: net.Socket;
  private readonly sendQueueBytesMax: number;
  private readonly closeLingerMs: number;
  private readonly batch: WritevBatch;
  private readonly dataListeners: Array<(chunk: Buffer) => void> = [];
  private undelivered: Buffer | undefined;
  /** Set for connections this transport dialled (connect): their bytes arrive through deliver(), not 'data'. */
  private readonly readsIntoBuffer: boolean;

  constructor(socket: net.Socket, options: Required<TcpTransportOptions>, readsIntoBuffer = false) {
    this.socket = socket;
    this.readsIntoBuffer = readsIntoBuffer;
    this.batch = new WritevBatch(socket, limits.writevFramesMax);
    this.sendQueueBytesMax = options.sendQueueBytesMax;
    this.closeLingerMs = options.closeLingerMs;
    this.remoteAddress = formatAddress(socket.remoteAddress ?? 'unknown', socket.remotePort ?? 0);
    socket.setNoDelay(true);
    // A dead peer must surface as a close, not as silence forever; request timeouts cover the rest.
    socket.setKeepAlive(true, 1_000);
    // Errors are reported through onClose; without a listener they would crash the process.
    socket.on('error', () => {});
  }

  write(buffers: readonly Buffer[], onWritten?: () => void): boolean {
    if (this.socket.destroyed || this.socket.writableEnded) {
      onWritten?.();
      return false;
    }
    // Frames written during one turn of the event loop leave in few writevs: at queue depth 32 that is one
    // syscall for several requests instead of one each (the profile showed writev as the edge's top cost).
    this.batch.beginFrame();
    const last = buffers.length - 1;
    for (let i = 0; i < last; i++) this.socket.write(buffers[i]!);
    // Node calls back once the bytes are written, or with an error when the socket is destroyed first.
    if (onWritten === undefined) this.socket.write(buffers[last]!);
    else this.socket.write(buffers[last]!, () => onWritten());
    this.batch.endFrame();
    return this.socket.writableLength < this.sendQueueBytesMax;
  }

  flush(): void {
    this.batch.flush();
  }

  onData(listener: (chunk: Buffer) => void): void {
    if (!this.readsIntoBuffer) {
      this.socket.on('data', listener);
      return;
    }
    this.dataListeners.push(listener);
    if (this.undelivered === undefined) return;
    // The read that came before the first listener paused the socket, as a 'data' stream without one would.
    listener(this.undelivered);
    this.undelivered = undefined;
    this.socket.resume();
  }

  /** Where the next read lands, when the listener says (readInto). */
  readTarget: () => Buffer | undefined = () => undefined;

  readInto(provider: () => Buffer | undefined): void {
    this.readTarget = provider;
  }

  /** The bytes a read put in memory the listeners may keep (a copy, or their readInto target). False (stop reading) while nobody listens yet. */
  deliver(chunk: Buffer): boolean {
    if (this.dataListeners.length === 0) {
      this.undelivered = chunk;
      return false;
    }
    for (const listener of this.dataListeners) listener(chunk);
    return true;
  }

  onDrain(listener: () => void): void {
    this.socket.on('drain', listener);
  }

  onClose(listener: (error?: Error) => void): void {
    // A dialled connection reads on its own (no 'data' listener needed), so it may be gone already.
    if (this.socket.closed) {
      queueMicrotask(() => listener(this.socket.errored ?? undefined));
      return;
    }
    let error: Error | undefined;
    this.socket.on('error', (err) => (error = err));
    this.socket.once('close', () => listener(error));
  }

  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }

  close(): void {
    if (this.socket.destroyed) return;
    this.socket.end();
    setTimeout(() => this.socket.destroy(), this.closeLingerMs).unref();
  }

  destroy(error?: Error): void {
    this.socket.destroy(error);
  }
}

class TcpListener implements TransportListener {
  readonly address: string;
  private readonly server: net.Server;

  constructor(server: net.Server) {
    this.server = server;
    const bound = server.address() as net.AddressInfo;
    this.address = formatAddress(bound.address, bound.port);
  }

  async close(): Promise<void> {
    // net.Server#close only calls back once every accepted socket is gone; their owners close those, so
    // resolve as soon as it stops accepting.
    this.server.close();
  }
}

/** The buffer a dialled connection reads into when its listener names no place (readInto). */
const readBufferBytes = 64 * 1024;

export class TcpTransport implements Transport {
  private readonly options: Required<TcpTransportOptions>;

  constructor(options: TcpTransportOptions = {}) {
    this.options = {
      sendQueueBytesMax: options.sendQueueBytesMax ?? limits.wireSendQueueBytesMax,
      closeLingerMs: options.closeLingerMs ?? limits.wireCloseLingerMs,
    };
  }

  connect(address: string, options: { timeoutMs?: number } = {}): Promise<TransportConnection> {
    const { host, port } = parseAddress(address);
    const timeoutMs = options.timeoutMs ?? limits.wireConnectTimeoutMs;
    return new Promise((resolve, reject) => {
      let connection: TcpConnection | undefined;
      // Node allocates a zero-filled buffer of each read's size and copies the bytes into it. Reading into
      // one buffer per connection and copying out skips the allocator's memset (3% of the edge's CPU); the
      // rest of a large frame is read straight into the frame's own buffer (readInto), without that copy.
      const readBuffer = Buffer.allocUnsafe(readBufferBytes);
      const onread = {
        buffer: (): Buffer => connection?.readTarget() ?? readBuffer,
        callback: (bytes: number, buffer: Uint8Array): boolean =>
          connection!.deliver(buffer === readBuffer ? copyOut(readBuffer, bytes) : (buffer as Buffer).subarray(0, bytes)), // false pauses
      };
      const socket = net.connect({ host, port, onread });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(KeelError.timeout(`connecting to ${address}`, timeoutMs));
      }, timeoutMs);
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.removeAllListeners('error');
        connection = new TcpConnection(socket, this.options, true);
        resolve(connection);
      });
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(KeelError.io(`cannot connect to ${address}: ${err.message}`, err, { address }));
      });
    });
  }

  listen(address: string, onConnection: (connection: TransportConnection) => void): Promise<TransportListener> {
    const { host, port } = parseAddress(address);
    return new Promise((resolve, reject) => {
      const server = net.createServer((socket) => onConnection(new TcpConnection(socket, this.options)));
      server.once('error', (err) => reject(KeelError.io(`cannot listen on ${address}: ${err.message}`, err, { address })));
      server.listen({ host, port }, () => {
        server.removeAllListeners('error');
        // A failing accept must not crash the router; the listener keeps serving.
        server.on('error', () => {});
        resolve(new TcpListener(server));
      });
    });
  }
}

/** The first `bytes` of the connection's read buffer, in memory of their own: frames and payloads outlive the read. */
function copyOut(readBuffer: Buffer, bytes: number): Buffer {
  const chunk = Buffer.allocUnsafe(bytes);
  readBuffer.copy(chunk, 0, 0, bytes);
  return chunk;
}
