/**
 * High availability of the volumes a router owns (docs/high-availability.md, docs/dtl.md):
 *
 * - every open volume gets a DtlJournal (its writes stream to a DTL on another router);
 * - takeover: a volume whose recorded owner is gone (heartbeat older than takeoverHeartbeatAgeMinMs and
 *   unreachable, or marked down) is claimed with the epoch compare-and-set, restored from the backend
 *   TLogs (the local copy of an older epoch is dropped first), and the old owner's DTL is sealed, read and
 *   replayed before the volume serves. Refused (TAKEOVER_REFUSED, logged) when the DTL was not in sync
 *   unless forced;
 * - handover: `handOver` moves a volume to another router with nothing lost and no error for the edge;
 *   `drain` hands over every volume (router drain, SIGTERM of a rolling upgrade).
 */
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { cloneFamilyPin, isRouterAlive, ownerHasFailed, volumeDtlMode, type Coordination, type RouterRecord, type VolumeRecord } from '../shared/coordination.ts';
import { KeelError } from '../shared/errors.ts';
import { limits } from '../shared/limits.ts';
import { silentLogger, type Logger } from '../shared/logger.ts';
import { leastLoadedDtlPeer, leastLoadedRouter, placeableRouters } from '../shared/placement.ts';
import { RpcClient } from '../shared/wire/rpc-client.ts';
import type { Transport } from '../shared/wire/transport.ts';
import { decodeDtlRecords } from './dtl-format.ts';
import { DtlJournal, type DtlPeerCandidate } from './dtl-journal.ts';
import type { DtlStreamInfo } from './dtl-store.ts';
import { VolumeDriver } from './volume-driver.ts';
import type { VolumeLifecycle } from './volume-lifecycle.ts';
import type { BackendObjectStore } from './volume-backend.ts';
import type { VolumeRegistry } from './volume-registry.ts';

/**
 * `<volume dir>.epoch`: the epoch the local copy belongs to, and, between a takeover's claim and the end
 * of its DTL replay, where the replay comes from — so a crash or failed open in between starts over.
 */
interface EpochFile {
  epoch: number;
  /** fromStream: the old epoch's last in-sync stream (VolumeRecord.dtlStream); older streams are not replayed. */
  replay?: { peer: string; oldEpoch: number; fromStream?: string };
}

export class VolumeHa implements VolumeLifecycle {
  private readonly journals = new Map<string, DtlJournal>();
  private readonly counters = { takeovers: 0, takeoversRefused: 0, handovers: 0, replayedRecords: 0 };

  constructor(
    private readonly routerId: string,
    private readonly registry: VolumeRegistry,
    private readonly coordination: Coordination,
    private readonly transport: Transport,
    private readonly logger: Logger,
    /** False when the vPool has no backend: nothing can be taken over or trimmed, so no DTL. */
    private readonly hasBackend: boolean,
  ) {}

  // ---------------------------------------------------------------- VolumeLifecycle

  async beforeOpen(record: VolumeRecord, dir: string): Promise<void> {
    const stored = await readEpochFile(dir);
    if ((stored !== undefined && stored.epoch !== record.ownerEpoch) || stored?.replay !== undefined) {
      // Our copy is from an older ownership (or a takeover's replay did not finish): the backend (+ DTL) is the truth.
      await VolumeDriver.destroy(dir);
      const why = stored?.epoch === record.ownerEpoch ? 'local copy dropped: the takeover restores it from the backend and the DTL' : 'local copy of an older epoch dropped';
      this.logger.info({ volume: record.name, localEpoch: stored?.epoch, ownerEpoch: record.ownerEpoch }, why);
    }
  }

