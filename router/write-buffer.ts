/**
 * The router's write buffer: local disk bytes of SCOs that are not yet evictable (the open SCO and closed
 * SCOs whose TLog is not yet on the backend), shared by every volume of the router (one local disk).
 * Bounded by writeBufferBytesMax (docs/backend-volumes.md "Write buffer"):
 *
 * - below the soft threshold (limits.writeBufferSoftFraction) writes pass at once;
 * - between soft and hard, each write is delayed in proportion to the overshoot (0 at soft, up to
 *   writeThrottleDelayMaxMs at the hard limit) so ingest slows to what the backend absorbs;
 * - at the hard limit a write waits until uploads make room. It is never failed and never dropped.
 *   Progress guarantee: a volume with nothing in its upload pipeline is let through (its open SCO must
 *   fill up and seal before its bytes can ever be uploaded), and waiting writers ask every volume to roll
 *   its TLog early (pressure), so SCOs of a half-full TLog can become evictable.
 *
 * Evictable SCOs stay on disk (they serve reads locally) until the total of local SCO bytes exceeds the
 * bound; then the oldest are evicted first. A dead SCO (its volume maps nothing in it any more: `isDead`,
 * `evictNow`) is evicted as soon as it is evictable, bound or not: it serves no read of the volume, and
 * its file, turned into a spare, saves the next SCO from filling new page-cache pages (docs/volume-driver.md,
 * "Dead SCOs leave the write buffer at once").
 */
import { limits } from '../shared/limits.ts';
import { silentLogger, type Logger } from '../shared/logger.ts';

export interface WriteBufferOptions {
  bytesMax: number;
  softFraction?: number;
  delayMaxMs?: number;
  logger?: Logger;
}

export interface WriteBufferStats {
  bytesMax: number;
  softBytes: number;
  pendingBytes: number;
  evictableBytes: number;
  /** Writes delayed between the soft and the hard limit, and the total of those delays. */
  throttledWrites: number;
  throttleDelayMsTotal: number;
  /** Writes that waited at the hard limit, and how long they waited in total. */
  blockedWrites: number;
  blockedMsTotal: number;
  writesWaitingNow: number;
  evictedScos: number;
  evictedBytes: number;
  /** Of those, SCOs evicted because they were dead rather than for the bound. */
  deadScosEvicted: number;
  evictionErrors: number;
}

interface EvictableSco {
  account: WriteBufferAccount;
  scoSeq: number;
  bytes: number;
  evict: () => Promise<void>;
}

/** One volume's share of the write buffer. */
export class WriteBufferAccount {
  pendingBytes = 0;
  closed = false;

  constructor(
    private readonly buffer: WriteBuffer,
    readonly volumeName: string,
    /** True while the volume has SCOs or TLogs waiting for upload (so waiting can end). */
    readonly hasUploadsPending: () => boolean,
    /** Asks the volume to close its TLog early so its closed SCOs can become evictable. */
    readonly relievePressure: () => void,
    /** True when the volume maps nothing in the SCO any more. */
    readonly isDead: (scoSeq: number) => boolean = () => false,
  ) {}

  /** The SCO just died: evict it now if it is evictable (else when it becomes so, through isDead). */
  evictNow(scoSeq: number): void {
    this.buffer.evictNow(this, scoSeq);
  }

  /** Clusters appended to the open SCO. */
  addPending(bytes: number): void {
    this.pendingBytes += bytes;
    this.buffer.changePending(bytes);
  }

  /** A SCO's TLog is on the backend: its bytes no longer count against the bound; evicted when space is needed. */
  markEvictable(scoSeq: number, bytes: number, evict: () => Promise<void>): void {
    const moved = Math.min(bytes, this.pendingBytes);
    this.pendingBytes -= moved;
    this.buffer.changePending(-moved);
    this.buffer.addEvictable({ account: this, scoSeq, bytes, evict });
  }

  /** Local SCO bytes that are already evictable when the volume opens (their TLog was uploaded before). */
  addEvictable(scoSeq: number, bytes: number, evict: () => Promise<void>): void {
    this.buffer.addEvictable({ account: this, scoSeq, bytes, evict });
  }

  /** True when a write of `bytes` goes through at once (the common case: no promise to make or wait for). */
  admitsNow(bytes: number): boolean {
    return this.buffer.admitsNow(bytes);
  }

  /** Waits (or delays) a write of `bytes` according to the bound. */
  admit(bytes: number): Promise<void> {
    return this.buffer.admit(this, bytes);
  }

  /** The volume closed: its bytes leave the accounting (they are re-counted when it opens again). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.buffer.changePending(-this.pendingBytes);
    this.pendingBytes = 0;
    this.buffer.removeAccount(this);
  }
}

export class WriteBuffer {
  readonly bytesMax: number;
  readonly softBytes: number;
  private readonly delayMaxMs: number;
  private readonly logger: Logger;
  private pendingBytes = 0;
  private evictableBytes = 0;
  /** Oldest first (Map keeps insertion order). */
  private readonly evictable = new Map<string, EvictableSco>();
  /** Keys of evictable SCOs that are dead: evicted before any other, bound or not. */
  private readonly dead = new Set<string>();
  private readonly accounts = new Set<WriteBufferAccount>();
  private readonly waiters = new Set<() => void>();
  private evicting = false;
  private lastLogMs = 0;
  private lastPressureMs = 0;
  private readonly counters = {
    throttledWrites: 0,
    throttleDelayMsTotal: 0,
    blockedWrites: 0,
    blockedMsTotal: 0,
    evictedScos: 0,
    evictedBytes: 0,
    deadScosEvicted: 0,
    evictionErrors: 0,
  };

