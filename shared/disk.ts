/**
 * The file system as the volume driver sees it: a few positional file operations and directory
 * operations. Like LevelDB's Env, all disk access goes through this interface so tests can inject faults
 * (FaultyDisk) without touching the code under test. NodeDisk is the real implementation on
 * node:fs/promises; errors from it are wrapped into KeelError IO with the path in the details.
 */
import assert from 'node:assert';
import fsCallback, { constants as fsConstants, promises as fs } from 'node:fs';
import path from 'node:path';
import { isKeelError, KeelError } from './errors.ts';
import { processInlineIoGate, type InlineIoGate } from './inline-io-gate.ts';
import { limits } from './limits.ts';
import { dropWrittenPrefix, firstWriteSlice, totalBytes } from './write-slices.ts';

export type DiskOpenMode =
  | 'read' // existing file, read only
  | 'readWrite' // existing file, read and positional writes
  | 'createNew'; // a new file that must not exist yet, read and write

export interface DiskFile {
  readonly path: string;
  /** Writes all of `data` at `position` (loops over short writes). */
  write(data: Uint8Array, position: number): Promise<void>;
  /** Writes the buffers back to back at `position` with as few syscalls as possible. */
  writev(buffers: readonly Uint8Array[], position: number): Promise<void>;
  /** Reads up to target.length bytes at `position`; returns how many were read (short at end of file). */
  read(target: Uint8Array, position: number): Promise<number>;
  /**
   * One synchronous pread into the whole of target, when the inline-I/O gate allows it (inline-io-gate.ts):
   * the bytes read, or undefined when the caller must use read(). Lets a page-cache hit finish in the turn
   * that asked for it, with no promise at all.
   */
  readInline(target: Uint8Array, position: number): number | undefined;
  sync(): Promise<void>;
  sizeBytes(): Promise<number>;
  truncate(sizeBytes: number): Promise<void>;
  close(): Promise<void>;
}

export interface Disk {
  open(filePath: string, mode: DiskOpenMode): Promise<DiskFile>;
  /** Names in a directory, sorted; [] when it does not exist. */
  list(dirPath: string): Promise<string[]>;
  mkdirp(dirPath: string): Promise<void>;
  /** Removes a file or a whole directory tree; no error when it does not exist. */
  remove(targetPath: string): Promise<void>;
  rename(fromPath: string, toPath: string): Promise<void>;
  exists(targetPath: string): Promise<boolean>;
  /** The whole file, or undefined when it does not exist. */
  readFile(filePath: string): Promise<Buffer | undefined>;
  /**
   * Reads a whole file through the thread pool (bulk background reads stay off the event loop) into the
   * buffer `allocate(sizeBytes)` returns, which must hold at least sizeBytes: the view of the bytes read,
   * or undefined when the file does not exist. Lets callers reuse big buffers (fresh memory page-faults).
   */
  readFileInto(filePath: string, allocate: (sizeBytes: number) => Buffer): Promise<Buffer | undefined>;
  /** Replaces a file atomically: temp file, fsync, rename, fsync of the directory. */
  writeFileAtomic(filePath: string, data: Uint8Array): Promise<void>;
  /** Makes the creation, removal or renaming of entries in a directory durable. */
  syncDir(dirPath: string): Promise<void>;
}

/** A full disk is its own code: callers keep a volume open and fail only the writes (docs/volume-driver.md, "Disk full"). */
function ioError(op: string, targetPath: string, err: unknown): KeelError {
  if (err instanceof KeelError) return err;
  const message = `${op} ${targetPath} failed: ${(err as Error).message}`;
  if (isNoSpace(err)) return KeelError.noSpace(message, err, { path: targetPath, op });
  return KeelError.io(message, err, { path: targetPath, op });
}

function isNoSpace(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'ENOSPC' || code === 'EDQUOT';
}

function isNotFound(err: unknown): boolean {
  return (err as NodeJS.ErrnoException).code === 'ENOENT';
}

/*
 * The data path reads and writes inline (synchronous calls, gated by inline-io-gate.ts) or else through
 * the callback API on the FileHandle's fd: measured here, a 4 KiB page-cache read costs 8 us of CPU that
 * way against 13.5 us through FileHandle.read (promise plumbing), at 32 reads in flight. The FileHandle
 * still owns the descriptor's lifetime.
 */
function fdRead(fd: number, target: Uint8Array, offset: number, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => fsCallback.read(fd, target, offset, length, position, (err, n) => (err ? reject(err) : resolve(n))));
}

function fdWrite(fd: number, data: Uint8Array, offset: number, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => fsCallback.write(fd, data, offset, length, position, (err, n) => (err ? reject(err) : resolve(n))));
}

