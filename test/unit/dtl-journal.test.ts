/**
 * The owner side of the DTL against real peers: DtlStores behind real RpcServers on loopback (the
 * router's own ha-service), a fake volume host. Sync acknowledges only once a peer holds the write; a
 * lost peer is replaced and the backlog re-sent; uploads trim; a sealed stream fences the owner.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isKeelError, KeelError } from '../../shared/errors.ts';
import { limits } from '../../shared/limits.ts';
import { silentLogger } from '../../shared/logger.ts';
import { RpcServer, type RpcHandler, type RpcRequest } from '../../shared/wire/rpc-server.ts';
import { TcpTransport } from '../../shared/wire/tcp-transport.ts';
import { decodeDtlRecords } from '../../router/dtl-format.ts';
import { DtlJournal, type DtlJournalHost } from '../../router/dtl-journal.ts';
import { DtlStore } from '../../router/dtl-store.ts';
import { withHaOps } from '../../router/ha-service.ts';
import type { VolumeHa } from '../../router/volume-ha.ts';
import { until } from '../helpers/until.ts';

interface Peer {
  routerId: string;
  address: string;
  store: DtlStore;
  server: RpcServer | undefined;
  alive: boolean;
}

const noVolumeOps: RpcHandler = { openSession: () => ({ handle: () => Promise.reject(KeelError.protocol('no volume ops here')), close: () => undefined }) };
/**
 * A peer that holds its answer to the second dtl-append until a third arrives (or 2 s pass), then answers
 * the held one with `heldOutcome`: a third append can only arrive while the second is unanswered if the
 * owner keeps more than one batch on the wire.
 */
