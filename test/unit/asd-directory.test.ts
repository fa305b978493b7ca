import { randomBytes } from 'node:crypto';
import { mkdtemp, open, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { DirectoryAsd } from '../../backend/asd-directory.ts';
import { directOpenFlags, directWriteAlignBytes, directWriteChunkBytes, DirectWriteStaging } from '../../backend/direct-write.ts';
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
      const asd = new DirectoryAsd('asd-1', root, { gate });
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
    const asd = new DirectoryAsd('asd-1', root, { gate: new InlineIoGate() });
    const big = randomBytes(limits.fileWriteBytesMax * 2 + 11);
    const small = Array.from({ length: iovecsPerWriteMax + 5 }, (_, i) => Buffer.from([i & 0xff, i >> 8]));
    const body = Buffer.concat([...small, big]);
    await asd.put('vol/x/frag-1', [...small, big]);
    expect((await asd.getRange('vol/x/frag-1', 0, body.length)).equals(body)).toBe(true);
  });
});

describe('DirectoryAsd O_DIRECT puts', () => {
  async function newRoot(): Promise<string> {
    const root = await mkdtemp(path.join(tmpdir(), 'keel-asd-'));
    dirs.push(root);
    return root;
  }
  const bodyOf = (n: number) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 7) % 253));

  it('writes with O_DIRECT through a staging buffer and truncates the padded tail', async () => {
    const staging = new DirectWriteStaging(2);
    const asd = new DirectoryAsd('asd-1', await newRoot(), { staging });
    // Crosses a staging chunk and ends mid-block; the second buffer starts at an odd offset of the stream.
    const body = bodyOf(directWriteChunkBytes + directWriteAlignBytes + 123);
    await asd.put('vol/x/frag-0', [body.subarray(0, 77), body.subarray(77)]);
    expect(asd.writeStats()).toMatchObject({ directPuts: 1, bufferedPuts: 0, directIo: true });
    const stored = await readFile(path.join(asd.root, 'vol/x/frag-0'));
    expect(stored.length).toBe(body.length);
    expect(stored.equals(body)).toBe(true);
    expect(staging.stats()).toMatchObject({ free: 2, taken: 1, exhausted: 0 });
  });

  it('goes buffered when every staging buffer is in use, or when direct I/O is off', async () => {
    const staging = new DirectWriteStaging(1);
    const asd = new DirectoryAsd('asd-1', await newRoot(), { staging });
    const bodies = [bodyOf(5000), bodyOf(9000)];
    await Promise.all(bodies.map((body, i) => asd.put(`vol/x/frag-${i}`, [body])));
    expect(asd.writeStats()).toMatchObject({ directPuts: 1, bufferedPuts: 1 });
    expect(staging.stats().exhausted).toBe(1);
    for (const [i, body] of bodies.entries()) expect((await readFile(path.join(asd.root, `vol/x/frag-${i}`))).equals(body)).toBe(true);

    const off = new DirectoryAsd('asd-2', await newRoot(), { staging, directIo: false });
    await off.put('k', [bodyOf(100)]);
    expect(off.writeStats()).toMatchObject({ directPuts: 0, bufferedPuts: 1, directIo: false });
  });

  it('falls back to buffered writes for good when the kernel refuses the direct write (EINVAL)', async (ctx) => {
    const root = await newRoot();
    // A buffer one byte past an allocation is never aligned: the kernel refuses it where alignment is enforced.
    const misaligned = () => Buffer.allocUnsafeSlow(directWriteChunkBytes + 1).subarray(1);
    if (!(await refusesMisalignedDirectWrite(root, misaligned()))) ctx.skip(); // e.g. tmpfs accepts any address
    const staging = { take: misaligned, give: () => undefined } as unknown as DirectWriteStaging;
    const asd = new DirectoryAsd('asd-1', root, { staging });
    const body = bodyOf(10_000);
    await asd.put('vol/x/frag-0', [body]);
    await asd.put('vol/x/frag-1', [body]);
    expect(asd.writeStats()).toMatchObject({ directPuts: 0, bufferedPuts: 2, directIo: false });
    expect(asd.writeStats().directIoOffReason).toMatch(/O_DIRECT refused/);
    expect((await readFile(path.join(root, 'vol/x/frag-0'))).equals(body)).toBe(true);
    expect((await readdir(path.join(root, 'vol/x'))).sort()).toEqual(['frag-0', 'frag-1']); // no temp file left
  });
});

async function refusesMisalignedDirectWrite(dir: string, buffer: Buffer): Promise<boolean> {
  const handle = await open(path.join(dir, 'probe'), directOpenFlags, 0o644);
  try {
    await handle.write(buffer, 0, directWriteAlignBytes, 0);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EINVAL';
  } finally {
    await handle.close();
    await rm(path.join(dir, 'probe'));
  }
}
