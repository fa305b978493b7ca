/**
 * The byte-stream transport under the wire protocol (docs/wire-protocol.md). TCP implements it today
 * (tcp-transport.ts); an RDMA addon can implement the same interface later without touching the RPC
 * layer. A transport moves ordered bytes; framing, handshake and request ids live above it.
 */

export interface TransportConnection {
  /** "host:port" of the peer, for logs and errors. */
  readonly remoteAddress: string;
  /**
   * Queues the buffers to be sent in order as one unit (writev), without copying them. Returns false
   * once the bytes queued for sending exceed the transport's bound: the caller should then hold further
   * writes until onDrain fires. Writes after close are dropped.
   * `onWritten` runs once the transport no longer reads the buffers (sent, or dropped by a close), so
   * their memory may be reused.
   */
  write(buffers: readonly Buffer[], onWritten?: () => void): boolean;
  /**
   * Sends what earlier writes of this turn hold back for batching now. For a caller that already
   * batches its own frames, where waiting for the end of the turn only adds latency.
   */
  flush(): void;
  /** Received bytes, in order. Chunks may split or join frames arbitrarily. */
  onData(listener: (chunk: Buffer) => void): void;
  /**
   * For a transport that can read into given memory (TCP connections it dialled): before each read it asks
   * `provider` where the bytes may land (undefined: anywhere of its choosing). They still arrive through
   * onData, as a view of that memory.
   */
  readInto?(provider: () => Buffer | undefined): void;
  /** The send queue went back below its bound after write() returned false. */
  onDrain(listener: () => void): void;
  /** Fires once when the connection is gone, for any reason; `error` is set if it failed. */
  onClose(listener: (error?: Error) => void): void;
  /** Stop delivering data (backpressure on the peer) until resume(). */
  pause(): void;
  resume(): void;
  /** Sends what is queued, then closes; forces the close if the peer lingers (limits.wireCloseLingerMs). */
  close(): void;
  /** Closes at once, dropping queued bytes. */
  destroy(error?: Error): void;
}

export interface TransportListener {
  /** The bound address "host:port" (the real port when listening on port 0). */
  readonly address: string;
  /** Stops accepting connections. Existing connections are left to their owners. */
  close(): Promise<void>;
}

export interface Transport {
  /** Connects to "host:port"; rejects with KeelError IO (or TIMEOUT) if that fails. */
  connect(address: string, options?: { timeoutMs?: number }): Promise<TransportConnection>;
  listen(address: string, onConnection: (connection: TransportConnection) => void): Promise<TransportListener>;
}