  async afterOpen(record: VolumeRecord, driver: VolumeDriver): Promise<void> {
    const dir = this.registry.volumeDir(record.name);
    const stored = await readEpochFile(dir);
    const replay = stored?.epoch === record.ownerEpoch ? stored.replay : undefined;
    const peer = replay ? (await this.coordination.listRouters()).find((r) => r.id === replay.peer) : undefined;
    if (replay && !peer) throw KeelError.noOwner(record.name, 0); // the DTL peer vanished from coordination: cannot replay
    const streams = replay && peer ? await this.replayDtl(record, driver, peer, replay.oldEpoch, replay.fromStream) : [];
    await writeEpochFile(dir, { epoch: record.ownerEpoch });
    if (!this.hasBackend) return;
    const journal = new DtlJournal(
      {
        volumeName: record.name,
        volumeId: record.id,
        ownerEpoch: record.ownerEpoch,
        transport: this.transport,
        logger: this.logger,
        currentTlogSeq: () => driver.currentTlogSeq,
        tlogsUploadedThrough: () => driver.tlogsUploadedThrough ?? 0,
        closeCurrentTlog: () => driver.closeCurrentTlog(),
        choosePeer: (exclude) => this.choosePeer(exclude),
        publish: (state) => this.coordination.setVolumeDtl(record.name, record.ownerEpoch, state),
        onFirstInSync: () => {
          // The replayed writes are on the backend now: the old owner's DTL is no longer needed.
          if (replay && peer && streams.length > 0) void this.dropOldDtl(peer, record.id, replay.oldEpoch);
        },
      },
      volumeDtlMode(record),
    );
    driver.journal = journal;
    this.journals.set(record.name, journal);
    await journal.start();
  }

  async closed(volumeName: string): Promise<void> {
    const journal = this.journals.get(volumeName);
    this.journals.delete(volumeName);
    await journal?.close();
  }

  async takeOver(record: VolumeRecord, force = false): Promise<VolumeRecord | undefined> {
    // Not even forced: here the clone would read zeros where its parent has data (its origin is on the old owner).
    const pin = cloneFamilyPin(record, await this.coordination.listVolumes());
    if (pin !== undefined && record.owner !== '') throw this.refusePinned(record, pin);
    const routers = await this.coordination.listRouters();
    const owner = routers.find((r) => r.id === record.owner);
    // An owner that reported its volume driver failed is alive but cannot serve it: no need to wait it out.
    if (owner !== undefined && owner.state !== 'down' && !ownerHasFailed(record)) {
      if (!force && Date.now() - owner.heartbeatAtMs < limits.takeoverHeartbeatAgeMinMs) return undefined;
      if (await probeRouter(owner.address, this.transport)) return undefined; // it answers: the edge should go there
    }
    if (!this.hasBackend) throw this.refuse(record, 'the vPool has no backend: the volume lives only on its owner');
    const mode = volumeDtlMode(record);
    // A peer that is the owner itself holds nothing a takeover can replay (it is the router that is gone).
    const peer = record.dtlPeer && record.dtlPeer !== record.owner ? routers.find((r) => r.id === record.dtlPeer) : undefined;
    const peerAlive = peer !== undefined && isRouterAlive(peer, Date.now(), limits.routerDeadAfterMs);
    // Handed over and not opened since: everything is on the backend (handOver), there is nothing to lose.
    const nothingOutstanding = record.dtlPeer === '' && record.dtlInSync === true;
    if (!force && !nothingOutstanding) {
      if (mode === 'none') throw this.refuse(record, 'DTL mode none: writes not yet on the backend exist only on the old owner');
      if (!record.dtlInSync) throw this.refuse(record, 'the DTL was not in sync');
      if (!peerAlive) throw this.refuse(record, `the DTL peer ${record.dtlPeer || '(none)'} is not alive`);
    }
    const claimed = await this.coordination.claimVolume(record.name, this.routerId, record.ownerEpoch);
    if (!claimed) return undefined;
    await this.coordination.setVolumeDtl(record.name, claimed.ownerEpoch, { dtlPeer: '', dtlInSync: false, dtlStream: '' }).catch(() => undefined);
    const dir = this.registry.volumeDir(record.name);
    const replay = peerAlive ? { peer: peer.id, oldEpoch: record.ownerEpoch, ...(record.dtlStream ? { fromStream: record.dtlStream } : {}) } : undefined;
    await writeEpochFile(dir, { epoch: claimed.ownerEpoch, ...(replay ? { replay } : {}) });
    if (!peerAlive) await VolumeDriver.destroy(dir); // forced without a DTL: the backend alone is the truth
    this.counters.takeovers += 1;
    this.logger.warn(
      { volume: record.name, from: record.owner, fromEpoch: record.ownerEpoch, ownerEpoch: claimed.ownerEpoch, dtlPeer: record.dtlPeer, forced: force },
      'taking the volume over',
    );
    return claimed;
  }