function fdWritev(fd: number, buffers: Uint8Array[], position: number): Promise<number> {
  return new Promise((resolve, reject) => fsCallback.writev(fd, buffers, position, (err, n) => (err ? reject(err) : resolve(n))));
}

class NodeDiskFile implements DiskFile {
  constructor(
    readonly path: string,
    private readonly handle: fs.FileHandle,
    private readonly gate: InlineIoGate,
  ) {}

  async write(data: Uint8Array, position: number): Promise<void> {
    try {
      let done = 0;
      while (done < data.length) {
        const fd = this.handle.fd;
        const length = Math.min(data.length - done, limits.fileWriteBytesMax);
        const bytesWritten =
          this.gate.run(length, () => fsCallback.writeSync(fd, data, done, length, position + done), limits.inlineWriteBytesMax) ?? (await fdWrite(fd, data, done, length, position + done));
        done += bytesWritten;
      }
    } catch (err) {
      throw ioError('write', this.path, err);
    }
  }

  async writev(buffers: readonly Uint8Array[], position: number): Promise<void> {
    try {
      let pending = buffers;
      let offset = position;
      let total = totalBytes(pending);
      while (total > 0) {
        const fd = this.handle.fd;
        const slice = firstWriteSlice(pending, limits.fileWriteBytesMax);
        const sliceBytes = totalBytes(slice);
        const bytesWritten = this.gate.run(sliceBytes, () => fsCallback.writevSync(fd, slice, offset), limits.inlineWriteBytesMax) ?? (await fdWritev(fd, slice, offset));
        total -= bytesWritten;
        offset += bytesWritten;
        if (total > 0) pending = dropWrittenPrefix(pending, bytesWritten);
      }
    } catch (err) {
      throw ioError('writev', this.path, err);
    }
  }

  readInline(target: Uint8Array, position: number): number | undefined {
    const fd = this.handle.fd;
    try {
      return this.gate.run(target.length, () => fsCallback.readSync(fd, target, 0, target.length, position));
    } catch (err) {
      throw ioError('read', this.path, err);
    }
  }

  async read(target: Uint8Array, position: number): Promise<number> {
    try {
      let done = 0;
      while (done < target.length) {
        const fd = this.handle.fd;
        const bytesRead =
          this.gate.run(target.length - done, () => fsCallback.readSync(fd, target, done, target.length - done, position + done)) ??
          (await fdRead(fd, target, done, target.length - done, position + done));
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      return done;
    } catch (err) {
      throw ioError('read', this.path, err);
    }
  }

  /** A failed fsync is IO whatever its errno: the kernel may have dropped the dirty pages it could not write. */
  async sync(): Promise<void> {
    try {
      await this.handle.sync();
    } catch (err) {
      throw KeelError.io(`fsync ${this.path} failed: ${(err as Error).message}`, err, { path: this.path, op: 'fsync' });
    }
  }

  async sizeBytes(): Promise<number> {
    try {
      return (await this.handle.stat()).size;
    } catch (err) {
      throw ioError('stat', this.path, err);
    }
  }

  async truncate(sizeBytes: number): Promise<void> {
    try {
      await this.handle.truncate(sizeBytes);
    } catch (err) {
      throw ioError('truncate', this.path, err);
    }
  }

  async close(): Promise<void> {
    try {
      await this.handle.close();
    } catch (err) {
      throw ioError('close', this.path, err);
    }
  }
}

const openFlags: Record<DiskOpenMode, number> = {
  read: fsConstants.O_RDONLY,
  readWrite: fsConstants.O_RDWR,
  createNew: fsConstants.O_RDWR | fsConstants.O_CREAT | fsConstants.O_EXCL,
};

export class NodeDisk implements Disk {
  /** Data reads and writes run inline while the gate allows it (see inline-io-gate.ts). */
  constructor(private readonly gate: InlineIoGate = processInlineIoGate) {}

  async open(filePath: string, mode: DiskOpenMode): Promise<DiskFile> {
    try {
      return new NodeDiskFile(filePath, await fs.open(filePath, openFlags[mode], 0o644), this.gate);
    } catch (err) {
      throw ioError(`open(${mode})`, filePath, err);
    }
  }

  async list(dirPath: string): Promise<string[]> {
    try {
      return (await fs.readdir(dirPath)).sort();
    } catch (err) {
      if (isNotFound(err)) return [];
      throw ioError('readdir', dirPath, err);
    }
  }

  async mkdirp(dirPath: string): Promise<void> {
    try {
      await fs.mkdir(dirPath, { recursive: true });
    } catch (err) {
      throw ioError('mkdir', dirPath, err);
    }
  }

