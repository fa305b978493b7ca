/**
 * One bit per cluster of a volume: the clusters a clone trimmed (they read as zeros and never fall through
 * to the parent snapshot again). 1 bit per cluster = 32 KiB per GiB of volume; grows with the volume.
 */
export class ClusterMask {
  private bits: Uint8Array;

  constructor(clusterCount = 0) {
    this.bits = new Uint8Array(Math.ceil(clusterCount / 8));
  }

  has(lba: number): boolean {
    const byte = lba >>> 3;
    return byte < this.bits.length && (this.bits[byte] & (1 << (lba & 7))) !== 0;
  }

  set(lba: number, count: number): void {
    if (count <= 0) return;
    this.ensure(lba + count);
    let at = lba;
    const end = lba + count;
    while (at < end && (at & 7) !== 0) this.bits[at >>> 3] |= 1 << (at++ & 7);
    if (end - at >= 8) {
      const wholeEnd = end & ~7;
      this.bits.fill(0xff, at >>> 3, wholeEnd >>> 3);
      at = wholeEnd;
    }
    while (at < end) this.bits[at >>> 3] |= 1 << (at++ & 7);
  }

  clear(lba: number, count: number): void {
    const end = Math.min(lba + count, this.bits.length * 8);
    for (let at = lba; at < end; at++) this.bits[at >>> 3] &= ~(1 << (at & 7));
  }

  copy(): ClusterMask {
    const mask = new ClusterMask();
    mask.bits = this.bits.slice();
    return mask;
  }

  memoryBytes(): number {
    return this.bits.byteLength;
  }

  private ensure(clusterCount: number): void {
    const bytes = Math.ceil(clusterCount / 8);
    if (bytes <= this.bits.length) return;
    const grown = new Uint8Array(Math.max(bytes, this.bits.length * 2));
    grown.set(this.bits);
    this.bits = grown;
  }
}