  fencedStore(record: VolumeRecord, store: BackendObjectStore): BackendObjectStore {
    const check = async (what: string) => {
      const now = await this.coordination.getVolume(record.name);
      if (now?.owner !== this.routerId || now.ownerEpoch !== record.ownerEpoch) {
        throw new KeelError('FENCED', `volume '${record.name}': epoch ${record.ownerEpoch} was overtaken; ${what} refused`, { volume: record.name, ownerEpoch: record.ownerEpoch });
      }
    };
    return {
      putObject: async (name, data, options) => {
        await check(`put of ${name}`);
        return store.putObject(name, data, options);
      },
      deleteObject: async (name) => {
        await check(`delete of ${name}`);
        return store.deleteObject(name);
      },
      readRange: (name, offset, length, options) => store.readRange(name, offset, length, options),
      statObject: (name) => store.statObject(name),
    };
  }

  // ---------------------------------------------------------------- operator actions

  /** `keel volume takeover VOL [--force]` on this router: claim (if the owner is gone) and open. */
  async forceTakeover(name: string, force: boolean): Promise<{ ownerEpoch: number }> {
    const record = await this.coordination.getVolume(name);
    if (!record) throw KeelError.volumeNotFound(name);
    if (record.owner !== this.routerId) {
      const self = (await this.coordination.listRouters()).find((r) => r.id === this.routerId);
      // `keel volume move` refuses a draining target the same way: it is about to hand its volumes away.
      if (self?.state === 'draining') throw KeelError.badArgument(`router ${this.routerId} is draining: take the volume over on a router that accepts volumes`);
      const claimed = await this.takeOver(record, force);
      if (!claimed) {
        const now = await this.coordination.getVolume(name);
        if (now?.owner !== record.owner) throw KeelError.notOwner(name, now?.owner); // someone else claimed it meanwhile
        // takeOver declines an owner that still heartbeats or answers: that is a move, not a takeover.
        throw new KeelError('NOT_OWNER', `volume '${name}': its owner ${record.owner} is alive and answers; hand it over with keel volume move ${name} --to ${this.routerId}`, {
          volume: name,
          owner: record.owner,
        });
      }
    } else if (!(await this.registry.openByOperator(name))) {
      throw KeelError.notOwner(name); // taken over meanwhile
    }
    await this.registry.openVolume(name);
    this.registry.releaseVolume(name);
    return { ownerEpoch: (await this.coordination.getVolume(name))!.ownerEpoch };
  }

  /** Graceful move of an owned volume to `target` (default: the least loaded other live router). */
  async handOver(name: string, target?: string): Promise<{ to: string; ownerEpoch: number; pauseMs: number }> {
    const volumes = await this.coordination.listVolumes();
    const record = volumes.find((v) => v.name === name);
    if (!record) throw KeelError.volumeNotFound(name);
    const pin = cloneFamilyPin(record, volumes) ?? (await this.registry.localClonePin(name));
    if (pin !== undefined) throw KeelError.pinned(pin, this.routerId);
    const routers = placeableRouters(await this.coordination.listRouters(), Date.now()).filter((r) => r.id !== this.routerId);
    const to = target ?? leastLoadedRouter(routers, volumes)?.id;
    if (to === undefined) throw KeelError.noOwner(name, 0);
    if (!routers.some((r) => r.id === to)) throw KeelError.badArgument(`router ${to} is not a live router that accepts volumes`);
    if (!this.registry.ownedNames().includes(name)) {
      // Owned but not open here (no session yet): open it, so that whatever it holds locally is uploaded on the way out.
      await this.registry.openVolume(name);
      this.registry.releaseVolume(name);
    }
    const startedMs = Date.now();
    let ownerEpoch = 0;
    await this.registry.handOver(name, async (epoch) => {
      const claimed = await this.coordination.claimVolume(name, to, epoch);
      if (!claimed) throw KeelError.notOwner(name);
      ownerEpoch = claimed.ownerEpoch;
      // Everything is on the backend: nothing for a DTL to replay. The old owner's peer (maybe `to` itself)
      // holds nothing of the new epoch; until `to` opens the volume and publishes its own, say so.
      await this.coordination.setVolumeDtl(name, claimed.ownerEpoch, { dtlPeer: '', dtlInSync: true, dtlStream: '' }).catch(() => undefined);
    });
    const pauseMs = Date.now() - startedMs;
    this.counters.handovers += 1;
    this.logger.info({ volume: name, to, ownerEpoch, pauseMs }, 'volume handed over');
    return { to, ownerEpoch, pauseMs };
  }