  async remove(targetPath: string): Promise<void> {
    try {
      await fs.rm(targetPath, { recursive: true, force: true });
    } catch (err) {
      throw ioError('remove', targetPath, err);
    }
  }

  async rename(fromPath: string, toPath: string): Promise<void> {
    try {
      await fs.rename(fromPath, toPath);
    } catch (err) {
      throw ioError('rename', fromPath, err);
    }
  }

  async exists(targetPath: string): Promise<boolean> {
    try {
      await fs.stat(targetPath);
      return true;
    } catch (err) {
      if (isNotFound(err)) return false;
      throw ioError('stat', targetPath, err);
    }
  }

  async readFile(filePath: string): Promise<Buffer | undefined> {
    try {
      return await fs.readFile(filePath);
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw ioError('readFile', filePath, err);
    }
  }

  async readFileInto(filePath: string, allocate: (sizeBytes: number) => Buffer): Promise<Buffer | undefined> {
    let handle: fs.FileHandle;
    try {
      handle = await fs.open(filePath, 'r');
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw ioError('readFileInto', filePath, err);
    }
    try {
      const size = (await handle.stat().catch((err) => Promise.reject(ioError('readFileInto', filePath, err)))).size;
      const target = allocate(size);
      assert(target.length >= size, 'readFileInto: allocate() returned a buffer smaller than the file');
      for (let done = 0; done < size; ) {
        const { bytesRead } = await handle.read(target, done, size - done, done).catch((err) => Promise.reject(ioError('readFileInto', filePath, err)));
        if (bytesRead === 0) throw KeelError.io(`readFileInto ${filePath}: the file shrank to ${done} of ${size} bytes while read`);
        done += bytesRead;
      }
      return target.subarray(0, size);
    } finally {
      await handle.close();
    }
  }

  async writeFileAtomic(filePath: string, data: Uint8Array): Promise<void> {
    const tempPath = `${filePath}.tmp-${process.pid}`;
    await this.remove(tempPath);
    const file = await this.open(tempPath, 'createNew');
    try {
      await file.write(data, 0);
      await file.sync();
    } finally {
      await file.close();
    }
    await this.rename(tempPath, filePath);
    await this.syncDir(path.dirname(filePath));
  }

  async syncDir(dirPath: string): Promise<void> {
    let handle: fs.FileHandle | undefined;
    try {
      handle = await fs.open(dirPath, fsConstants.O_RDONLY);
      await handle.sync();
    } catch (err) {
      throw ioError('fsync(dir)', dirPath, err);
    } finally {
      await handle?.close().catch(() => undefined);
    }
  }
}

export type DiskOperation =
  | 'open'
  | 'write'
  | 'writev'
  | 'read'
  | 'sync'
  | 'sizeBytes'
  | 'truncate'
  | 'close'
  | 'list'
  | 'mkdirp'
  | 'remove'
  | 'rename'
  | 'exists'
  | 'readFile'
  | 'readFileInto'
  | 'writeFileAtomic'
  | 'syncDir';

export interface DiskFault {
  operation: DiskOperation;
  /** Only paths containing this text (default: every path). */
  pathIncludes?: string;
  /** Let this many matching calls pass before the fault applies (default 0). */
  skip?: number;
  /** How many matching calls the fault applies to (default: forever). */
  times?: number;
  /** Wait this long before the call (or before failing). */
  delayMs?: number;
  /** Fail the call with KeelError IO (default true unless only delayMs is given). */
  fail?: boolean;
  /** Fail it as a full disk (KeelError NO_SPACE, as NodeDisk reports ENOSPC) instead of IO; a write or writev writes half its bytes first. */
  noSpace?: boolean;
}

interface ActiveFault extends DiskFault {
  seen: number;
  applied: number;
}

/**
 * A Disk that fails or delays chosen operations, for tests. Faults match by operation and path; they are
 * checked in the order they were injected and the first match applies.
 */
export class FaultyDisk implements Disk {
  private faults: ActiveFault[] = [];
  /** How many operations failed because of an injected fault. */
  failuresInjected = 0;

  constructor(private readonly inner: Disk = new NodeDisk()) {}

  inject(fault: DiskFault): void {
    this.faults.push({ ...fault, seen: 0, applied: 0 });
  }

  clearFaults(): void {
    this.faults = [];
  }

  hasFault(operation: DiskOperation): boolean {
    return this.faults.some((fault) => fault.operation === operation);
  }

