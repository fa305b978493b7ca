/**
 * The owner side of a volume's DTL (docs/dtl.md). Every write and trim is recorded in a bounded backlog
 * (limits.dtlBytesMax) and streamed, batched per event-loop turn, to a DTL stream on a peer router. The
 * backlog is trimmed as the uploader puts TLogs on the backend: a record is tagged with the TLog that was
 * current when its write was applied (an upper bound of the TLog holding it), and goes once that TLog is
 * up. When the peer is lost, another is chosen and the whole backlog is sent again.
 *
 * Modes: `sync` acknowledges a write only once the peer holds it (writes wait while there is no peer);
 * `async` acknowledges as soon as the local append is done and streams behind; `none` records nothing.
 * `dtlInSync` in coordination is true only while a peer holds every acknowledged write that is not on the
 * backend; it is cleared before anything unprotected could be acknowledged, and only the owner at its
 * epoch may write it (a fenced owner's write is refused).
 */
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { DtlMode } from '../shared/coordination.ts';
import { KeelError, isKeelError } from '../shared/errors.ts';
import { limits } from '../shared/limits.ts';
import type { Logger } from '../shared/logger.ts';
import { RpcClient } from '../shared/wire/rpc-client.ts';
import type { Transport } from '../shared/wire/transport.ts';
import { dtlHeaderBytes, writeDtlHeader, type DtlOp } from './dtl-format.ts';
import { coalesceAdjacent, DtlRecordArena } from './dtl-record-arena.ts';
import type { WriteJournal } from './write-journal.ts';

export interface DtlPeerCandidate {
  routerId: string;
  address: string;
}

/** What the journal needs from its volume and router. */
export interface DtlJournalHost {
  volumeName: string;
  volumeId: string;
  ownerEpoch: number;
  transport: Transport;
  logger: Logger;
  /** TLog being written now / last TLog on the backend (the driver's getters). */
  currentTlogSeq(): number;
  tlogsUploadedThrough(): number;
  /** Seals the open SCO and closes the TLog so that the uploader can take them (resolves when done). */
  closeCurrentTlog(): Promise<number>;
  /** A live router other than this one, preferring the least loaded, not in `exclude`. */
  choosePeer(exclude: ReadonlySet<string>): Promise<DtlPeerCandidate | undefined>;
  /** Records the DTL state in coordination at our epoch; false when the epoch moved (we are fenced). */
  publish(state: { dtlPeer?: string; dtlInSync?: boolean; dtlStream?: string }): Promise<boolean>;
  /** Called once, when the journal first holds everything not on the backend (e.g. to drop a replayed DTL). */
  onFirstInSync?: () => void;
}

interface BacklogEntry {
  seq: number;
  /** Header + data, as sent. */
  record: Buffer;
  /** TLog current when the write was applied; undefined until then (not trimmable). */
  tlogTag: number | undefined;
  acked: boolean;
  /** Ends the write's wait: acknowledged (no argument), or refused (every peer's disk full too long; the record stays and is sent later). */
  onAcked: ((refusal?: KeelError) => void) | undefined;
  /** In a batch on the wire: its memory may still be read by the socket. */
  sending: boolean;
  /** Left the backlog (trimmed or cleared): its memory goes back to the arena once not sending. */
  dropped: boolean;
}

type PeerLink = { routerId: string; client: RpcClient };

/** A dtl-append on the wire: `stored` once the peer holds it, `failure` if it was refused or cut. */
interface SentBatch {
  peer: PeerLink;
  entries: BacklogEntry[];
  stored: boolean;
  failure: unknown;
  settled: Promise<void>;
}

export type DtlJournalStatus =
  | { state: 'off' } // mode none
  | { state: 'finding-peer'; reason: string }
  | { state: 'resyncing'; peer: string }
  | { state: 'streaming'; peer: string }
  | { state: 'fenced' }
  | { state: 'closed' };

