/**
 * Reed-Solomon over one stripe at a time, through the native @ronomon/reed-solomon (Cauchy matrices,
 * runs on the libuv threadpool). A stripe is k data units + m parity units of `unitBytes` each; the codec
 * is systematic: data units are the plain stored bytes.
 *
 * The library's parity depends on the shard size it is called with (it cuts shards into sub-packets by
 * size), so every stripe of an object is always encoded and decoded with the same unit size: that is what
 * lets a degraded read decode one stripe instead of the whole object (docs/backend-format.md).
 * k = 1 is replication: parity units are plain copies and need no library call.
 */
import assert from 'node:assert';
import { createRequire } from 'node:module';
import { KeelError } from '../shared/errors.ts';

interface ReedSolomonBinding {
  MAX_K: number;
  MAX_M: number;
  create(k: number, m: number): Buffer;
  encode(
    context: Buffer,
    sources: number,
    targets: number,
    buffer: Buffer,
    bufferOffset: number,
    bufferSize: number,
    parity: Buffer,
    parityOffset: number,
    paritySize: number,
    callback: (error?: Error) => void,
  ): void;
}

const reedSolomon = createRequire(import.meta.url)('@ronomon/reed-solomon') as ReedSolomonBinding;

/** The library requires shard sizes that are multiples of 8 bytes. */
export const unitBytesMultiple = 8;

export class ErasureCodec {
  private readonly context: Buffer | undefined;

  constructor(
    readonly k: number,
    readonly m: number,
  ) {
    assert(Number.isInteger(k) && k >= 1 && k <= reedSolomon.MAX_K, `k=${k}`);
    assert(Number.isInteger(m) && m >= 0 && m <= reedSolomon.MAX_M, `m=${m}`);
    this.context = k > 1 && m > 0 ? reedSolomon.create(k, m) : undefined;
  }

  /**
   * Computes the m parity units of one stripe. `data` holds the k data units back to back from
   * `dataOffset`; parity units are written back to back into `parity` from `parityOffset`.
   */
  async encodeStripe(data: Buffer, dataOffset: number, parity: Buffer, parityOffset: number, unitBytes: number): Promise<void> {
    this.checkUnit(unitBytes);
    assert(dataOffset + this.k * unitBytes <= data.length && parityOffset + this.m * unitBytes <= parity.length);
    if (this.m === 0) return;
    if (this.k === 1) {
      for (let j = 0; j < this.m; j++) data.copy(parity, parityOffset + j * unitBytes, dataOffset, dataOffset + unitBytes);
      return;
    }
    await this.run(allBits(0, this.k), allBits(this.k, this.k + this.m), data, dataOffset, parity, parityOffset, unitBytes);
  }

  /**
   * Rebuilds the missing units of one stripe. `units[i]` is unit i (0..k-1 data, k.. parity) or undefined
   * when missing; at least k must be present. Returns all k+m units (the present ones unchanged).
   */
  async reconstructStripe(units: readonly (Buffer | undefined)[], unitBytes: number): Promise<Buffer[]> {
    this.checkUnit(unitBytes);
    const n = this.k + this.m;
    assert(units.length === n);
    const present = units.flatMap((u, i) => (u ? [i] : []));
    if (present.length < this.k)
      throw KeelError.io(`cannot decode: only ${present.length} of ${n} fragments available, ${this.k} needed`, undefined, {
        present,
        k: this.k,
        m: this.m,
      });
    for (const i of present) assert(units[i]!.length === unitBytes, `unit ${i} has ${units[i]!.length} bytes, expected ${unitBytes}`);
    if (present.length === n) return units as Buffer[];
    if (this.k === 1) {
      const copy = units[present[0]!]!;
      return units.map((u) => u ?? Buffer.from(copy));
    }
    // The library wants data units back to back in one buffer and parity units in another.
    const data = Buffer.allocUnsafe(this.k * unitBytes);
    const parity = Buffer.allocUnsafe(this.m * unitBytes);
    let sources = 0;
    let targets = 0;
    for (let i = 0; i < n; i++) {
      const target = i < this.k ? data : parity;
      const offset = (i < this.k ? i : i - this.k) * unitBytes;
      const unit = units[i];
      if (unit && countBits(sources) < this.k) {
        unit.copy(target, offset);
        sources |= 1 << i;
      } else if (!unit) {
        targets |= 1 << i;
      }
    }
    await this.run(sources, targets, data, 0, parity, 0, unitBytes);
    return units.map(
      (u, i) => u ?? (i < this.k ? data.subarray(i * unitBytes, (i + 1) * unitBytes) : parity.subarray((i - this.k) * unitBytes, (i - this.k + 1) * unitBytes)),
    );
  }

  private checkUnit(unitBytes: number): void {
    assert(Number.isInteger(unitBytes) && unitBytes > 0 && unitBytes % unitBytesMultiple === 0, `unitBytes=${unitBytes}`);
  }

  private run(sources: number, targets: number, data: Buffer, dataOffset: number, parity: Buffer, parityOffset: number, unitBytes: number) {
    return new Promise<void>((resolve, reject) => {
      reedSolomon.encode(
        this.context!,
        sources,
        targets,
        data,
        dataOffset,
        this.k * unitBytes,
        parity,
        parityOffset,
        this.m * unitBytes,
        (error) => (error ? reject(KeelError.io(`reed-solomon failed: ${error.message}`, error)) : resolve()),
      );
    });
  }
}

function allBits(from: number, to: number): number {
  let bits = 0;
  for (let i = from; i < to; i++) bits |= 1 << i;
  return bits;
}

function countBits(bits: number): number {
  let count = 0;
  for (; bits; bits &= bits - 1) count++;
  return count;
}
