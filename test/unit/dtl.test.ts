/**
 * The DTL's pieces on their own: the record codec, the peer's segment store (bounds, trimming, sealing,
 * reload after a crash), and restore's choice of TLogs when a fenced owner uploaded late.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile, appendFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { crc32c } from '../../shared/checksum.ts';
import { isKeelError } from '../../shared/errors.ts';
import { limits } from '../../shared/limits.ts';
import { silentLogger } from '../../shared/logger.ts';
import { chooseTlogChain } from '../../router/backend-volume-objects.ts';
import { parseVolumeObjectName, volumeObjectName } from '../../router/backend-object-names.ts';
import { decodeDtlRecords, decodeDtlSegment, dtlHeaderBytes, writeDtlHeader } from '../../router/dtl-format.ts';
import { DtlStore } from '../../router/dtl-store.ts';

function record(seq: number, offset: number, data?: Buffer, trimLength = 0): Buffer {
  const bytes = Buffer.alloc(dtlHeaderBytes + (data?.length ?? 0));
  data?.copy(bytes, dtlHeaderBytes);
  writeDtlHeader(bytes, 0, seq, data ? 'write' : 'trim', offset, data ? data.length : trimLength, data);
  return bytes;
}

async function expectCode(promise: Promise<unknown>, code: string): Promise<void> {
  const err = await promise.then(() => undefined, (e: unknown) => e);
  expect(isKeelError(err) ? err.code : err).toBe(code);
}

describe('DTL records', () => {
  it('round-trip writes and trims, stop at a torn tail, and reject a flipped bit', () => {
    const data = Buffer.alloc(8192, 7);
    const bytes = Buffer.concat([record(1, 4096, data), record(2, 2 ** 40, undefined, 2 ** 33)]);
    const { records, tornAt } = decodeDtlRecords(bytes);
    expect(tornAt).toBeUndefined();
    expect(records.map((r) => [r.seq, r.op, r.offset, r.length])).toEqual([[1, 'write', 4096, 8192], [2, 'trim', 2 ** 40, 2 ** 33]]);
    expect(records[0]!.data!.equals(data)).toBe(true);
    expect(decodeDtlRecords(bytes.subarray(0, bytes.length - 3)).tornAt).toBe(8192 + 40);
    const flipped = Buffer.from(bytes);
    flipped[100] ^= 1;
    expect(() => decodeDtlRecords(flipped)).toThrow(/DTL record 1/);
    const badMagic = Buffer.from(bytes);
    badMagic[0] = 0;
    expect(() => decodeDtlRecords(badMagic)).toThrow(/bad magic/);
  });

  it('fold the crc of a write from the crcs of its clusters into the same bytes as one crc over the data', () => {
    const data = randomBytes(4096 * 5);
    for (const clusters of [0, 1, 5]) {
      const payload = data.subarray(0, clusters * 4096);
      const crcs = Uint32Array.from({ length: clusters }, (_, index) => crc32c(payload.subarray(index * 4096, (index + 1) * 4096)));
      const folded = Buffer.alloc(dtlHeaderBytes + payload.length);
      payload.copy(folded, dtlHeaderBytes);
      writeDtlHeader(folded, 0, 9, 'write', 8192, payload.length, payload, crcs);
      expect(folded.equals(record(9, 8192, payload))).toBe(true);
      expect(decodeDtlRecords(folded).records[0]!.data!.equals(payload)).toBe(true);
    }
  });

  it('read a segment up to the first record that is out of sequence, torn or not a record', () => {
    const live = Buffer.concat([record(5, 0, Buffer.alloc(4096, 5)), record(6, 0)]);
    const stale = record(2, 0, Buffer.alloc(4096, 2)); // an older record of the stream: valid, but seq 2
    const segment = (tail: Buffer) => decodeDtlSegment(Buffer.concat([live, tail]), 5);
    for (const tail of [stale, stale.subarray(100), stale.subarray(0, 100), Buffer.alloc(0)]) {
      const { records, validBytes } = segment(tail);
      expect(records.map((r) => r.seq)).toEqual([5, 6]);
      expect(validBytes).toBe(live.length);
    }
    expect(decodeDtlSegment(live, 4).records).toEqual([]); // not the seq the file name gives
  });
});

describe('DTL store (the peer side)', () => {
  let dir: string;
  let store: DtlStore;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'keel-dtl-'));
    store = await DtlStore.open(dir, silentLogger());
  });
  afterEach(async () => {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('appends, skips re-sent records, refuses a gap, trims whole segments and reads pages', async () => {
    await store.openStream('vol-a', 3, 's1');
    const big = Buffer.alloc(limits.dtlSegmentBytes / 2, 1);
    expect(await store.append('vol-a', 3, 's1', Buffer.concat([record(1, 0, big), record(2, 0, big)]))).toEqual({ lastSeq: 2 });
    expect(await store.append('vol-a', 3, 's1', Buffer.concat([record(2, 0, big), record(3, 4096, Buffer.alloc(4096, 3))]))).toEqual({ lastSeq: 3 });
    await expectCode(store.append('vol-a', 3, 's1', record(5, 0, Buffer.alloc(4096))), 'PROTOCOL');
    const streamDir = path.join(dir, 'vol-a', (await readdir(path.join(dir, 'vol-a')))[0]!);
    const segments = async () => (await readdir(streamDir)).filter((f) => f.endsWith('.seg')).length;
    expect(await segments()).toBe(2); // rolled at dtlSegmentBytes
    await store.trim('vol-a', 3, 's1', 2);
    expect(await segments()).toBe(1);
    const page = await store.read('vol-a', 3, 's1', 0);
    expect(decodeDtlRecords(page.payload).records.map((r) => r.seq)).toEqual([3]);
    expect(page.more).toBe(false);
  });

  it('a new stream starts at the owner\'s first untrimmed record; a gap inside a stream is still refused', async () => {
    // The owner's backlog after trimming starts at 4097 (earlier records are on the backend): a new peer
    // must take it from there, or the owner could never get back in sync after a peer change.
    await store.openStream('vol-b', 1, 's9');
    expect(await store.append('vol-b', 1, 's9', Buffer.concat([record(4097, 0, Buffer.alloc(4096, 7)), record(4098, 4096, Buffer.alloc(4096, 8))]))).toEqual({ lastSeq: 4098 });
    await expectCode(store.append('vol-b', 1, 's9', record(4100, 0, Buffer.alloc(4096))), 'PROTOCOL');
    const page = await store.read('vol-b', 1, 's9', 0);
    expect(decodeDtlRecords(page.payload).records.map((r) => r.seq)).toEqual([4097, 4098]);
  });

  it('refuses appends beyond dtlBytesMax with BUSY, never dropping', async () => {
    await store.openStream('vol-b', 1, 's1');
    const chunk = Buffer.alloc(16 * 1024 * 1024, 2);
    let seq = 0;
    let refused = false;
    while (seq * chunk.length <= limits.dtlBytesMax) {
      try {
        await store.append('vol-b', 1, 's1', record(seq + 1, 0, chunk));
        seq += 1;
      } catch (err) {
        expect(isKeelError(err, 'BUSY')).toBe(true);
        refused = true;
        break;
      }
    }
    expect(refused).toBe(true);
    expect(store.stats().liveBytes).toBeLessThanOrEqual(limits.dtlBytesMax);
    await store.trim('vol-b', 1, 's1', seq);
    await store.append('vol-b', 1, 's1', record(seq + 1, 0, chunk)); // room again after the trim
  }, 30_000);

  it('sealing for a takeover fences the old owner; a newer epoch fences older ones and drops them', async () => {
    await store.openStream('vol-c', 1, 'a');
    await store.append('vol-c', 1, 'a', record(1, 0, Buffer.alloc(4096, 9)));
    await store.openStream('vol-c', 1, 'b'); // the owner restarted: a second stream of the same epoch
    await store.append('vol-c', 1, 'b', record(1, 8192, Buffer.alloc(4096, 8)));
    const sealed = await store.seal('vol-c', 1);
    expect(sealed.map((s) => [s.streamId, s.lastSeq])).toEqual([['a', 1], ['b', 1]]);
    await expectCode(store.append('vol-c', 1, 'b', record(2, 0, Buffer.alloc(4096))), 'FENCED');
    await expectCode(store.openStream('vol-c', 1, 'c'), 'FENCED');
    await store.openStream('vol-c', 2, 'new');
    await expectCode(store.read('vol-c', 1, 'a', 0), 'FENCED'); // dropped: the new owner replayed it already
    await expectCode(store.openStream('vol-c', 1, 'late'), 'FENCED');
  });

  it('a sealed epoch stays fenced after its streams are dropped and after a restart of the peer', async () => {
    // A frozen old owner that wakes after the takeover must not open a fresh stream at its epoch here
    // (the new owner dropped the replayed streams, so there is no stream left to fence it).
    await store.openStream('vol-g', 3, 's1');
    await store.append('vol-g', 3, 's1', record(1, 0, Buffer.alloc(4096, 1)));
    await store.seal('vol-g', 3);
    await store.drop('vol-g', 3);
    await expectCode(store.openStream('vol-g', 3, 's2'), 'FENCED');
    await expectCode(store.append('vol-g', 3, 's1', record(2, 0, Buffer.alloc(4096))), 'FENCED');
    await store.close();
    store = await DtlStore.open(dir, silentLogger());
    await expectCode(store.openStream('vol-g', 3, 's3'), 'FENCED');
    await expectCode(store.openStream('vol-g', 2, 's3'), 'FENCED');
    await store.openStream('vol-g', 4, 'new'); // the new owner streams here
    await store.append('vol-g', 4, 'new', record(1, 0, Buffer.alloc(4096, 2)));
    await store.drop('vol-g'); // the volume is deleted: its directory and fence go
    expect(await readdir(dir)).not.toContain('vol-g');
  });

  it("the first trim of an owner's new run drops the streams its earlier runs left at that epoch, so a takeover cannot replay them over newer data", async () => {
    await store.openStream('vol-i', 1, '0001');
    await store.append('vol-i', 1, '0001', record(1, 0, Buffer.alloc(4096, 0xa))); // the run that crashed
    await store.openStream('vol-i', 1, '0002'); // the owner restarted at the same epoch
    await store.append('vol-i', 1, '0002', Buffer.concat([record(1, 0, Buffer.alloc(4096, 0xb)), record(2, 4096, Buffer.alloc(4096, 0xc))]));
    expect(store.stats().streams).toBe(2); // before any trim of the new run, both are needed
    await store.trim('vol-i', 1, '0002', 1); // record 1 of the new run is on the backend: so is all the old run had
    expect(store.stats().earlierRunsDropped).toBe(1);
    const [current, ...rest] = await store.seal('vol-i', 1);
    expect(rest).toEqual([]);
    expect(current).toMatchObject({ streamId: '0002', lastSeq: 2 });
    expect(decodeDtlRecords((await store.read('vol-i', 1, '0002', 0)).payload).records.map((r) => r.seq)).toEqual([2]);
  });

  it('dropping one stream of an epoch (a clean close) does not fence the epoch', async () => {
    await store.openStream('vol-h', 5, 'a');
    await store.drop('vol-h', 5, 'a');
    await store.openStream('vol-h', 5, 'b'); // the same owner, restarted
    expect(await store.append('vol-h', 5, 'b', record(1, 0, Buffer.alloc(4096, 1)))).toEqual({ lastSeq: 1 });
  });

  it('a restarted peer loads its streams, cutting a torn tail', async () => {
    await store.openStream('vol-d', 4, 's');
    await store.append('vol-d', 4, 's', Buffer.concat([record(1, 0, Buffer.alloc(4096, 1)), record(2, 4096, Buffer.alloc(4096, 2))]));
    await store.close();
    const streamDir = path.join(dir, 'vol-d', (await readdir(path.join(dir, 'vol-d')))[0]!);
    const segment = path.join(streamDir, (await readdir(streamDir))[0]!);
    await appendFile(segment, record(3, 0, Buffer.alloc(4096, 3)).subarray(0, 100)); // torn by a crash
    await writeFile(path.join(streamDir, 'junk.txt'), 'ignored');
    store = await DtlStore.open(dir, silentLogger());
    const [info] = await store.seal('vol-d', 4);
    expect(info).toMatchObject({ streamId: 's', lastSeq: 2 });
    expect(decodeDtlRecords((await store.read('vol-d', 4, 's', 0)).payload).records.map((r) => r.seq)).toEqual([1, 2]);
  });

  it('writes new segments over trimmed ones, and neither reads nor reloads their older records', async () => {
    await store.openStream('vol-e', 1, 's');
    const mib = 1024 * 1024;
    const sizes = [0, 2, 2, 4, 2, 2, 4, 4, 4, 2, 2].map((n) => n * mib); // by seq; a segment rolls past 8 MiB
    const append = (seq: number) => store.append('vol-e', 1, 's', record(seq, seq * 4096, Buffer.alloc(sizes[seq]!, seq)));
    for (let seq = 1; seq <= 7; seq++) await append(seq); // segments [1 2 3] [4 5 6] [7
    await store.trim('vol-e', 1, 's', 6); // the first two become spares
    const streamDir = path.join(dir, 'vol-e', (await readdir(path.join(dir, 'vol-e')))[0]!);
    expect((await readdir(streamDir)).filter((f) => f.endsWith('.spare'))).toHaveLength(2);
    for (let seq = 8; seq <= 10; seq++) await append(seq); // [7 8] [9 10 | 6, older, valid]
    expect(store.stats()).toMatchObject({ segmentsReused: 1, segmentsCreated: 3 });
    const read = async () => {
      const seqs: number[] = [];
      for (let afterSeq = 0, more = true; more; ) {
        const page = await store.read('vol-e', 1, 's', afterSeq);
        seqs.push(...decodeDtlRecords(page.payload).records.map((r) => r.seq));
        ({ lastSeq: afterSeq, more } = page);
      }
      return seqs;
    };
    expect(await read()).toEqual([7, 8, 9, 10]);
    await store.close();
    store = await DtlStore.open(dir, silentLogger());
    expect(await store.seal('vol-e', 1)).toMatchObject([{ lastSeq: 10 }]);
    expect(await read()).toEqual([7, 8, 9, 10]);
    const reused = path.join(streamDir, `${String(9).padStart(16, '0')}.seg`);
    expect((await readFile(reused)).length).toBe(2 * dtlHeaderBytes + 4 * mib); // the older record cut
  }, 30_000);

  it('a restarted peer loads a stream up to a gap between segments, not past it', async () => {
    await store.openStream('vol-f', 2, 's');
    const big = Buffer.alloc(limits.dtlSegmentBytes, 1); // one record per segment
    for (let seq = 1; seq <= 3; seq++) await store.append('vol-f', 2, 's', record(seq, 0, big));
    await store.close();
    const streamDir = path.join(dir, 'vol-f', (await readdir(path.join(dir, 'vol-f')))[0]!);
    await rm(path.join(streamDir, `${String(2).padStart(16, '0')}.seg`)); // record 2 lost
    store = await DtlStore.open(dir, silentLogger());
    const [info] = await store.seal('vol-f', 2);
    expect(info).toMatchObject({ lastSeq: 1 });
  }, 30_000);
});

describe('fencing in backend object names', () => {
  it('puts the epoch in TLog names and parses old names as epoch 0', () => {
    expect(volumeObjectName('v', 'tlog', 7, 3)).toBe('vol/v/tlog/00000007-00000003');
    expect(parseVolumeObjectName('v', 'vol/v/tlog/00000007-00000003')).toEqual({ kind: 'tlog', seq: 7, epoch: 3 });
    expect(parseVolumeObjectName('v', 'vol/v/tlog/00000007')).toEqual({ kind: 'tlog', seq: 7, epoch: 0 });
    expect(parseVolumeObjectName('v', 'vol/v/epoch/00000004')).toEqual({ kind: 'epoch', seq: 4, epoch: 4 });
    expect(parseVolumeObjectName('v', 'vol/v/sco/00000001-00000002')).toBeUndefined();
    expect(volumeObjectName('v', 'catalog', 1795417516253, 3)).toBe('vol/v/catalog/1795417516253-00000003');
    expect(parseVolumeObjectName('v', 'vol/v/catalog/1795417516253-00000003')).toEqual({ kind: 'catalog', seq: 1795417516253, epoch: 3 });
  });

  it('restore ignores a late upload of a fenced owner and prefers the newer epoch', () => {
    const t = (seq: number, epoch: number) => ({ seq, epoch, name: `${seq}-${epoch}` });
    // Owner at epoch 1 wrote 1..3; epoch 2 took over after restoring 1..2 and wrote 3, 4; epoch 1's 3 and 5 landed late.
    const chain = chooseTlogChain([t(1, 1), t(2, 1), t(3, 1), t(5, 1), t(3, 2), t(4, 2)], new Map([[2, 2]]));
    expect(chain.map((c) => c.name)).toEqual(['1-1', '2-1', '3-2', '4-2']);
    // The new owner has written nothing yet: the fenced owner's TLog 3 still must not count.
    expect(chooseTlogChain([t(1, 1), t(2, 1), t(3, 1)], new Map([[2, 2]])).map((c) => c.name)).toEqual(['1-1', '2-1']);
  });
});