export class DtlJournal implements WriteJournal {
  private status: DtlJournalStatus = { state: 'off' };
  private readonly streamId = `${String(Date.now()).padStart(15, '0')}${randomBytes(4).toString('hex')}`;
  private readonly backlog: BacklogEntry[] = [];
  private readonly arena = new DtlRecordArena();
  private backlogHead = 0;
  private backlogBytes = 0;
  private lastSeq = 0;
  /** Highest seq sent to the current peer (resent from the first untrimmed after a peer change). */
  private sentSeq = 0;
  private peer: PeerLink | undefined;
  private pumping = false;
  private kickScheduled = false;
  /** Batches on the wire to the peer, oldest first (at most limits.dtlBatchesInFlightMax). */
  private readonly inFlight: SentBatch[] = [];
  /** Wakes the pump while it waits for an outcome: new records arrived, or a batch settled. */
  private wakePump: (() => void) | undefined;
  private spaceWaiters: Array<() => void> = [];
  private readonly trimTimer: NodeJS.Timeout;
  /** TLogs up to this one must be on the backend before we are in sync (what the volume held before the journal). */
  private baselineTlog = Number.POSITIVE_INFINITY;
  private published: { dtlPeer: string; dtlInSync: boolean } | undefined;
  private publishing: Promise<void> = Promise.resolve();
  private rollPending = false;
  /**
   * The TLog closed by the last roll of onTick. Another roll waits until it is on the backend: while
   * uploads are stuck (a backend outage) a roll trims nothing, and rolling every tick made ~5 tiny TLogs
   * a second, each one more object to upload once the backend is back.
   */
  private rolledTlogSeq = 0;
  /** Since when sync mode has had no peer to stream to (undefined: streaming). */
  private peerlessSinceMs: number | undefined;
  /** The peer refused a batch as full: not in sync until a batch goes through again. */
  private peerFull = false;
  /** Batches in a row that peers refused because their disk was full (see pauseAfterNoSpace). */
  private peerNoSpaceStreak = 0;
  /** Since when peers refuse batches for a full disk (undefined: a peer has caught up with the backlog since). */
  private peersFullSinceMs: number | undefined;
  /** Set once peers were full for limits.dtlPeersFullWaitMaxMs: sync writes fail with it instead of waiting. */
  private peersFull: KeelError | undefined;
  private firstInSyncDone = false;
  private readonly excluded = new Set<string>();
  private readonly counters = { records: 0, bytes: 0, batches: 0, peerChanges: 0, resentRecords: 0, earlyRolls: 0, peerlessRolls: 0, waitsForSpace: 0, overlappedBatches: 0, peerNoSpaceRefusals: 0 };

  constructor(
    private readonly host: DtlJournalHost,
    private mode: DtlMode,
  ) {
    this.trimTimer = setInterval(() => this.onTick(), limits.dtlTrimIntervalMs);
    this.trimTimer.unref();
  }

  /** Starts streaming (unless mode none): first closes the TLog so that what the volume held before is uploaded. */
  async start(): Promise<void> {
    if (this.mode === 'none') {
      await this.publish({ dtlPeer: '', dtlInSync: false });
      return;
    }
    // Whatever the record said (a handover leaves "in sync, no peer": nothing outstanding) is not true once
    // this owner may acknowledge writes: until a peer holds them, a takeover must not assume it.
    await this.publish({ dtlPeer: '', dtlInSync: false });
    await this.establishBaseline();
    this.setStatus({ state: 'finding-peer', reason: 'start' });
    this.kick();
  }

  async setMode(mode: DtlMode): Promise<void> {
    if (mode === this.mode) return;
    const from = this.mode;
    this.mode = mode;
    this.host.logger.info({ volume: this.host.volumeName, from, to: mode }, 'DTL mode changed');
    if (mode === 'none') {
      this.dropPeer('mode none');
      this.setStatus({ state: 'off' });
      await this.publish({ dtlPeer: '', dtlInSync: false });
      this.clearBacklog();
      return;
    }
    if (from === 'none') {
      await this.establishBaseline();
      this.setStatus({ state: 'finding-peer', reason: 'mode on' });
      this.kick();
    }
    for (const entry of this.pendingEntries()) if (mode === 'async') this.ack(entry); // async: nobody waits for the peer
  }

  get currentMode(): DtlMode {
    return this.mode;
  }

  // ---------------------------------------------------------------- WriteJournal

  write(offset: number, data: Buffer, apply: () => Promise<void>, clusterCrcs?: Uint32Array): Promise<void> {
    return this.journaled('write', offset, data.length, data, apply, clusterCrcs);
  }

  trim(offset: number, length: number, apply: () => Promise<void>): Promise<void> {
    return this.journaled('trim', offset, length, undefined, apply);
  }

