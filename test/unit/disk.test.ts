import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { NodeDisk } from '../../shared/disk.ts';

describe('NodeDisk.readFileInto', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'keel-disk-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

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
