/**
 * Read-only exports: every change fails with READ_ONLY (the NBD edge answers EPERM), flush is a no-op,
 * and close() releases what the export holds exactly once. ReadOnlyTarget serves a live volume read-only
 * (a template: docs/snapshots.md, "Templates"); SnapshotTarget (snapshot-target.ts) serves `VOL@SNAP`.
 */
import type { OpenBlockTarget } from '../shared/block-target.ts';
import { KeelError } from '../shared/errors.ts';

export abstract class ReadOnlyExport implements OpenBlockTarget {
  readonly readOnly = true as const;
  protected closed = false;

  protected constructor(
    protected readonly what: string,
    private readonly onClose: () => void,
  ) {}

  abstract get sizeBytes(): number;
  abstract read(offset: number, length: number): Promise<Buffer>;

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

export class ReadOnlyTarget extends ReadOnlyExport {
  constructor(
    private readonly inner: OpenBlockTarget,
    what: string,
    onClose: () => void,
  ) {
    super(what, onClose);
  }

  get sizeBytes(): number {
    return this.inner.sizeBytes;
  }

  read(offset: number, length: number): Promise<Buffer> {
    if (this.closed) return Promise.reject(KeelError.closed(this.what));
    return this.inner.read(offset, length);
  }
}