  private async journaled(op: DtlOp, offset: number, length: number, data: Buffer | undefined, apply: () => Promise<void>, clusterCrcs?: Uint32Array): Promise<void> {
    if (this.status.state === 'fenced') throw KeelError.notOwner(this.host.volumeName);
    if (this.mode === 'none' || this.status.state === 'closed') return apply();
    const bytes = dtlHeaderBytes + (data?.length ?? 0);
    if (this.backlogBytes + bytes > limits.dtlBytesMax) await this.waitForSpace(bytes);
    const seq = ++this.lastSeq;
    // One copy, into the arena: the record must not pin the socket chunk the payload arrived in.
    const record = this.arena.take(bytes);
    if (data !== undefined) data.copy(record, dtlHeaderBytes);
    writeDtlHeader(record, 0, seq, op, offset, length, data, clusterCrcs);
    let acked!: Promise<KeelError | undefined>;
    const entry: BacklogEntry = { seq, record, tlogTag: undefined, acked: false, onAcked: undefined, sending: false, dropped: false };
    // Resolves with the refusal rather than rejecting: nobody awaits it when apply() fails or in async mode.
    acked = new Promise<KeelError | undefined>((resolve) => (entry.onAcked = resolve));
    this.backlog.push(entry);
    this.backlogBytes += bytes;
    this.counters.records += 1;
    this.counters.bytes += bytes;
    this.kick();
    try {
      await apply();
    } finally {
      entry.tlogTag = this.host.currentTlogSeq(); // an upper bound of the TLog that holds it
    }
    if (this.mode === 'sync') {
      if (this.peersFull !== undefined && !entry.acked) throw this.peersFull;
      const refusal = await acked;
      if (refusal !== undefined) throw refusal;
      if ((this.status as DtlJournalStatus).state === 'fenced') throw KeelError.notOwner(this.host.volumeName);
    }
  }

  // ---------------------------------------------------------------- streaming

  private kick(): void {
    if (this.kickScheduled) return;
    this.kickScheduled = true;
    setImmediate(() => {
      this.kickScheduled = false;
      if (this.pumping) this.wakePump?.();
      else void this.pump();
    }); // after this turn: every write of the turn goes in one batch
  }