  /** Hands every owned volume to other routers (router drain, rolling upgrade). Returns what could not move. */
  async drain(): Promise<{ moved: string[]; failed: Array<{ volume: string; error: string }> }> {
    const moved: string[] = [];
    const failed: Array<{ volume: string; error: string }> = [];
    const targets = placeableRouters(await this.coordination.listRouters(), Date.now()).filter((r) => r.id !== this.routerId);
    if (targets.length === 0) {
      this.logger.info({ volumes: this.registry.ownedNames() }, 'no other router accepts volumes (whole cluster stopping?): nothing handed over');
      for (const volume of this.registry.ownedNames()) failed.push({ volume, error: 'no other live router accepts volumes (all draining or down)' });
      return { moved, failed };
    }
    // Also volumes recorded as ours that no session opened here yet.
    const recorded = (await this.coordination.listVolumes()).filter((v) => v.owner === this.routerId).map((v) => v.name);
    const names = [...new Set([...this.registry.ownedNames(), ...recorded])];
    await Promise.all(
      names.map(async (name) => {
        try {
          await this.handOver(name);
          moved.push(name);
        } catch (err) {
          failed.push({ volume: name, error: (err as Error).message });
          this.logger.error({ volume: name, err: (err as Error).message }, 'could not hand the volume over');
        }
      }),
    );
    return { moved, failed };
  }

  async setDtlMode(name: string): Promise<void> {
    const journal = this.journals.get(name);
    const record = await this.coordination.getVolume(name);
    if (journal && record) await journal.setMode(volumeDtlMode(record));
  }

  /** Follows DTL mode changes made with `keel volume set-dtl` (called with each reconcile). */
  async reconcileModes(records: VolumeRecord[]): Promise<void> {
    for (const record of records) {
      const journal = this.journals.get(record.name);
      if (journal && journal.currentMode !== volumeDtlMode(record)) await journal.setMode(volumeDtlMode(record));
    }
  }

  stats(): Record<string, unknown> {
    return { ...this.counters, journals: Object.fromEntries([...this.journals].map(([name, j]) => [name, j.stats()])) };
  }

  // ---------------------------------------------------------------- internals

  private refusePinned(record: VolumeRecord, pin: string): KeelError {
    this.counters.takeoversRefused += 1;
    return new KeelError('TAKEOVER_REFUSED', `${pin}: clones and their parents stay on router ${record.owner}, so the volume waits for it (restart ${record.owner}; docs/snapshots.md, "Clones")`, {
      volume: record.name,
      owner: record.owner,
    });
  }

  private refuse(record: VolumeRecord, why: string): KeelError {
    this.counters.takeoversRefused += 1;
    const error = new KeelError(
      'TAKEOVER_REFUSED',
      `volume '${record.name}': owner ${record.owner} is unreachable and ${why}; taking it over could lose acknowledged writes (restart ${record.owner}, or force: keel volume takeover ${record.name} --to ROUTER --force)`,
      { volume: record.name, owner: record.owner, dtlPeer: record.dtlPeer, dtlInSync: record.dtlInSync },
    );
    this.logger.error({ volume: record.name, owner: record.owner, reason: why }, 'takeover refused');
    return error;
  }

  private async choosePeer(exclude: ReadonlySet<string>): Promise<DtlPeerCandidate | undefined> {
    const nowMs = Date.now();
    const candidates = placeableRouters(await this.coordination.listRouters(), nowMs).filter((r) => r.id !== this.routerId && !exclude.has(r.id));
    if (candidates.length === 0) return undefined;
    const best = leastLoadedDtlPeer(candidates, await this.coordination.listVolumes(), nowMs)!;
    return { routerId: best.id, address: best.address };
  }

