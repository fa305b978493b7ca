import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { NodeDisk } from '../../shared/disk.ts';
import { InlineIoGate } from '../../shared/inline-io-gate.ts';
import { limits } from '../../shared/limits.ts';

/** A clock the test moves: each inline call "takes" the next duration in the list. */
function scriptedGate(durationsUs: number[]) {
  let nowMs = 0;
  const gate = new InlineIoGate({ nowMs: () => nowMs }, 400, 1_000);
  const runOnce = (bytes = 4096) =>
    gate.run(bytes, () => {
      nowMs += (durationsUs.shift() ?? 5) / 1000;
      return 'inline';
    });
  const advanceMs = (ms: number) => (nowMs += ms);
  return { gate, runOnce, advanceMs };
}

describe('InlineIoGate', () => {
  it('runs fast operations inline and keeps doing so', () => {
    const { gate, runOnce } = scriptedGate([3, 4, 5]);
    expect([runOnce(), runOnce(), runOnce()]).toEqual(['inline', 'inline', 'inline']);
    expect(gate.stats()).toMatchObject({ inline: 3, pooled: 0, slow: 0, pauses: 0 });
  });

  it('tolerates one slow operation (a preemption) but pauses after a streak of them', () => {
    const { gate, runOnce } = scriptedGate([900, 5, 900, 900]);
    runOnce();
    runOnce();
    expect(gate.stats().pauses).toBe(0);
    runOnce();
    runOnce(); // second slow one in a row
    expect(gate.stats()).toMatchObject({ slow: 3, pauses: 1 });
    expect(runOnce()).toBeUndefined(); // the caller goes to the thread pool
    expect(gate.stats().pooled).toBe(1);
  });

  it('tries inline again once the pause is over', () => {
    const { runOnce, advanceMs } = scriptedGate(Array(limits.inlineIoSlowStreakMax).fill(5_000));
    for (let i = 0; i < limits.inlineIoSlowStreakMax; i++) runOnce();
    expect(runOnce()).toBeUndefined();
    advanceMs(999);
    expect(runOnce()).toBeUndefined();
    advanceMs(10);
    expect(runOnce()).toBe('inline');
  });

  it('allows large transfers their copy time', () => {
    // 1 MiB at 1 ns per byte is about 1 ms on top of the 400 us base: 1.2 ms is not slow.
    const { gate, runOnce } = scriptedGate([1_200, 1_200, 1_200]);
    runOnce(1 << 20);
    runOnce(1 << 20);
    expect(gate.stats().slow).toBe(0);
    runOnce(4096);
    expect(gate.stats().slow).toBe(1);
  });

  it('sends operations over bytesMax to the pool without running them', () => {
    const { gate } = scriptedGate([]);
    let ran = 0;
    expect(gate.run(1 << 20, () => ++ran, 256 * 1024)).toBeUndefined();
    expect(gate.run(256 * 1024, () => ++ran, 256 * 1024)).toBe(1);
    expect(gate.stats()).toMatchObject({ inline: 1, pooled: 1 });
  });

  it('NodeDisk writes over limits.inlineWriteBytesMax through the pool, and reads of any size inline', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'keel-gate-'));
    const gate = new InlineIoGate();
    try {
      const file = await new NodeDisk(gate).open(path.join(dir, 'f'), 'createNew');
      const big = Buffer.alloc(limits.inlineWriteBytesMax + 4096, 7);
      await file.writev([big], 0);
      expect(gate.stats()).toMatchObject({ inline: 0, pooled: 1 });
      await file.write(Buffer.alloc(4096, 1), 0);
      const back = Buffer.alloc(big.length);
      await file.read(back, 0);
      expect(gate.stats()).toMatchObject({ inline: 2, pooled: 1 });
      expect([back[0], back[4096], back[big.length - 1]]).toEqual([1, 7, 7]);
      await file.close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('does nothing inline when disabled', () => {
    const gate = new InlineIoGate(undefined, 400, 1000, false);
    expect(gate.run(1, () => 'inline')).toBeUndefined();
  });
});

describe('NodeDisk through the gate', () => {
  async function roundTrip(gate: InlineIoGate): Promise<Buffer> {
    const dir = await mkdtemp(path.join(tmpdir(), 'keel-gate-'));
    try {
      const disk = new NodeDisk(gate);
      const file = await disk.open(path.join(dir, 'f'), 'createNew');
      await file.writev([Buffer.alloc(4096, 1), Buffer.alloc(4096, 2)], 0);
      await file.write(Buffer.alloc(100, 3), 8192);
      const back = Buffer.alloc(8292 + 50);
      const read = await file.read(back, 0);
      await file.close();
      return back.subarray(0, read);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  it('reads back the same bytes inline and through the thread pool', async () => {
    const inline = new InlineIoGate();
    const pooled = new InlineIoGate(undefined, 400, 1000, false);
    const viaInline = await roundTrip(inline);
    const viaPool = await roundTrip(pooled);
    expect(viaInline.length).toBe(8292); // short at end of file
    expect([viaInline[0], viaInline[4096], viaInline[8192]]).toEqual([1, 2, 3]);
    expect(viaPool.equals(viaInline)).toBe(true);
    expect(inline.stats().inline).toBeGreaterThanOrEqual(3);
    expect(pooled.stats().inline).toBe(0);
  });
});