  /**
   * Sends the backlog in batches, up to limits.dtlBatchesInFlightMax of them on the wire at once: a new
   * turn's records go out while the peer still stores the last turn's, instead of queueing behind its ack
   * (stop-and-wait held every write for a whole peer round trip). The peer appends a stream's batches in
   * the order they arrive, so outcomes are taken oldest first; after a failure the later batches (refused
   * as out of sequence, or cut with the connection) settle before anything is sent again.
   */
  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.isStreamingMode()) {
        if (this.peer === undefined) {
          await this.settleInFlight(); // batches to a lost peer: their records are sent again
          await this.findPeer();
          continue;
        }
        const batch = this.inFlight.length < limits.dtlBatchesInFlightMax ? this.nextBatch() : undefined;
        if (batch !== undefined) {
          this.send(this.peer, batch);
          continue;
        }
        const oldest = this.inFlight[0];
        if (oldest === undefined) {
          this.caughtUp();
          if (this.status.state === 'resyncing') this.setStatus({ state: 'streaming', peer: this.peer.routerId });
          this.maybePublishInSync();
          break;
        }
        if (oldest.failure === undefined && !oldest.stored) {
          await this.nextPumpEvent(oldest); // its outcome, or new records to send
          continue;
        }
        this.inFlight.shift();
        if (oldest.stored) {
          this.counters.batches += 1;
          this.peerFull = false;
          for (const entry of oldest.entries) this.ack(entry);
          continue;
        }
        await this.settleInFlight();
        const err = oldest.failure;
        if (isKeelError(err, 'FENCED')) return this.fence(err);
        if (isKeelError(err, 'BUSY')) {
          // The peer is full: wait for uploads to trim, then send again from where we were.
          this.sentSeq = oldest.entries[0]!.seq - 1;
          this.peerFull = true;
          await this.unpublishInSync('peer full');
          await sleep(limits.dtlPeerRetryMs);
          continue;
        }
        this.lostPeer(oldest.peer, err);
        if (isKeelError(err, 'NO_SPACE')) await this.pauseAfterNoSpace(err);
      }
    } finally {
      this.pumping = false;
      this.wakePump = undefined;
    }
  }

  /**
   * A peer whose disk is full is alive, so connecting to the next one succeeds at once; without a pause
   * the journal would cycle through the peers as fast as they refuse. The pause doubles up to
   * limits.dtlPeerNoSpaceBackoffMsMax until a peer catches up; sync writes wait meanwhile, at most
   * dtlPeersFullWaitMaxMs (refuseWaitingWrites).
   */
  private async pauseAfterNoSpace(err: KeelError): Promise<void> {
    this.peerNoSpaceStreak += 1;
    this.counters.peerNoSpaceRefusals += 1;
    this.peersFullSinceMs ??= Date.now();
    if (this.peersFull === undefined && Date.now() - this.peersFullSinceMs >= limits.dtlPeersFullWaitMaxMs) this.refuseWaitingWrites(err);
    await sleep(Math.min(limits.dtlPeerRetryMs * 2 ** (this.peerNoSpaceStreak - 1), limits.dtlPeerNoSpaceBackoffMsMax));
  }

  /**
   * The peer holds the whole backlog. Only this ends a full-disk episode: a nearly full peer still stores
   * a small batch now and then (into the last page of a segment), and resetting on each of those kept
   * writes trickling through at 14 KiB/s, each waiting until the edge timed it out.
   */
  private caughtUp(): void {
    if (this.peersFullSinceMs === undefined) return;
    this.peerNoSpaceStreak = 0;
    this.peersFullSinceMs = undefined;
    if (this.peersFull === undefined) return;
    this.peersFull = undefined;
    this.host.logger.warn({ volume: this.host.volumeName }, 'DTL peer has room again: sync writes are acknowledged');
  }

  /**
   * Peers have been full for dtlPeersFullWaitMaxMs: sync writes fail with NO_SPACE instead of waiting
   * until the edge gives up on them (wireRequestTimeoutMs, then EIO): an NBD client sees ENOSPC, which QEMU
   * pauses the guest on. Their records stay in the backlog and are sent once a peer has room.
   */
  private refuseWaitingWrites(cause: KeelError): void {
    this.peersFull = KeelError.noSpace(`volume '${this.host.volumeName}': no DTL peer has room for its writes (${cause.message})`);
    this.host.logger.warn({ volume: this.host.volumeName, err: cause.message }, 'DTL peers full: sync writes fail with ENOSPC until one has room');
    for (const entry of this.pendingEntries()) {
      if (entry.acked) continue;
      entry.onAcked?.(this.peersFull);
      entry.onAcked = undefined;
    }
  }

  /** Puts one batch on the wire now, so the peer stores it while this router appends it locally. */
  private send(peer: PeerLink, batch: { entries: BacklogEntry[]; payload: Buffer[] }): void {
    for (const entry of batch.entries) entry.sending = true;
    const sent: SentBatch = { peer, entries: batch.entries, stored: false, failure: undefined, settled: Promise.resolve() };
    sent.settled = peer.client
      .request({ op: 'dtl-append', volumeId: this.host.volumeId, epoch: this.host.ownerEpoch, streamId: this.streamId }, batch.payload, limits.dtlRequestTimeoutMs)
      .then(
        () => void (sent.stored = true),
        (err: unknown) => void (sent.failure = err ?? new Error('dtl-append failed')),
      )
      .finally(() => {
        // Settled, and on failure the connection is closed: the socket no longer reads these records.
        for (const entry of sent.entries) {
          entry.sending = false;
          if (entry.dropped) this.arena.release(entry.record);
        }
        this.wakePump?.();
      });
    peer.client.flush();
    if (this.inFlight.length > 0) this.counters.overlappedBatches += 1;
    this.inFlight.push(sent);
  }

  private nextPumpEvent(oldest: SentBatch): Promise<void> {
    return new Promise<void>((resolve) => {
      this.wakePump = resolve;
      if (oldest.stored || oldest.failure !== undefined) resolve();
    }).finally(() => (this.wakePump = undefined));
  }

  private async settleInFlight(): Promise<void> {
    const batches = this.inFlight.splice(0);
    await Promise.all(batches.map((batch) => batch.settled));
  }

  private isStreamingMode(): boolean {
    return this.mode !== 'none' && this.status.state !== 'closed' && this.status.state !== 'fenced' && this.status.state !== 'off';
  }

  private nextBatch(): { entries: BacklogEntry[]; payload: Buffer[] } | undefined {
    const entries: BacklogEntry[] = [];
    let bytes = 0;
    // Seqs in the backlog are consecutive, so the first unsent record is found without a scan.
    const head = this.backlog[this.backlogHead];
    const first = head === undefined ? this.backlog.length : this.backlogHead + Math.max(0, this.sentSeq + 1 - head.seq);
    for (let index = first; index < this.backlog.length; index++) {
      const entry = this.backlog[index]!;
      if (bytes > 0 && bytes + entry.record.length > limits.dtlBatchBytesMax) break;
      entries.push(entry);
      bytes += entry.record.length;
    }
    if (entries.length === 0) return undefined;
    this.sentSeq = entries[entries.length - 1]!.seq;
    return { entries, payload: coalesceAdjacent(entries.map((e) => e.record)) };
  }

  private drop(entry: BacklogEntry): void {
    entry.dropped = true;
    if (!entry.sending) this.arena.release(entry.record);
  }

  private ack(entry: BacklogEntry): void {
    if (entry.acked) return;
    entry.acked = true;
    entry.onAcked?.();
    entry.onAcked = undefined;
  }

  private *pendingEntries(): Generator<BacklogEntry> {
    for (let index = this.backlogHead; index < this.backlog.length; index++) yield this.backlog[index]!;
  }

  private async findPeer(): Promise<void> {
    // Always written, even when the record already says "not in sync": the write is a compare-and-set on
    // this owner's epoch, so an owner that was frozen through a takeover learns it is fenced here, before
    // it opens a stream on a router that never heard of the takeover.
    await this.unpublishInSync(this.status.state === 'finding-peer' ? this.status.reason : 'peer lost', { always: true });
    while (this.isStreamingMode()) {
      const candidate = await this.host.choosePeer(this.excluded).catch(() => undefined);
      if (candidate === undefined) {
        this.excluded.clear(); // none left: try everyone again after a pause
        await sleep(limits.dtlPeerRetryMs);
        continue;
      }
      let client: RpcClient | undefined;
      try {
        client = await RpcClient.connect(candidate.address, {
          transport: this.host.transport,
          logger: this.host.logger,
          role: 'router',
          requestTimeoutMs: limits.dtlRequestTimeoutMs,
          connectTimeoutMs: limits.dtlRequestTimeoutMs,
        });
        await client.request({ op: 'dtl-open', volumeId: this.host.volumeId, epoch: this.host.ownerEpoch, streamId: this.streamId });
      } catch (err) {
        client?.close();
        if (isKeelError(err, 'FENCED')) return this.fence(err);
        this.host.logger.warn({ volume: this.host.volumeName, peer: candidate.routerId, err: (err as Error).message }, 'DTL peer unusable: trying another');
        this.excluded.add(candidate.routerId);
        await sleep(limits.dtlPeerRetryMs);
        continue;
      }
      if (!this.isStreamingMode()) {
        client.close(); // closed or fenced while we connected
        return;
      }
      const link: PeerLink = { routerId: candidate.routerId, client };
      client.onClose((reason) => {
        if (this.peer === link) this.lostPeer(link, reason);
      });
      this.peer = link;
      this.excluded.clear();
      const resend = this.backlog.length - this.backlogHead;
      this.counters.peerChanges += 1;
      this.counters.resentRecords += resend;
      this.sentSeq = this.backlogHead < this.backlog.length ? this.backlog[this.backlogHead]!.seq - 1 : this.lastSeq;
      this.setStatus({ state: 'resyncing', peer: candidate.routerId });
      this.host.logger.info({ volume: this.host.volumeName, peer: candidate.routerId, resendRecords: resend }, 'DTL peer chosen');
      return;
    }
  }

  private lostPeer(link: PeerLink, err: unknown): void {
    if (this.peer !== link) return;
    this.peer = undefined;
    link.client.close();
    this.excluded.add(link.routerId);
    if (!this.isStreamingMode()) return;
    const reason = `${isKeelError(err) ? err.code : 'error'}: ${(err as Error).message}`;
    this.setStatus({ state: 'finding-peer', reason });
    this.kick();
  }

  private dropPeer(reason: string): void {
    const link = this.peer;
    this.peer = undefined;
    if (link === undefined) return;
    link.client.request({ op: 'dtl-drop', volumeId: this.host.volumeId, epoch: this.host.ownerEpoch, streamId: this.streamId }).catch(() => undefined).finally(() => link.client.close());
    this.host.logger.debug({ volume: this.host.volumeName, peer: link.routerId, reason }, 'DTL stream dropped');
  }

  /** A newer owner exists: nothing more may be acknowledged here. */
  private fence(err: unknown): void {
    if (this.status.state === 'fenced') return;
    this.host.logger.warn({ volume: this.host.volumeName, err: (err as Error).message }, 'DTL fenced: a newer owner exists');
    this.setStatus({ state: 'fenced' });
    this.peer?.client.close();
    this.peer = undefined;
    for (const entry of this.pendingEntries()) this.ack(entry); // waiters wake and see 'fenced'
    for (const wake of this.spaceWaiters.splice(0)) wake();
  }

  // ---------------------------------------------------------------- trimming and state

  private onTick(): void {
    if (this.status.state === 'closed') return;
    this.trimUploaded();
    const early = this.mode !== 'none' && this.backlogBytes > limits.dtlBytesMax * limits.dtlEarlyRollFraction;
    const peerless = this.peerlessRollDue(Date.now()); // always asked: it tracks since when there is no peer
    if ((early || peerless) && this.rollUseful()) {
      this.counters[early ? 'earlyRolls' : 'peerlessRolls'] += 1;
      this.roll();
    }
    this.maybePublishInSync();
  }

  /** No roll is under way, and the last one's TLog is on the backend: while it is not, a roll trims nothing sooner. */
  private rollUseful(): boolean {
    return !this.rollPending && this.host.tlogsUploadedThrough() >= this.rolledTlogSeq;
  }

  private roll(): void {
    this.rollPending = true;
    this.host
      .closeCurrentTlog()
      .then((closedSeq) => {
        // The driver skips a roll of a TLog with nothing to upload; only a TLog that was closed is waited for.
        if (this.host.currentTlogSeq() > closedSeq) this.rolledTlogSeq = closedSeq;
      })
      .catch(() => undefined)
      .finally(() => (this.rollPending = false));
  }

  /**
   * Sync writes wait for a peer; with none to be had (every other router gone) they would wait until the
   * edge times them out, again and again. Every dtlPeerlessRollMs without a peer, a roll puts what waits
   * on the backend, and trimUploaded acknowledges it there.
   */
  private peerlessRollDue(nowMs: number): boolean {
    // Peers that refuse for a full disk have their own rule (dtlPeersFullWaitMaxMs: the writes fail with ENOSPC).
    if (this.status.state === 'streaming' || this.mode !== 'sync' || this.peersFullSinceMs !== undefined) {
      this.peerlessSinceMs = undefined;
      return false;
    }
    this.peerlessSinceMs ??= nowMs;
    if (this.backlogHead === this.backlog.length || nowMs - this.peerlessSinceMs < limits.dtlPeerlessRollMs) return false;
    this.peerlessSinceMs = nowMs; // the next roll, if still peerless, one interval later
    return true;
  }

  /** Drops the backlog records whose TLog is on the backend, and tells the peer. */
  trimUploaded(): void {
    const uploaded = this.host.tlogsUploadedThrough();
    let trimmedSeq = 0;
    while (this.backlogHead < this.backlog.length) {
      const entry = this.backlog[this.backlogHead]!;
      if (entry.tlogTag === undefined || entry.tlogTag > uploaded) break;
      this.backlogBytes -= entry.record.length;
      trimmedSeq = entry.seq;
      this.ack(entry); // on the backend: durable, so a writer still waiting for the peer may go
      this.drop(entry);
      this.backlogHead += 1;
    }
    if (trimmedSeq === 0) return;
    if (this.backlogHead > 1024 || this.backlogHead === this.backlog.length) {
      this.backlog.splice(0, this.backlogHead);
      this.backlogHead = 0;
    }
    for (const wake of this.spaceWaiters.splice(0)) wake();
    const peer = this.peer;
    if (peer !== undefined && trimmedSeq <= this.sentSeq) {
      peer.client
        .request({ op: 'dtl-trim', volumeId: this.host.volumeId, epoch: this.host.ownerEpoch, streamId: this.streamId, throughSeq: trimmedSeq })
        .catch(() => undefined); // a lost trim only keeps records longer
    }
  }

  get inSync(): boolean {
    return this.status.state === 'streaming' && !this.peerFull && this.host.tlogsUploadedThrough() >= this.baselineTlog;
  }

  private maybePublishInSync(): void {
    if (!this.inSync || this.peer === undefined) return;
    const peer = this.peer.routerId;
    if (this.published?.dtlInSync && this.published.dtlPeer === peer) return;
    void this.publish({ dtlPeer: peer, dtlInSync: true, dtlStream: this.streamId }).then(() => {
      if (!this.firstInSyncDone && this.published?.dtlInSync) {
        this.firstInSyncDone = true;
        this.host.onFirstInSync?.();
      }
    });
  }

  private async unpublishInSync(reason: string, options: { always?: boolean } = {}): Promise<void> {
    const wasInSync = this.published === undefined || this.published.dtlInSync;
    if (!wasInSync && options.always !== true) return;
    if (wasInSync) this.host.logger.warn({ volume: this.host.volumeName, reason }, 'DTL not in sync');
    await this.publish({ dtlPeer: this.published?.dtlPeer ?? '', dtlInSync: false });
  }

  private publish(state: { dtlPeer: string; dtlInSync: boolean; dtlStream?: string }): Promise<void> {
    this.publishing = this.publishing.then(async () => {
      if (this.status.state === 'fenced' || this.status.state === 'closed') return;
      try {
        const written = await this.host.publish(state);
        if (!written) return this.fence(KeelError.notOwner(this.host.volumeName));
        this.published = state;
        this.host.logger.info({ volume: this.host.volumeName, ...state }, 'DTL state recorded');
      } catch (err) {
        // Coordination unreachable: keep the old record; in-sync is retried at the next tick.
        this.host.logger.warn({ volume: this.host.volumeName, err: (err as Error).message }, 'could not record the DTL state');
        if (!state.dtlInSync) this.published = undefined;
      }
    });
    return this.publishing;
  }

  private async waitForSpace(bytes: number): Promise<void> {
    while (this.backlogBytes + bytes > limits.dtlBytesMax && this.backlogBytes > 0 && this.status.state !== 'fenced') {
      this.counters.waitsForSpace += 1;
      await new Promise<void>((resolve) => this.spaceWaiters.push(resolve));
    }
  }

  /** TLogs up to the current one must reach the backend before the DTL covers everything. */
  private async establishBaseline(): Promise<void> {
    await this.host.closeCurrentTlog().catch(() => undefined);
    this.baselineTlog = this.host.currentTlogSeq() - 1;
  }

  private clearBacklog(): void {
    for (const entry of this.pendingEntries()) {
      this.ack(entry);
      this.drop(entry);
    }
    this.backlog.length = 0;
    this.backlogHead = 0;
    this.backlogBytes = 0;
    for (const wake of this.spaceWaiters.splice(0)) wake();
  }

  /**
   * Stops the journal after the driver closed. When every record reached the backend (a clean close that
   * drained its uploads) the peer's stream is dropped; otherwise it stays for a takeover or our restart.
   */
  async close(): Promise<{ drained: boolean }> {
    clearInterval(this.trimTimer);
    this.trimUploaded();
    const drained = this.backlogHead === this.backlog.length;
    if (drained) this.dropPeer('closed with everything on the backend');
    else this.peer?.client.close();
    this.peer = undefined;
    this.setStatus({ state: 'closed' });
    this.clearBacklog();
    await this.publishing;
    return { drained };
  }

  stats(): Record<string, unknown> {
    return {
      mode: this.mode,
      state: this.status.state,
      peer: this.peer?.routerId ?? '',
      inSync: this.inSync,
      backlogRecords: this.backlog.length - this.backlogHead,
      backlogBytes: this.backlogBytes,
      ...this.counters,
      ...this.arena.stats(),
    };
  }

  private setStatus(next: DtlJournalStatus): void {
    const from = this.status.state;
    if (from === 'closed' || (from === 'fenced' && next.state !== 'closed')) return;
    this.status = next;
    if (from === next.state && next.state !== 'finding-peer') return;
    const log = { volume: this.host.volumeName, from, to: next.state, ...('peer' in next ? { peer: next.peer } : {}), ...('reason' in next ? { reason: next.reason } : {}) };
    if (next.state === 'finding-peer' || next.state === 'fenced') this.host.logger.warn(log, 'DTL journal status');
    else this.host.logger.info(log, 'DTL journal status');
  }
}
