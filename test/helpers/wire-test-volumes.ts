/**
 * In-memory volumes and a VolumeHost for wire-protocol tests (rpc, remote volume). The bytes live in a
 * plain Buffer that several hosts can share, as if the volume's data moved with its ownership.
 */
import { Writable } from 'node:stream';
import { pino, type Logger } from 'pino';
import type { OpenBlockTarget } from '../../shared/block-target.ts';
import { KeelError } from '../../shared/errors.ts';
import type { VolumeHost } from '../../router/volume-service.ts';

export type OpName = 'read' | 'write' | 'flush' | 'trim' | 'zero';

/** Runs before each operation; may delay it (return a promise) or fail it (throw). */
export type OpHook = (op: OpName, offset: number, length: number) => Promise<void> | void;

export class MemoryVolume implements OpenBlockTarget {
  readonly readOnly = false;
  hook: OpHook | undefined;
  constructor(readonly bytes: Buffer) {}

  get sizeBytes(): number {
    return this.bytes.length;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    await this.before('read', offset, length);
    return Buffer.from(this.bytes.subarray(offset, offset + length));
  }

  /** Like a volume driver: fills the caller's buffer (the volume service reads into pooled ones). */
  async readInto(target: Buffer, offset: number): Promise<void> {
    await this.before('read', offset, target.length);
    this.bytes.copy(target, 0, offset, offset + target.length);
  }

  async write(offset: number, data: Buffer): Promise<void> {
    await this.before('write', offset, data.length);
    data.copy(this.bytes, offset);
  }

  async flush(): Promise<void> {
    await this.before('flush', 0, 0);
  }

  async trim(offset: number, length: number): Promise<void> {
    await this.before('trim', offset, length);
    this.bytes.fill(0, offset, offset + length);
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    await this.before('zero', offset, length);
    this.bytes.fill(0, offset, offset + length);
  }

  async close(): Promise<void> {
    throw new Error('the volume service must release shared volumes, never close them');
  }

  private async before(op: OpName, offset: number, length: number): Promise<void> {
    if (offset + length > this.bytes.length) throw KeelError.outOfRange(offset, length, this.bytes.length);
    await this.hook?.(op, offset, length);
  }
}

/** A router's view: serves `volumes` while `owner` is its own id, answers NOT_OWNER otherwise. */
export class MemoryVolumeHost implements VolumeHost {
  owner: string;
  opens = 0;
  releases = 0;

  constructor(
    readonly routerId: string,
    readonly volumes: Map<string, MemoryVolume>,
  ) {
    this.owner = routerId;
  }

  get openHandles(): number {
    return this.opens - this.releases;
  }

  async openVolume(volumeName: string): Promise<OpenBlockTarget> {
    const volume = this.volumes.get(volumeName);
    if (!volume) throw KeelError.volumeNotFound(volumeName);
    if (this.owner !== this.routerId) throw KeelError.notOwner(volumeName, this.owner);
    this.opens++;
    // Each open gets a view that checks ownership on every request, like a fenced driver would.
    return ownershipChecked(volume, volumeName, this);
  }

  releaseVolume(): void {
    this.releases++;
  }
}

function ownershipChecked(volume: MemoryVolume, volumeName: string, host: MemoryVolumeHost): OpenBlockTarget {
  const check = () => {
    if (host.owner !== host.routerId) throw KeelError.notOwner(volumeName, host.owner);
  };
  return {
    get sizeBytes() {
      return volume.sizeBytes;
    },
    readOnly: false,
    read: async (offset, length) => (check(), volume.read(offset, length)),
    readInto: async (target, offset) => (check(), volume.readInto(target, offset)),
    write: async (offset, data, fua) => (check(), volume.write(offset, data)),
    flush: async () => (check(), volume.flush()),
    trim: async (offset, length, fua) => (check(), volume.trim(offset, length)),
    writeZeroes: async (offset, length, fua) => (check(), volume.writeZeroes(offset, length)),
    close: async () => volume.close(),
  };
}

/** A pino logger whose records are kept in memory so tests can assert what was logged. */
export function capturingLogger(): { logger: Logger; records: Array<Record<string, unknown>> } {
  const records: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk, _encoding, done) {
      for (const line of String(chunk).split('\n')) if (line) records.push(JSON.parse(line));
      done();
    },
  });
  return { logger: pino({ level: 'debug' }, sink), records };
}

export function patternBytes(length: number, seed: number): Buffer {
  const bytes = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) bytes[i] = (seed * 31 + i * 7) & 0xff;
  return bytes;
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