  /** Applies the first matching fault: waits and/or throws. */
  async check(operation: DiskOperation, targetPath: string): Promise<void> {
    for (const fault of this.faults) {
      if (fault.operation !== operation) continue;
      if (fault.pathIncludes !== undefined && !targetPath.includes(fault.pathIncludes)) continue;
      fault.seen += 1;
      if (fault.seen <= (fault.skip ?? 0)) continue;
      if (fault.times !== undefined && fault.applied >= fault.times) continue;
      fault.applied += 1;
      if (fault.delayMs !== undefined) await new Promise((resolve) => setTimeout(resolve, fault.delayMs));
      const fail = fault.fail ?? fault.delayMs === undefined;
      if (fail) {
        this.failuresInjected += 1;
        const details = { path: targetPath, injected: true };
        if (fault.noSpace === true) throw KeelError.noSpace(`injected fault: ${operation} ${targetPath}: no space left on device`, undefined, details);
        throw KeelError.io(`injected fault: ${operation} ${targetPath}`, undefined, details);
      }
      return;
    }
  }

  async open(filePath: string, mode: DiskOpenMode): Promise<DiskFile> {
    await this.check('open', filePath);
    return new FaultyDiskFile(this, await this.inner.open(filePath, mode));
  }
  async list(dirPath: string): Promise<string[]> {
    await this.check('list', dirPath);
    return this.inner.list(dirPath);
  }
  async mkdirp(dirPath: string): Promise<void> {
    await this.check('mkdirp', dirPath);
    return this.inner.mkdirp(dirPath);
  }
  async remove(targetPath: string): Promise<void> {
    await this.check('remove', targetPath);
    return this.inner.remove(targetPath);
  }
  async rename(fromPath: string, toPath: string): Promise<void> {
    await this.check('rename', fromPath);
    return this.inner.rename(fromPath, toPath);
  }
  async exists(targetPath: string): Promise<boolean> {
    await this.check('exists', targetPath);
    return this.inner.exists(targetPath);
  }
  async readFile(filePath: string): Promise<Buffer | undefined> {
    await this.check('readFile', filePath);
    return this.inner.readFile(filePath);
  }
  async readFileInto(filePath: string, allocate: (sizeBytes: number) => Buffer): Promise<Buffer | undefined> {
    await this.check('readFileInto', filePath);
    return this.inner.readFileInto(filePath, allocate);
  }
  async writeFileAtomic(filePath: string, data: Uint8Array): Promise<void> {
    await this.check('writeFileAtomic', filePath);
    return this.inner.writeFileAtomic(filePath, data);
  }
  async syncDir(dirPath: string): Promise<void> {
    await this.check('syncDir', dirPath);
    return this.inner.syncDir(dirPath);
  }
}

class FaultyDiskFile implements DiskFile {
  constructor(
    private readonly disk: FaultyDisk,
    private readonly inner: DiskFile,
  ) {}
  get path(): string {
    return this.inner.path;
  }
  async write(data: Uint8Array, position: number): Promise<void> {
    await this.checkWrite('write', () => this.inner.write(data.subarray(0, data.length >> 1), position));
    return this.inner.write(data, position);
  }
  async writev(buffers: readonly Uint8Array[], position: number): Promise<void> {
    await this.checkWrite('writev', () => this.inner.write(Buffer.concat(buffers).subarray(0, totalBytes(buffers) >> 1), position));
    return this.inner.writev(buffers, position);
  }
  /** A full disk takes what fits before it fails: an injected NO_SPACE writes the first half first. */
  private async checkWrite(operation: DiskOperation, writeFirstHalf: () => Promise<void>): Promise<void> {
    try {
      await this.disk.check(operation, this.path);
    } catch (err) {
      if (isKeelError(err, 'NO_SPACE')) await writeFirstHalf();
      throw err;
    }
  }
  /** Never inline while a read fault is injected: read() applies it. */
  readInline(target: Uint8Array, position: number): number | undefined {
    return this.disk.hasFault('read') ? undefined : this.inner.readInline(target, position);
  }
  async read(target: Uint8Array, position: number): Promise<number> {
    await this.disk.check('read', this.path);
    return this.inner.read(target, position);
  }
  async sync(): Promise<void> {
    await this.disk.check('sync', this.path);
    return this.inner.sync();
  }
  async sizeBytes(): Promise<number> {
    await this.disk.check('sizeBytes', this.path);
    return this.inner.sizeBytes();
  }
  async truncate(sizeBytes: number): Promise<void> {
    await this.disk.check('truncate', this.path);
    return this.inner.truncate(sizeBytes);
  }
  async close(): Promise<void> {
    await this.disk.check('close', this.path);
    return this.inner.close();
  }
}
