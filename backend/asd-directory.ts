/**
 * An ASD on a local directory (the embedded default): one file per key under `root`, keys with '/' become
 * subdirectories. PUT is atomic (temp file, writev, fsync, rename, fsync of the directory); ranged reads
 * are one positional read. Local file calls cannot be cancelled, so an aborted call is abandoned (its
 * result ignored) rather than interrupted.
 *
 * A ranged read runs inline (open, pread, close as synchronous calls on the event loop) while the
 * inline I/O gate allows it (shared/inline-io-gate.ts): through the thread pool the three calls cost
 * about 40 us of CPU per 4 KiB read, and a volume whose data was evicted from the write buffer reads
 * every cluster this way.
 */
import { randomBytes } from 'node:crypto';
import fsSync, { promises as fs } from 'node:fs';
import path from 'node:path';
import { KeelError } from '../shared/errors.ts';
import { processInlineIoGate, type InlineIoGate } from '../shared/inline-io-gate.ts';
import { limits } from '../shared/limits.ts';
import { dropWrittenPrefix, firstWriteSlice, totalBytes } from '../shared/write-slices.ts';
import { abortable, type Asd, type AsdWriteStats } from './asd.ts';
import { directOpenFlags, directWriteSupported, DirectWriteStaging, processDirectWriteStaging, writeAllDirect } from './direct-write.ts';

const tempMarker = '.tmp-';

export interface DirectoryAsdOptions {
  gate?: InlineIoGate;
  /** Write fragments with O_DIRECT (backend/direct-write.ts); default: where the platform has it. */
  directIo?: boolean;
  staging?: DirectWriteStaging;
}

export class DirectoryAsd implements Asd {
  private readonly gate: InlineIoGate;
  private readonly staging: DirectWriteStaging;
  private directIo: boolean;
  /** Why O_DIRECT was given up (the file system refused it), if it was. */
  private directIoOffReason: string | undefined;
  private readonly writeCounters = { directPuts: 0, bufferedPuts: 0 };

  constructor(
    readonly id: string,
    readonly root: string,
    options: DirectoryAsdOptions = {},
  ) {
    this.gate = options.gate ?? processInlineIoGate;
    this.staging = options.staging ?? processDirectWriteStaging;
    this.directIo = (options.directIo ?? true) && directWriteSupported;
  }

  writeStats(): AsdWriteStats {
    return { ...this.writeCounters, directIo: this.directIo, ...(this.directIoOffReason ? { directIoOffReason: this.directIoOffReason } : {}) };
  }

  async put(key: string, buffers: readonly Buffer[], signal?: AbortSignal): Promise<void> {
    const target = this.pathOf(key);
    await abortable(this.writeAtomic(target, buffers), signal, `put ${key} on ${this.id}`);
  }

  async getRange(key: string, offset: number, length: number, signal?: AbortSignal): Promise<Buffer> {
    const file = this.pathOf(key);
    return abortable(this.readAt(file, offset, length), signal, `getRange ${key} on ${this.id}`);
  }

  async get(key: string, signal?: AbortSignal): Promise<Buffer> {
    const file = this.pathOf(key);
    try {
      return await fs.readFile(file, signal ? { signal } : {});
    } catch (err) {
      throw this.wrap('get', key, err);
    }
  }

  async delete(key: string, signal?: AbortSignal): Promise<void> {
    const file = this.pathOf(key);
    await abortable(
      fs.rm(file, { force: true }).catch((err) => {
        throw this.wrap('delete', key, err);
      }),
      signal,
      `delete ${key} on ${this.id}`,
    );
  }

  async list(prefix: string, signal?: AbortSignal): Promise<string[]> {
    return abortable(this.walk(prefix), signal, `list ${prefix} on ${this.id}`);
  }

  private pathOf(key: string): string {
    const parts = key.split('/');
    if (key.length === 0 || key.includes('\0') || key.includes(tempMarker) || parts.some((p) => p === '' || p === '.' || p === '..'))
      throw KeelError.badArgument(`ASD key '${key}' is not a relative path of plain names`);
    return path.join(this.root, ...parts);
  }

  private async writeAtomic(target: string, buffers: readonly Buffer[]): Promise<void> {
    const dir = path.dirname(target);
    const temp = `${target}${tempMarker}${randomBytes(6).toString('hex')}`;
    try {
      await fs.mkdir(dir, { recursive: true });
      if (!(await this.writeDirectIfAble(temp, buffers))) await this.writeBuffered(temp, buffers);
      await fs.rename(temp, target);
      const dirHandle = await fs.open(dir, 'r');
      try {
        await dirHandle.sync();
      } finally {
        await dirHandle.close();
      }
    } catch (err) {
      await fs.rm(temp, { force: true }).catch(() => {});
      throw this.wrap('put', target, err);
    }
  }

  private async writeBuffered(temp: string, buffers: readonly Buffer[]): Promise<void> {
    const handle = await fs.open(temp, 'wx');
    try {
      await writeAll(handle, buffers);
      await handle.sync();
    } finally {
      await handle.close();
    }
    this.writeCounters.bufferedPuts += 1;
  }

