/**
 * Bytes that many users share under one bound, handed out first come, first served: the edge's NBD request
 * payloads of all connections together (limits.nbdEdgeRequestBytesInFlightMax), a router's request frames
 * being received or served (limits.wireServerFrameBytesInFlightMax, shared/wire/rpc-server.ts). A user that cannot get its
 * bytes now waits in line and is called back once they have been taken for it. A later, smaller ask never
 * overtakes a waiting one, so a 32 MiB write is not starved by a stream of 4 KiB requests.
 */
import assert from 'node:assert';

interface Waiter {
  bytes: number;
  granted: () => void;
}

export class ByteBudget {
  private used = 0;
  private readonly line: Waiter[] = [];

  constructor(readonly capacityBytes: number) {
    assert(capacityBytes > 0, 'a byte budget needs a positive capacity');
  }

  get usedBytes(): number {
    return this.used;
  }

  get waiting(): number {
    return this.line.length;
  }

  /**
   * Takes `bytes` and returns true, or returns false and calls `granted` (in a later microtask, never from
   * inside this call or a release) once the bytes have been taken for the caller, who then owns them.
   * Asking for nothing always succeeds: it holds no memory.
   */
  acquire(bytes: number, granted: () => void): boolean {
    // Not assert(cond, `...`): the message would be built on every call, on the hot path of every request.
    if (!(bytes >= 0 && bytes <= this.capacityBytes)) assert.fail(`cannot ever grant ${bytes} of ${this.capacityBytes} bytes`);
    if (bytes === 0) return true;
    if (this.line.length === 0 && this.used + bytes <= this.capacityBytes) {
      this.used += bytes;
      return true;
    }
    this.line.push({ bytes, granted });
    return false;
  }

  /**
   * Leaves the line (the caller went away); false when not in it, because the bytes were granted already
   * (the callback is on its way and the caller must release them there).
   */
  cancel(granted: () => void): boolean {
    const index = this.line.findIndex((w) => w.granted === granted);
    if (index < 0) return false;
    this.line.splice(index, 1);
    return true;
  }

  release(bytes: number): void {
    if (!(bytes >= 0 && bytes <= this.used)) assert.fail(`releasing ${bytes} bytes of ${this.used} held`);
    this.used -= bytes;
    while (this.line.length > 0 && this.used + this.line[0].bytes <= this.capacityBytes) {
      const waiter = this.line.shift()!;
      this.used += waiter.bytes;
      // Not called from here: the releasing connection is mid-update, and the waiter may acquire again.
      queueMicrotask(waiter.granted);
    }
  }
}
