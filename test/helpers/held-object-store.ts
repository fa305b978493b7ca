/**
 * A BackendObjectStore for tests: a real ErasureObjectStore whose puts can be held back by name pattern
 * (released later) and whose put order is recorded, so upload ordering rules can be observed exactly.
 */
import type { PutObjectOptions, PutObjectResult, ReadRangeOptions } from '../../backend/object-store.ts';
import type { BackendObjectStore } from '../../router/volume-backend.ts';

export class HeldObjectStore implements BackendObjectStore {
  readonly started: string[] = [];
  readonly completed: string[] = [];
  private readonly holds: RegExp[] = [];
  private readonly waiting: Array<{ name: string; release: () => void }> = [];

  constructor(private readonly inner: BackendObjectStore) {}

  hold(pattern: RegExp): void {
    this.holds.push(pattern);
  }

  /** Lets held puts whose name matches go (and stops holding the pattern if it is one of the holds). */
  release(pattern: RegExp): void {
    const index = this.holds.findIndex((h) => h.source === pattern.source);
    if (index >= 0) this.holds.splice(index, 1);
    for (const entry of [...this.waiting]) {
      if (!pattern.test(entry.name)) continue;
      this.waiting.splice(this.waiting.indexOf(entry), 1);
      entry.release();
    }
  }

  heldNames(): string[] {
    return this.waiting.map((w) => w.name);
  }

  async putObject(name: string, data: Buffer | readonly Buffer[], options?: PutObjectOptions): Promise<PutObjectResult | void> {
    this.started.push(name);
    if (this.holds.some((h) => h.test(name))) await new Promise<void>((release) => this.waiting.push({ name, release }));
    const result = await this.inner.putObject(name, data, options);
    this.completed.push(name);
    return result;
  }

  readRange(name: string, offset: number, length: number, options?: ReadRangeOptions): Promise<Buffer> {
    return this.inner.readRange(name, offset, length, options);
  }

  statObject(name: string): Promise<{ sizeBytes: number }> {
    return this.inner.statObject(name);
  }

  deleteObject(name: string): Promise<void> {
    return this.inner.deleteObject(name);
  }
}