  /** False when the put must go buffered: direct I/O is off, no staging buffer is free, or the file system refused O_DIRECT. */
  private async writeDirectIfAble(temp: string, buffers: readonly Buffer[]): Promise<boolean> {
    if (!this.directIo) return false;
    const staging = this.staging.take();
    if (staging === undefined) return false;
    try {
      return await this.writeDirect(temp, buffers, staging);
    } finally {
      this.staging.give(staging); // only after the last write returned, even when the put was abandoned
    }
  }

  private async writeDirect(temp: string, buffers: readonly Buffer[], staging: Buffer): Promise<boolean> {
    let handle: fs.FileHandle;
    try {
      handle = await fs.open(temp, directOpenFlags, 0o644);
    } catch (err) {
      if (!isEinval(err)) throw err;
      this.turnDirectIoOff(err);
      return false;
    }
    try {
      await writeAllDirect(handle, buffers, staging);
      await handle.sync();
    } catch (err) {
      await handle.close();
      if (!isEinval(err)) throw err; // the caller removes the temp file
      await fs.rm(temp, { force: true });
      this.turnDirectIoOff(err);
      return false;
    }
    await handle.close();
    this.writeCounters.directPuts += 1;
    return true;
  }

  private turnDirectIoOff(err: unknown): void {
    this.directIo = false;
    this.directIoOffReason = `O_DIRECT refused under ${this.root}: ${(err as Error).message}`;
  }

  private async readAt(file: string, offset: number, length: number): Promise<Buffer> {
    const target = Buffer.allocUnsafe(length);
    let done: number | undefined;
    try {
      done = this.gate.run(length, () => readRangeSync(file, target, offset));
    } catch (err) {
      throw this.wrap('getRange', file, err);
    }
    done ??= await this.readAtPooled(file, offset, target);
    return done === length ? target : target.subarray(0, done);
  }

  /** The same read through the thread pool (the gate paused inline I/O): bytes read. */
  private async readAtPooled(file: string, offset: number, target: Buffer): Promise<number> {
    const length = target.length;
    let handle: fs.FileHandle;
    try {
      handle = await fs.open(file, 'r');
    } catch (err) {
      throw this.wrap('getRange', file, err);
    }
    try {
      let done = 0;
      while (done < length) {
        const { bytesRead } = await handle.read(target, done, length - done, offset + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      return done;
    } catch (err) {
      throw this.wrap('getRange', file, err);
    } finally {
      await handle.close();
    }
  }

  private async walk(prefix: string): Promise<string[]> {
    const keys: string[] = [];
    const visit = async (dir: string, keyPrefix: string): Promise<void> => {
      let entries: import('node:fs').Dirent[];
      try {
        entries = await fs.readdir(dir, { withFileTypes: true });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
        throw this.wrap('list', dir, err);
      }
      for (const entry of entries) {
        const key = keyPrefix + entry.name;
        if (entry.isDirectory()) {
          // Only descend where the prefix can still match.
          if (prefix.startsWith(key + '/') || (key + '/').startsWith(prefix)) await visit(path.join(dir, entry.name), key + '/');
        } else if (key.startsWith(prefix) && !entry.name.includes(tempMarker)) {
          if (keys.length >= limits.backendListKeysMax)
            throw KeelError.io(`list ${prefix} on ${this.id}: more than ${limits.backendListKeysMax} keys`);
          keys.push(key);
        }
      }
    };
    await visit(this.root, '');
    return keys.sort();
  }

  private wrap(op: string, what: string, err: unknown): KeelError {
    if (err instanceof KeelError) return err;
    if ((err as NodeJS.ErrnoException).code === 'ENOENT')
      return KeelError.objectNotFound(`${what} on ASD ${this.id}`, { asd: this.id, op });
    return KeelError.io(`${op} ${what} on ASD ${this.id} failed: ${(err as Error).message}`, err, { asd: this.id, op });
  }
}

function isEinval(err: unknown): boolean {
  return (err as NodeJS.ErrnoException).code === 'EINVAL';
}

async function writeAll(handle: fs.FileHandle, buffers: readonly Buffer[]): Promise<void> {
  // writev may write short, and each call takes at most limits.fileWriteBytesMax (shared/write-slices.ts).
  let pending: readonly Uint8Array[] = buffers;
  while (totalBytes(pending) > 0) {
    const { bytesWritten } = await handle.writev(firstWriteSlice(pending, limits.fileWriteBytesMax));
    pending = dropWrittenPrefix(pending, bytesWritten);
  }
}

/** open + pread (looping over short reads) + close, synchronously: bytes read (short at end of file). */
function readRangeSync(file: string, target: Buffer, offset: number): number {
  const fd = fsSync.openSync(file, 'r');
  try {
    let done = 0;
    while (done < target.length) {
      const bytesRead = fsSync.readSync(fd, target, done, target.length - done, offset + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return done;
  } finally {
    fsSync.closeSync(fd);
  }
}
