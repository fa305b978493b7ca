/**
 * A volume served read-only (a template: docs/snapshots.md, "Templates"): reads go to the volume, every
 * change fails with READ_ONLY (the NBD edge answers EPERM). close() releases the volume once.
 */
import type { OpenBlockTarget } from '../shared/block-target.ts';
import { KeelError } from '../shared/errors.ts';

export class ReadOnlyTarget implements OpenBlockTarget {
  readonly readOnly = true as const;
  private closed = false;

  constructor(
    private readonly inner: OpenBlockTarget,
    private readonly what: string,
    private readonly onClose: () => void,
  ) {}

  get sizeBytes(): number {
    return this.inner.sizeBytes;
  }

  read(offset: number, length: number): Promise<Buffer> {
    if (this.closed) return Promise.reject(KeelError.closed(this.what));
    return this.inner.read(offset, length);
  }
  async write(): Promise<void> {
    throw KeelError.readOnly(this.what);
  }
  async trim(): Promise<void> {
    throw KeelError.readOnly(this.what);
  }
  async writeZeroes(): Promise<void> {
    throw KeelError.readOnly(this.what);
  }
  async flush(): Promise<void> {}

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.onClose();
  }
}