function holdingSecondAppend(heldOutcome: 'store' | 'busy', events: string[]): (inner: RpcHandler) => RpcHandler {
  let appends = 0;
  let releaseHeld: (() => void) | undefined;
  return (inner) => ({
    openSession: (peer) => {
      const session = inner.openSession(peer);
      return {
        close: () => session.close(),
        handle: async (request: RpcRequest) => {
          if (request.header.op !== 'dtl-append') return session.handle(request);
          appends += 1;
          if (appends === 2) {
            events.push('second held');
            await new Promise<void>((resolve) => {
              releaseHeld = resolve;
              setTimeout(resolve, 2_000);
            });
            events.push('second answered');
            if (heldOutcome === 'busy') throw KeelError.busy('test: the peer is full for this batch');
            return session.handle(request);
          }
          if (appends === 3) {
            events.push(releaseHeld === undefined ? 'third' : 'third while second held');
            const answer = session.handle(request); // the real store: in order, so it stores or refuses the gap
            releaseHeld?.();
            releaseHeld = undefined;
            return answer;
          }
          return session.handle(request);
        },
      };
    },
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** A peer whose disk is full while `disk.full`: every dtl-append fails with NO_SPACE, as its DtlStore would. */
function fullDisk(disk: { full: boolean; refusals: number }): (inner: RpcHandler) => RpcHandler {
  return (inner) => ({
    openSession: (peer) => {
      const session = inner.openSession(peer);
      return {
        close: () => session.close(),
        handle: (request: RpcRequest) => {
          if (request.header.op !== 'dtl-append' || !disk.full) return session.handle(request);
          disk.refusals += 1;
          throw KeelError.noSpace('test: write of a DTL segment failed: no space left on device');
        },
      };
    },
  });
}


describe('DtlJournal with real peers', () => {
  let dir: string;
  let peers: Peer[];
  let tlog: number;
  let uploaded: number;
  let published: Array<{ dtlPeer?: string; dtlInSync?: boolean }>;
  /** A newer owner claimed the volume: coordination's compare-and-set on epoch 1 fails. */
  let overtaken: boolean;
  let journal: DtlJournal | undefined;

  const startPeer = async (routerId: string, wrap: (inner: RpcHandler) => RpcHandler = (inner) => inner): Promise<Peer> => {
    const store = await DtlStore.open(path.join(dir, routerId), silentLogger());
    const handler = wrap(withHaOps(noVolumeOps, { dtl: store, ha: {} as VolumeHa, drain: async () => ({}) }));
    const server = new RpcServer({ transport: new TcpTransport(), handler, logger: silentLogger(), routerId });
    const address = await server.listen('127.0.0.1:0');
    const peer = { routerId, address, store, server, alive: true };
    peers.push(peer);
    return peer;
  };
  const host = (): DtlJournalHost => ({
    volumeName: 'v',
    volumeId: 'vol-1',
    ownerEpoch: 1,
    transport: new TcpTransport(),
    logger: silentLogger(),
    currentTlogSeq: () => tlog,
    tlogsUploadedThrough: () => uploaded,
    closeCurrentTlog: async () => {
      tlog += 1;
      return tlog - 1;
    },
    choosePeer: async (exclude) => peers.find((p) => p.alive && !exclude.has(p.routerId)),
    publish: async (state) => {
      if (overtaken) return false;
      published.push(state);
      return true;
    },
  });
  /** Records a peer holds for the stream, without sealing it. */
  const recordsOnOpen = async (peer: Peer) => peer.store.stats().appendedRecords as number;
  const recordsOn = async (peer: Peer) => {
    const streams = await peer.store.seal('vol-1', 1);
    const seqs: number[] = [];
    for (const s of streams) seqs.push(...decodeDtlRecords((await peer.store.read('vol-1', 1, s.streamId, 0)).payload).records.map((r) => r.seq));
    return seqs;
  };

  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'keel-dtl-journal-'));
    peers = [];
    tlog = 1;
    uploaded = 0;
    published = [];
    overtaken = false;
  });
  afterEach(async () => {
    await journal?.close();
    journal = undefined;
    for (const peer of peers) {
      await peer.server?.close();
      await peer.store.close();
    }
    await rm(dir, { recursive: true, force: true });
  });

  it('sync: a write is acknowledged only once a peer holds it; waits while there is none', async () => {
    journal = new DtlJournal(host(), 'sync');
    await journal.start();
    let acked = false;
    const write = journal.write(0, Buffer.alloc(4096, 1), async () => undefined).then(() => (acked = true));
    await sleep(400);
    expect(acked).toBe(false); // no peer yet: the write waits, it is not acknowledged unprotected
    const peer = await startPeer('p1');
    await write;
    expect(await recordsOn(peer)).toEqual([1]);
  });

  it('re-sends the whole backlog to a new peer when the peer dies, and records the state', async () => {
    uploaded = 1; // the baseline TLog (closed at start) is on the backend
    const first = await startPeer('p1');
    journal = new DtlJournal(host(), 'sync');
    await journal.start();
    for (let i = 0; i < 20; i++) await journal.write(i * 4096, Buffer.alloc(4096, i), async () => undefined);
    await until(() => published.some((s) => s.dtlInSync === true && s.dtlPeer === 'p1'));
    const second = await startPeer('p2');
    first.alive = false;
    await first.server!.close();
    first.server = undefined;
    await journal.write(20 * 4096, Buffer.alloc(4096, 20), async () => undefined); // waits for the resync to p2
    expect(await recordsOn(second)).toEqual(Array.from({ length: 21 }, (_, i) => i + 1));
    const afterLoss = published.slice(published.findIndex((s) => s.dtlPeer === 'p1' && s.dtlInSync));
    expect(afterLoss.some((s) => s.dtlInSync === false)).toBe(true); // cleared before in sync again
    await until(() => published.at(-1)?.dtlPeer === 'p2' && published.at(-1)?.dtlInSync === true);
  });

  it('trims what reached the backend, on the owner and on the peer', async () => {
    uploaded = 1;
    const peer = await startPeer('p1');
    journal = new DtlJournal(host(), 'sync');
    await journal.start(); // tlog is 2 now
    for (let i = 0; i < 5; i++) await journal.write(i * 4096, Buffer.alloc(4096, 7), async () => undefined);
    expect(journal.stats().backlogRecords).toBe(5);
    uploaded = 2;
    await until(() => journal!.stats().backlogRecords === 0);
    await until(async () => peer.store.stats().liveBytes === 0);
  });

  it('rolls the TLog early once while uploads are stuck, not at every tick', async () => {
    uploaded = 1;
    await startPeer('p1');
    journal = new DtlJournal(host(), 'async');
    await journal.start(); // tlog is 2 now
    const record = Buffer.alloc(1 << 20, 3);
    const recordsOverEarlyRoll = Math.floor((limits.dtlBytesMax * limits.dtlEarlyRollFraction) / record.length) + 2;
    for (let i = 0; i < recordsOverEarlyRoll; i++) await journal.write(i * record.length, record, async () => undefined);
    await until(() => journal!.stats().earlyRolls === 1);
    await sleep(10 * limits.dtlTrimIntervalMs); // ten ticks, the backend still stuck (uploaded stays 1)
    expect(journal.stats().earlyRolls).toBe(1);
    expect(tlog).toBe(3);
    uploaded = 2; // the rolled TLog reached the backend: the backlog is trimmed, and no roll is needed
    await until(() => journal!.stats().backlogRecords === 0);
    expect(journal.stats().earlyRolls).toBe(1);
  });

  it('a sealed stream fences the owner: writes fail with NOT_OWNER', async () => {
    const peer = await startPeer('p1');
    journal = new DtlJournal(host(), 'sync');
    await journal.start();
    await journal.write(0, Buffer.alloc(4096), async () => undefined);
    await peer.store.seal('vol-1', 1); // a takeover read the DTL
    const err = await journal.write(4096, Buffer.alloc(4096), async () => undefined).then(() => undefined, (e: unknown) => e);
    expect(isKeelError(err, 'NOT_OWNER')).toBe(true);
  });

  it('an owner overtaken while its peer is gone is fenced by coordination before it opens a stream on a router that never heard of the takeover', async () => {
    const first = await startPeer('p1');
    journal = new DtlJournal(host(), 'sync');
    await journal.start(); // never in sync (the baseline TLog is not uploaded): the record already says so
    await journal.write(0, Buffer.alloc(4096, 1), async () => undefined);
    overtaken = true; // frozen through a takeover that sealed and dropped its stream elsewhere
    const fresh = await startPeer('p2');
    first.alive = false;
    await first.server!.close();
    first.server = undefined;
    const err = await journal.write(4096, Buffer.alloc(4096, 2), async () => undefined).then(() => undefined, (e: unknown) => e);
    expect(isKeelError(err, 'NOT_OWNER')).toBe(true);
    expect(fresh.store.stats().streams).toBe(0);
  });

  it('async acknowledges before the peer has the write; none records nothing', async () => {
    journal = new DtlJournal(host(), 'async');
    await journal.start();
    await journal.write(0, Buffer.alloc(4096), async () => undefined); // no peer at all, still acknowledged
    expect(journal.stats().backlogRecords).toBe(1);
    await journal.setMode('none');
    await journal.write(0, Buffer.alloc(4096), async () => undefined);
    expect(journal.stats().backlogRecords).toBe(0);
  });

  it('keeps more than one batch on the wire: the writes of a new turn go out before the last batch is acknowledged', async () => {
    const events: string[] = [];
    const peer = await startPeer('p1', holdingSecondAppend('store', events));
    journal = new DtlJournal(host(), 'sync');
    await journal.start();
    await journal.write(0, Buffer.alloc(4096, 1), async () => undefined); // append 1
    const second = journal.write(4096, Buffer.alloc(4096, 2), async () => undefined); // append 2, held
    await until(() => events.includes('second held'));
    await journal.write(8192, Buffer.alloc(4096, 3), async () => undefined); // append 3 must not wait for 2
    await second;
    expect(events).toEqual(['second held', 'third while second held', 'second answered']);
    expect(await recordsOn(peer)).toEqual([1, 2, 3]);
  });

  it('a refused batch with later batches on the wire: all are sent again in order, to the same peer, and nothing is lost', async () => {
    const events: string[] = [];
    const peer = await startPeer('p1', holdingSecondAppend('busy', events));
    journal = new DtlJournal(host(), 'sync');
    await journal.start();
    await journal.write(0, Buffer.alloc(4096, 1), async () => undefined);
    const second = journal.write(4096, Buffer.alloc(4096, 2), async () => undefined); // refused BUSY
    await until(() => events.includes('second held'));
    const third = journal.write(8192, Buffer.alloc(4096, 3), async () => undefined); // refused: out of sequence
    await Promise.all([second, third]);
    expect(events.slice(0, 3)).toEqual(['second held', 'third while second held', 'second answered']);
    expect(await recordsOn(peer)).toEqual([1, 2, 3]);
    expect(journal.stats().peerChanges).toBe(1); // a full peer is waited for, not replaced
  });

  it('peers whose disks are full: a sync write waits, tried again at a doubling pause instead of cycling through the peers, and is acknowledged once a disk has space', async () => {
    const disk = { full: true, refusals: 0 };
    await startPeer('p1', fullDisk(disk));
    await startPeer('p2', fullDisk(disk));
    journal = new DtlJournal(host(), 'sync');
    await journal.start();
    let acknowledged = false;
    const write = journal.write(0, Buffer.alloc(4096, 7), async () => undefined).then(() => (acknowledged = true));
    await sleep(1_300); // pauses of 250, 500, 1000 ms: three or four refusals; without them, hundreds
    expect(acknowledged).toBe(false);
    expect(disk.refusals).toBeGreaterThanOrEqual(2);
    expect(disk.refusals).toBeLessThanOrEqual(4);
    expect(journal.stats().peerNoSpaceRefusals).toBe(disk.refusals);
    disk.full = false;
    await write;
    const stored = [...(await recordsOn(peers[0]!)), ...(await recordsOn(peers[1]!))];
    expect(stored).toContain(1);
  });

  it(`peers full for longer than dtlPeersFullWaitMaxMs: sync writes fail with NO_SPACE instead of waiting for the edge's timeout, and their records still reach a peer once one has room`, async () => {
    const disk = { full: true, refusals: 0 };
    await startPeer('p1', fullDisk(disk));
    journal = new DtlJournal(host(), 'sync');
    await journal.start();
    const startedAt = Date.now();
    const waiting = journal.write(0, Buffer.alloc(4096, 7), async () => undefined);
    await expect(waiting).rejects.toMatchObject({ code: 'NO_SPACE' });
    const waitedMs = Date.now() - startedAt;
    expect(waitedMs).toBeGreaterThanOrEqual(limits.dtlPeersFullWaitMaxMs);
    expect(waitedMs).toBeLessThan(limits.wireRequestTimeoutMs); // before the edge would time it out
    await expect(journal.write(4096, Buffer.alloc(4096, 8), async () => undefined)).rejects.toMatchObject({ code: 'NO_SPACE' }); // at once
    disk.full = false;
    await until(async () => (await recordsOnOpen(peers[0]!)) >= 2, 10_000); // after the current pause
    await journal.write(8192, Buffer.alloc(4096, 9), async () => undefined); // acknowledged again
    expect(await recordsOn(peers[0]!)).toEqual([1, 2, 3]);
  }, 20_000);
});
