/**
 * Batches the frames a socket sends in one turn of the event loop into few writev calls: the socket is
 * corked at the first frame and uncorked at the end of the turn (setImmediate), or as soon as
 * `framesMax` frames are queued. The cap keeps a deep queue from moving through the processes as one
 * convoy: at queue depth 32, a router that answers all 32 requests before its first reply leaves keeps
 * the edge (and the client behind it) idle for the whole batch, while a reply sent every few requests
 * lets the next process start on them as this one goes on.
 *
 * Frames begun inside a setImmediate callback leave only at the end of the next turn (Node runs the
 * immediates queued during its check phase one turn later). A caller that batches its frames itself and
 * sends from there, like the DTL pump, calls flush() instead of waiting.
 */
import type { Socket } from 'node:net';

export class WritevBatch {
  private corked = false;
  private flushScheduled = false;
  private frames = 0;

  constructor(
    private readonly socket: Socket,
    private readonly framesMax: number,
  ) {}

  /** Call before writing a frame's buffers to the socket. */
  beginFrame(): void {
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
    }
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flushAtEndOfTurn);
    }
  }

  /** Call after writing a frame's buffers: sends the batch once it holds framesMax frames. */
  endFrame(): void {
    if (++this.frames >= this.framesMax) this.flush();
  }

  /** Sends the frames batched so far now. */
  flush(): void {
    this.frames = 0;
    if (!this.corked) return;
    this.corked = false;
    this.socket.uncork();
  }

  private readonly flushAtEndOfTurn = (): void => {
    this.flushScheduled = false;
    this.flush();
  };
}
