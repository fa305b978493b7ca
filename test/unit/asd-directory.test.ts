import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { DirectoryAsd } from '../../backend/asd-directory.ts';
import { InlineIoGate } from '../../shared/inline-io-gate.ts';
import { limits } from '../../shared/limits.ts';
import { iovecsPerWriteMax } from '../../shared/write-slices.ts';

const dirs: string[] = [];
afterEach(async () => {
  for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
});

describe('DirectoryAsd ranged reads', () => {
  for (const mode of ['inline', 'thread pool'] as const) {
    it(`reads a range, short at the end, and reports a missing key (${mode})`, async () => {
      const root = await mkdtemp(path.join(tmpdir(), 'keel-asd-'));
      dirs.push(root);
      const gate = new InlineIoGate(undefined, 400, 1000, mode === 'inline');
      const asd = new DirectoryAsd('asd-1', root, gate);
      const body = Buffer.from(Array.from({ length: 10_000 }, (_, i) => i % 251));
      await asd.put('vol/x/frag-0', [body.subarray(0, 4000), body.subarray(4000)]);
      expect((await asd.getRange('vol/x/frag-0', 4096, 4096)).equals(body.subarray(4096, 8192))).toBe(true);
      expect((await asd.getRange('vol/x/frag-0', 8192, 4096)).equals(body.subarray(8192))).toBe(true); // short
      await expect(asd.getRange('vol/x/nope', 0, 10)).rejects.toMatchObject({ code: 'OBJECT_NOT_FOUND' });
      expect(gate.stats().inline > 0).toBe(mode === 'inline');
    });
  }
});

describe('DirectoryAsd puts', () => {
  it('stores an object larger than one write syscall, given as more buffers than writev takes', async () => {
    const root = await mkdtemp(path.join(tmpdir(), 'keel-asd-'));
    dirs.push(root);
    const asd = new DirectoryAsd('asd-1', root, new InlineIoGate());
    const big = randomBytes(limits.fileWriteBytesMax * 2 + 11);
    const small = Array.from({ length: iovecsPerWriteMax + 5 }, (_, i) => Buffer.from([i & 0xff, i >> 8]));
    const body = Buffer.concat([...small, big]);
    await asd.put('vol/x/frag-1', [...small, big]);
    expect((await asd.getRange('vol/x/frag-1', 0, body.length)).equals(body)).toBe(true);
  });
});