  constructor(options: WriteBufferOptions) {
    this.bytesMax = options.bytesMax;
    this.softBytes = Math.floor(options.bytesMax * (options.softFraction ?? limits.writeBufferSoftFraction));
    this.delayMaxMs = options.delayMaxMs ?? limits.writeThrottleDelayMaxMs;
    this.logger = options.logger ?? silentLogger();
  }

  account(volumeName: string, hasUploadsPending: () => boolean, relievePressure: () => void, isDead?: (scoSeq: number) => boolean): WriteBufferAccount {
    const account = new WriteBufferAccount(this, volumeName, hasUploadsPending, relievePressure, isDead);
    this.accounts.add(account);
    return account;
  }

  stats(): WriteBufferStats {
    return {
      bytesMax: this.bytesMax,
      softBytes: this.softBytes,
      pendingBytes: this.pendingBytes,
      evictableBytes: this.evictableBytes,
      writesWaitingNow: this.waiters.size,
      ...this.counters,
    };
  }

  /** @internal (WriteBufferAccount) */
  changePending(deltaBytes: number): void {
    this.pendingBytes += deltaBytes;
    if (deltaBytes < 0) this.wakeWaiters();
    this.evictIfNeeded();
  }

  /** @internal */
  addEvictable(entry: EvictableSco): void {
    const key = `${entry.account.volumeName}/${entry.scoSeq}`;
    if (this.evictable.has(key)) return;
    this.evictable.set(key, entry);
    this.evictableBytes += entry.bytes;
    if (entry.account.isDead(entry.scoSeq)) this.dead.add(key);
    this.evictIfNeeded();
  }

  /** @internal (WriteBufferAccount.evictNow) */
  evictNow(account: WriteBufferAccount, scoSeq: number): void {
    const key = `${account.volumeName}/${scoSeq}`;
    if (!this.evictable.has(key)) return;
    this.dead.add(key);
    this.evictIfNeeded();
  }

  /** @internal */
  removeAccount(account: WriteBufferAccount): void {
    this.accounts.delete(account);
    for (const [key, entry] of this.evictable) {
      if (entry.account !== account) continue;
      this.evictable.delete(key);
      this.dead.delete(key);
      this.evictableBytes -= entry.bytes;
    }
    this.wakeWaiters();
  }

  /** @internal */
  admitsNow(bytes: number): boolean {
    return this.pendingBytes + bytes <= this.softBytes;
  }

  async admit(account: WriteBufferAccount, bytes: number): Promise<void> {
    if (this.admitsNow(bytes)) return;
    if (this.pendingBytes < this.bytesMax) {
      const overshoot = (this.pendingBytes - this.softBytes) / Math.max(1, this.bytesMax - this.softBytes);
      const delayMs = Math.max(1, Math.round(this.delayMaxMs * Math.min(1, Math.max(0, overshoot))));
      this.counters.throttledWrites += 1;
      this.counters.throttleDelayMsTotal += delayMs;
      this.logThrottle('write buffer above its soft limit: slowing ingest');
      await sleep(delayMs);
      return;
    }
    if (!account.hasUploadsPending()) return; // its bytes can only become uploadable by writing on
    const startedMs = Date.now();
    this.counters.blockedWrites += 1;
    this.logThrottle('write buffer full: writes wait for uploads');
    while (this.pendingBytes >= this.bytesMax && !account.closed && account.hasUploadsPending()) {
      this.askForRelief();
      await new Promise<void>((resolve) => {
        const wake = () => {
          clearTimeout(timer);
          this.waiters.delete(wake);
          resolve();
        };
        // Re-check now and then: relief may come from a TLog roll rather than from a release.
        const timer = setTimeout(wake, 250);
        this.waiters.add(wake);
      });
    }
    this.counters.blockedMsTotal += Date.now() - startedMs;
  }

  private askForRelief(): void {
    const nowMs = Date.now();
    if (nowMs - this.lastPressureMs < 200) return;
    this.lastPressureMs = nowMs;
    for (const account of this.accounts) account.relievePressure();
  }

  private wakeWaiters(): void {
    for (const wake of [...this.waiters]) wake();
  }

  private logThrottle(message: string): void {
    const nowMs = Date.now();
    if (nowMs - this.lastLogMs < limits.throttleLogIntervalMs) return;
    this.lastLogMs = nowMs;
    this.logger.warn({ ...this.stats() }, message);
  }

  /** Deletes dead SCOs, then the oldest evictable ones while all local SCO bytes exceed the bound (one at a time). */
  private evictIfNeeded(): void {
    if (this.evicting || !this.mustEvict()) return;
    this.evicting = true;
    void (async () => {
      try {
        while (this.mustEvict()) {
          const key: string = this.dead.values().next().value ?? this.evictable.keys().next().value!;
          const entry = this.evictable.get(key)!;
          const wasDead = this.dead.delete(key);
          this.evictable.delete(key);
          this.evictableBytes -= entry.bytes;
          try {
            await entry.evict();
            this.counters.evictedScos += 1;
            this.counters.evictedBytes += entry.bytes;
            if (wasDead) this.counters.deadScosEvicted += 1;
          } catch (err) {
            this.counters.evictionErrors += 1;
            this.logger.warn({ err, volume: entry.account.volumeName, sco: entry.scoSeq }, 'evicting a SCO failed (it stays on disk)');
          }
        }
      } finally {
        this.evicting = false;
      }
    })();
  }

  private mustEvict(): boolean {
    return this.dead.size > 0 || (this.pendingBytes + this.evictableBytes > this.bytesMax && this.evictable.size > 0);
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
