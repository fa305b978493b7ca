import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { NodeDisk } from '../../shared/disk.ts';
import { limits } from '../../shared/limits.ts';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'keel-disk-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('NodeDisk.readFileInto', () => {
  it('reads the whole file into the buffer the caller hands out, and returns a view of its size', async () => {
    const file = path.join(dir, 'a');
    const data = randomBytes(3 * 1024 * 1024 + 17);
    await writeFile(file, data);
    const reused = Buffer.alloc(4 * 1024 * 1024, 0xee);
    let askedFor = -1;
    const view = await new NodeDisk().readFileInto(file, (sizeBytes) => {
      askedFor = sizeBytes;
      return reused;
    });
    expect(askedFor).toBe(data.length);
    expect(view!.buffer).toBe(reused.buffer);
    expect(view!.equals(data)).toBe(true);
    expect(reused[data.length]).toBe(0xee); // nothing past the file's end is touched
  });

  it('returns undefined for a missing file without asking for a buffer', async () => {
    let asked = false;
    expect(await new NodeDisk().readFileInto(path.join(dir, 'missing'), (n) => ((asked = true), Buffer.alloc(n)))).toBeUndefined();
    expect(asked).toBe(false);
  });
});

describe('NodeDisk writes larger than one syscall takes', () => {
  it('writev and write split at limits.fileWriteBytesMax and land every byte in place', async () => {
    expect(limits.fileWriteBytesMax).toBeLessThan(3 * 1024 * 1024); // so the data below needs several calls
    const parts = [randomBytes(1000), randomBytes(2 * 1024 * 1024 + 5), randomBytes(0), randomBytes(1024 * 1024 + 3)];
    const single = randomBytes(2 * limits.fileWriteBytesMax + 1);
    const disk = new NodeDisk();
    const file = await disk.open(path.join(dir, 'f'), 'createNew');
    await file.writev(parts, 7);
    const end = 7 + Buffer.concat(parts).length;
    await file.write(single, end);
    await file.close();
    const back = await readFile(path.join(dir, 'f'));
    expect(back.length).toBe(end + single.length);
    expect(back.subarray(7, end).equals(Buffer.concat(parts))).toBe(true);
    expect(back.subarray(end).equals(single)).toBe(true);
  });
});
