/** The write buffer bound: pass below soft, delay in proportion above it, wait at the hard limit, never fail. */
import { describe, expect, it } from 'vitest';
import { WriteBuffer } from '../../router/write-buffer.ts';

const KiB = 1024;

function setup(uploadsPending = true) {
  const buffer = new WriteBuffer({ bytesMax: 100 * KiB, softFraction: 0.5, delayMaxMs: 200 });
  let reliefAsked = 0;
  const account = buffer.account('v', () => uploadsPending, () => (reliefAsked += 1));
  return { buffer, account, reliefAsked: () => reliefAsked };
}

async function timed(work: Promise<void>): Promise<number> {
  const startedMs = Date.now();
  await work;
  return Date.now() - startedMs;
}

describe('write buffer throttle', () => {
  it('lets writes through at once below the soft threshold', async () => {
    const { buffer, account } = setup();
    account.addPending(40 * KiB);
    expect(await timed(account.admit(4 * KiB))).toBeLessThan(20);
    expect(buffer.stats().throttledWrites).toBe(0);
  });

  it('delays writes in proportion to the overshoot between soft and hard', async () => {
    const { buffer, account } = setup();
    account.addPending(60 * KiB); // 20% of the way from soft (50) to hard (100): ~40 ms
    const small = await timed(account.admit(4 * KiB));
    account.addPending(30 * KiB); // 80%: ~160 ms
    const large = await timed(account.admit(4 * KiB));
    expect(small).toBeGreaterThanOrEqual(30);
    expect(small).toBeLessThan(120);
    expect(large).toBeGreaterThanOrEqual(140);
    expect(large).toBeGreaterThan(small * 2);
    expect(buffer.stats().throttledWrites).toBe(2);
    expect(buffer.stats().throttleDelayMsTotal).toBeGreaterThanOrEqual(180);
  });

  it('holds writes at the hard limit until uploads make room, then lets them all through', async () => {
    const { buffer, account, reliefAsked } = setup();
    account.addPending(100 * KiB);
    let admitted = 0;
    const writes = Array.from({ length: 5 }, () => account.admit(4 * KiB).then(() => (admitted += 1)));
    await new Promise((r) => setTimeout(r, 300));
    expect(admitted).toBe(0);
    expect(buffer.stats().writesWaitingNow).toBe(5);
    expect(reliefAsked()).toBeGreaterThan(0); // volumes were asked to close their TLogs early
    let evicted = 0;
    account.markEvictable(1, 60 * KiB, async () => {
      evicted += 1;
    });
    await Promise.all(writes);
    expect(admitted).toBe(5);
    expect(buffer.stats().blockedWrites).toBe(5);
    expect(buffer.stats().blockedMsTotal).toBeGreaterThanOrEqual(5 * 250);
    expect(buffer.stats().pendingBytes).toBe(40 * KiB);
    expect(evicted).toBe(0); // 40 pending + 60 evictable is not over the bound: kept for local reads
    account.addPending(10 * KiB);
    await new Promise((r) => setTimeout(r, 10));
    expect(evicted).toBe(1);
    expect(buffer.stats().evictedBytes).toBe(60 * KiB);
  });

  it('never holds a volume that has nothing to upload (its open SCO must fill before it can be uploaded)', async () => {
    const { account } = setup(false);
    account.addPending(120 * KiB);
    expect(await timed(account.admit(4 * KiB))).toBeLessThan(50);
  });

  it('releases waiters when the volume closes', async () => {
    const { buffer, account } = setup();
    account.addPending(100 * KiB);
    const write = account.admit(4 * KiB);
    await new Promise((r) => setTimeout(r, 50));
    account.close();
    await write;
    expect(buffer.stats().pendingBytes).toBe(0);
  });
});

describe('dead SCOs', () => {
  it('evicts a dead SCO as soon as it is evictable, and an evictable one as soon as it dies, far below the bound', async () => {
    const buffer = new WriteBuffer({ bytesMax: 1024 * KiB });
    const dead = new Set<number>([1]);
    const account = buffer.account('v', () => true, () => undefined, (seq) => dead.has(seq));
    const evicted: number[] = [];
    const evict = (seq: number) => async () => {
      evicted.push(seq);
    };
    account.markEvictable(1, 10 * KiB, evict(1)); // dead already
    account.markEvictable(2, 10 * KiB, evict(2)); // live
    await new Promise((r) => setTimeout(r, 10));
    expect(evicted).toEqual([1]);
    account.evictNow(3); // not evictable (yet): nothing happens
    await new Promise((r) => setTimeout(r, 10));
    expect(evicted).toEqual([1]);
    account.evictNow(2);
    await new Promise((r) => setTimeout(r, 10));
    expect(evicted).toEqual([1, 2]);
    expect(buffer.stats()).toMatchObject({ evictedScos: 2, deadScosEvicted: 2, evictableBytes: 0 });
  });

  it('evicts dead SCOs before older live ones when the bound is exceeded', async () => {
    const buffer = new WriteBuffer({ bytesMax: 25 * KiB });
    let dead = false;
    const account = buffer.account('v', () => true, () => undefined, (seq) => dead && seq === 3);
    const evicted: number[] = [];
    let openGate = () => {};
    const gate = new Promise<void>((resolve) => (openGate = resolve));
    account.markEvictable(1, 10 * KiB, async () => {
      evicted.push(1);
      await gate; // the loop is busy while SCO 3 dies
    });
    account.markEvictable(2, 10 * KiB, async () => void evicted.push(2));
    account.addPending(10 * KiB); // 30 KiB > 25: evict the oldest
    dead = true;
    account.markEvictable(3, 10 * KiB, async () => void evicted.push(3));
    openGate();
    await new Promise((r) => setTimeout(r, 10));
    expect(evicted).toEqual([1, 3]); // 3, dead, before 2; then 10 pending + 10 evictable fit the bound
  });
});

