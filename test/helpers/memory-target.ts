/**
 * An in-memory BlockTarget and ExportResolver for tests: a sparse Map of 4 KiB clusters (unwritten clusters
 * read as zeros), a configurable size, and hooks to inject errors, delays and stalls.
 */
import type { BlockTarget, ExportResolver, OpenBlockTarget } from '../../shared/block-target.ts';
import { KeelError } from '../../shared/errors.ts';
import { clusterSizeBytes } from '../../shared/limits.ts';

export type MemoryOp = 'read' | 'write' | 'flush' | 'trim' | 'writeZeroes';

interface InjectedFailure {
  op: MemoryOp;
  error: KeelError;
  remaining: number;
}

export class MemoryVolume implements BlockTarget {
  readonly clusters = new Map<number, Buffer>();
  /** Calls per operation, and how many carried FUA. */
  readonly calls: Record<MemoryOp, number> = { read: 0, write: 0, flush: 0, trim: 0, writeZeroes: 0 };
  fuaCalls = 0;
  /** Operations running now, and the most seen at once. */
  running = 0;
  runningMax = 0;
  /** Milliseconds an operation takes; lets tests force out-of-order completion. */
  delayMs: (op: MemoryOp, offset: number, length: number) => number = () => 0;
  private failures: InjectedFailure[] = [];
  private stall: Promise<void> | undefined;

  constructor(
    readonly sizeBytes: number,
    readonly readOnly = false,
  ) {}

  /** The next `count` calls of `op` fail with `error`. */
  failNext(op: MemoryOp, error: KeelError, count = 1): void {
    this.failures.push({ op, error, remaining: count });
  }

  /** Every operation waits until the returned function is called. */
  stallAll(): () => void {
    let release!: () => void;
    this.stall = new Promise<void>((resolve) => (release = resolve));
    return () => {
      this.stall = undefined;
      release();
    };
  }

  /** Synchronous view of the contents, for assertions. */
  peek(offset: number, length: number): Buffer {
    const out = Buffer.alloc(length);
    this.forEachCluster(offset, length, (index, inCluster, inRange, n) => {
      this.clusters.get(index)?.copy(out, inRange, inCluster, inCluster + n);
    });
    return out;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    await this.enter('read', offset, length, false);
    try {
      return this.peek(offset, length);
    } finally {
      this.running -= 1;
    }
  }

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    await this.enter('write', offset, data.length, fua);
    try {
      this.forEachCluster(offset, data.length, (index, inCluster, inRange, n) => {
        let cluster = this.clusters.get(index);
        if (!cluster) this.clusters.set(index, (cluster = Buffer.alloc(clusterSizeBytes)));
        data.copy(cluster, inCluster, inRange, inRange + n);
      });
    } finally {
      this.running -= 1;
    }
  }

  async flush(): Promise<void> {
    await this.enter('flush', 0, 0, false);
    this.running -= 1;
  }

  async trim(offset: number, length: number, fua: boolean): Promise<void> {
    await this.enter('trim', offset, length, fua);
    this.zero(offset, length);
    this.running -= 1;
  }

  async writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    await this.enter('writeZeroes', offset, length, fua);
    this.zero(offset, length);
    this.running -= 1;
  }

  private zero(offset: number, length: number): void {
    this.forEachCluster(offset, length, (index, inCluster, _inRange, n) => {
      if (n === clusterSizeBytes) this.clusters.delete(index);
      else this.clusters.get(index)?.fill(0, inCluster, inCluster + n);
    });
  }

  private async enter(op: MemoryOp, offset: number, length: number, fua: boolean): Promise<void> {
    this.calls[op] += 1;
    if (fua) this.fuaCalls += 1;
    this.running += 1;
    this.runningMax = Math.max(this.runningMax, this.running);
    try {
      if (this.stall) await this.stall;
      const delay = this.delayMs(op, offset, length);
      if (delay > 0) await new Promise((resolve) => setTimeout(resolve, delay));
      if (offset + length > this.sizeBytes) throw KeelError.outOfRange(offset, length, this.sizeBytes);
      if (this.readOnly && op !== 'read' && op !== 'flush') throw KeelError.readOnly('memory volume');
      const failure = this.failures.find((f) => f.op === op && f.remaining > 0);
      if (failure) {
        failure.remaining -= 1;
        throw failure.error;
      }
    } catch (err) {
      this.running -= 1;
      throw err;
    }
  }

  private forEachCluster(
    offset: number,
    length: number,
    visit: (index: number, inCluster: number, inRange: number, n: number) => void,
  ): void {
    let done = 0;
    while (done < length) {
      const position = offset + done;
      const index = Math.floor(position / clusterSizeBytes);
      const inCluster = position % clusterSizeBytes;
      const n = Math.min(clusterSizeBytes - inCluster, length - done);
      visit(index, inCluster, done, n);
      done += n;
    }
  }
}

/** Serves MemoryVolumes by name; every open() returns a session over the shared volume. */
export class MemoryExportResolver implements ExportResolver {
  readonly volumes = new Map<string, { volume: MemoryVolume; description?: string }>();
  opened = 0;
  closed = 0;

  add(name: string, volume: MemoryVolume, description?: string): MemoryVolume {
    this.volumes.set(name, { volume, description });
    return volume;
  }

  async open(exportName: string): Promise<OpenBlockTarget> {
    const volume = this.lookup(exportName);
    this.opened += 1;
    let open = true;
    const session: OpenBlockTarget = {
      sizeBytes: volume.sizeBytes,
      readOnly: volume.readOnly,
      read: (offset, length) => volume.read(offset, length),
      write: (offset, data, fua) => volume.write(offset, data, fua),
      flush: () => volume.flush(),
      trim: (offset, length, fua) => volume.trim(offset, length, fua),
      writeZeroes: (offset, length, fua) => volume.writeZeroes(offset, length, fua),
      close: async () => {
        if (!open) throw new Error('memory session closed twice');
        open = false;
        this.closed += 1;
      },
    };
    return session;
  }

  async describe(exportName: string): Promise<{ sizeBytes: number; readOnly: boolean }> {
    const volume = this.lookup(exportName);
    return { sizeBytes: volume.sizeBytes, readOnly: volume.readOnly };
  }

  async list(): Promise<Array<{ name: string; description?: string }>> {
    return [...this.volumes].map(([name, { description }]) => ({ name, description }));
  }

  private lookup(exportName: string): MemoryVolume {
    const entry = this.volumes.get(exportName);
    if (!entry) throw KeelError.volumeNotFound(exportName);
    return entry.volume;
  }
}