  /**
   * Seals the old owner's DTL streams on `peer`, and applies their records to the driver in order. Streams
   * older than `fromStream` (the old owner's last run that was in sync) are obsolete: their writes were on
   * the backend before that run got in sync, and replaying them over newer data would roll writes back.
   */
  private async replayDtl(record: VolumeRecord, driver: VolumeDriver, peer: RouterRecord, oldEpoch: number, fromStream?: string): Promise<DtlStreamInfo[]> {
    const startedMs = Date.now();
    const client = await RpcClient.connect(peer.address, { transport: this.transport, logger: this.logger, role: 'router', requestTimeoutMs: limits.dtlRequestTimeoutMs * 10 });
    let records = 0;
    try {
      const sealed = await client.request({ op: 'dtl-fetch', volumeId: record.id, epoch: oldEpoch });
      const sealedStreams = JSON.parse(sealed.payload.toString('utf8')) as DtlStreamInfo[];
      const streams = sealedStreams.filter((s) => fromStream === undefined || s.streamId >= fromStream);
      if (streams.length < sealedStreams.length) {
        this.logger.warn({ volume: record.name, oldEpoch, skipped: sealedStreams.length - streams.length, fromStream }, 'DTL streams of earlier runs of the old owner not replayed: obsolete');
      }
      for (const stream of streams) {
        let afterSeq = 0;
        for (;;) {
          const page = await client.request({ op: 'dtl-read', volumeId: record.id, epoch: oldEpoch, streamId: stream.streamId, afterSeq });
          for (const entry of decodeDtlRecords(page.payload).records) {
            if (entry.op === 'write') await driver.write(entry.offset, entry.data!, false);
            else await driver.trim(entry.offset, entry.length, false);
            records += 1;
          }
          afterSeq = Number(page.header.lastSeq);
          if (page.header.more !== true) break;
        }
      }
      await driver.flush();
      this.counters.replayedRecords += records;
      this.logger.warn({ volume: record.name, dtlPeer: peer.id, oldEpoch, streams: streams.length, records, replayMs: Date.now() - startedMs }, 'DTL replayed');
      return sealedStreams; // all of them: once the replay is on the backend, the new owner drops the epoch
    } finally {
      client.close();
    }
  }

  private async dropOldDtl(peer: RouterRecord, volumeId: string, epoch: number): Promise<void> {
    try {
      const client = await RpcClient.connect(peer.address, { transport: this.transport, logger: this.logger, role: 'router' });
      await client.request({ op: 'dtl-drop', volumeId, epoch }).finally(() => client.close());
    } catch (err) {
      this.logger.warn({ volumeId, epoch, peer: peer.id, err: (err as Error).message }, 'could not drop the replayed DTL (the peer drops it when a newer epoch streams there)');
    }
  }
}

/** A sibling of the volume directory, so that wiping the directory keeps it. */
function epochFile(dir: string): string {
  return `${dir}.epoch`;
}

async function readEpochFile(dir: string): Promise<EpochFile | undefined> {
  const text = await readFile(epochFile(dir), 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  try {
    const parsed = JSON.parse(text) as EpochFile | number;
    return typeof parsed === 'number' ? { epoch: parsed } : parsed;
  } catch {
    return { epoch: -1 }; // unreadable: treat the local copy as foreign
  }
}

async function writeEpochFile(dir: string, content: EpochFile): Promise<void> {
  await mkdir(path.dirname(dir), { recursive: true });
  const temp = `${epochFile(dir)}.tmp`;
  await writeFile(temp, JSON.stringify(content));
  await rename(temp, epochFile(dir));
}

/** True when a router answers the handshake at `address` within ownerProbeTimeoutMs. */
export async function probeRouter(address: string, transport: Transport): Promise<boolean> {
  try {
    const client = await RpcClient.connect(address, {
      transport,
      logger: silent,
      role: 'tool',
      connectTimeoutMs: limits.ownerProbeTimeoutMs,
      requestTimeoutMs: limits.ownerProbeTimeoutMs,
    });
    client.close();
    return true;
  } catch {
    return false;
  }
}

const silent = silentLogger();
