import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runKeel } from '../helpers/processes.ts';

describe('keel CLI: volumes and bad arguments', () => {
  let dataDir: string;
  const keel = (...args: string[]) => runKeel([...args, '--data', dataDir]);

  beforeAll(async () => {
    dataDir = await mkdtemp(path.join(tmpdir(), 'keel-cli-'));
  });
  afterAll(async () => {
    await rm(dataDir, { recursive: true, force: true });
  });

  it('creates volumes with human sizes and lists them as a table and as JSON', async () => {
    const created = await keel('volume', 'create', 'vm1', '10G');
    expect(created.code).toBe(0);
    expect(created.stdout).toContain("created volume 'vm1' of 10 GiB");
    expect((await keel('volume', 'create', 'vm2', '1.5G', '--sco-size', '16M')).code).toBe(0);
    const list = await keel('volume', 'list', '--json');
    expect(JSON.parse(list.stdout).map((v: { name: string; sizeBytes: number; scoSizeBytes: number }) => [v.name, v.sizeBytes, v.scoSizeBytes])).toEqual([
      ['vm1', 10 * 2 ** 30, 64 * 2 ** 20],
      ['vm2', 1.5 * 2 ** 30, 16 * 2 ** 20],
    ]);
    const table = await keel('volume', 'list');
    expect(table.stdout.split('\n')[0]).toMatch(/^NAME\s+SIZE\s+USED\s+SCO\s+OWNER\s+EPOCH\s+DTL$/);
    expect(table.stdout).toMatch(/vm2\s+1\.5 GiB\s+-\s+16 MiB/); // no router runs: nobody reports what is written
  });

  it('refuses a taken name, a bad size, a bad name and a bad SCO size with one clear line', async () => {
    const taken = await keel('volume', 'create', 'vm1', '1G');
    expect(taken.code).toBe(1);
    expect(taken.stderr.trim()).toBe("keel: volume 'vm1' already exists");
    const badSize = await keel('volume', 'create', 'x', '10Q');
    expect(badSize.code).toBe(2);
    expect(badSize.stderr).toContain("'10Q' is not a size");
    const badName = await keel('volume', 'create', 'a/b', '1G');
    expect(badName.code).toBe(2);
    expect(badName.stderr).toContain('not a valid volume name');
    const badSco = await keel('volume', 'create', 'y', '1G', '--sco-size', '1M');
    expect(badSco.code).toBe(2);
    expect(badSco.stderr).toContain('SCO size must be');
    expect(badSize.stderr).not.toContain('    at '); // no stack traces for operating errors
  });

  it('refuses an empty or overlong snapshot name before asking any router', async () => {
    const empty = await keel('snapshot', 'create', 'vm1', '');
    expect(empty.code).toBe(2);
    expect(empty.stderr.trim()).toBe("keel: '' is not a valid snapshot name: use 1-64 letters, digits, '.', '_', ':' or '-', starting with a letter or digit");
    const long = await keel('snapshot', 'delete', 'vm1', 'x'.repeat(20_000));
    expect(long.code).toBe(2);
    expect(long.stderr.trim()).toBe(`keel: '${'x'.repeat(80)}…' (20000 characters) is not a valid snapshot name: use 1-64 letters, digits, '.', '_', ':' or '-', starting with a letter or digit`);
  });

  it('reports unknown volumes, guards shrinking, resizes and deletes', async () => {
    const unknown = await keel('volume', 'info', 'nope');
    expect(unknown.code).toBe(1);
    expect(unknown.stderr.trim()).toBe("keel: volume 'nope' does not exist");
    const scrubUnknown = await keel('scrub', 'nope'); // no "scrubbing..." banner first
    expect(scrubUnknown.code).toBe(1);
    expect(scrubUnknown.stderr.trim()).toBe("keel: volume 'nope' does not exist");
    const shrink = await keel('volume', 'resize', 'vm1', '5G');
    expect(shrink.code).toBe(2);
    expect(shrink.stderr).toContain('--allow-shrink');
    const shrinkWithoutRouter = await keel('volume', 'resize', 'vm1', '5G', '--allow-shrink'); // the owner must discard the tail
    expect(shrinkWithoutRouter.code).toBe(1);
    expect(shrinkWithoutRouter.stderr.trim()).toMatch(/^keel: no router serving volume 'vm1' could be reached/);
    expect((await keel('volume', 'resize', 'vm1', '20G')).code).toBe(0);
    const info = JSON.parse((await keel('volume', 'info', 'vm1', '--json')).stdout);
    expect(info.sizeBytes).toBe(20 * 2 ** 30);
    expect((await keel('volume', 'delete', 'vm1')).code).toBe(0);
    expect((await keel('volume', 'delete', 'vm1')).code).toBe(1);
  });

  it('has --help on every command', async () => {
    for (const command of [[], ['up'], ['router'], ['router', 'list'], ['edge'], ['volume'], ['volume', 'create'], ['volume', 'list']]) {
      const help = await runKeel([...command, '--help']);
      expect(help.code, command.join(' ')).toBe(0);
      expect(help.stdout).toContain('Usage: keel');
    }
  });

  it('refuses a --ram-cache that is not a size, below one slab or over half the memory, before starting anything', async () => {
    for (const [size, message] of [
      ['lots', "'lots' is not a size"],
      ['1M', '--ram-cache 1M: at least 4 MiB, or 0 to turn it off'],
      ['64T', "more than half of this machine's"],
    ]) {
      const up = await runKeel(['up', '--data', dataDir, '--port', '10999', '--ram-cache', size!]);
      expect(up.code, size).toBe(2);
      expect(up.stderr, size).toContain(message);
      expect(up.stderr).not.toContain('    at ');
      const router = await runKeel(['router', '--id', 'rx', '--data', dataDir, '--ram-cache', size!]);
      expect(router.code, size).toBe(2);
      expect(router.stderr, size).toContain(message);
    }
  });

  it('rejects an unknown command and a missing argument without a stack trace', async () => {
    const unknown = await runKeel(['frobnicate']);
    expect(unknown.code).not.toBe(0);
    expect(unknown.stderr).toContain("unknown command 'frobnicate'");
    const missing = await keel('volume', 'create', 'onlyname');
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toContain("missing required argument 'size'");
  });

  it("says in volume info when the owner's volume driver failed (the DTL peer takes it over)", async () => {
    expect((await keel('volume', 'create', 'sick', '1G')).code).toBe(0);
    const documentPath = path.join(dataDir, 'coordination.json');
    const document = JSON.parse(await readFile(documentPath, 'utf8'));
    Object.assign(document.volumes.sick, { owner: 'r1', ownerEpoch: 3, ownerFailedEpoch: 3, dtlPeer: 'r2', dtlInSync: true });
    await writeFile(documentPath, JSON.stringify(document));
    expect((await keel('volume', 'info', 'sick')).stdout).toMatch(/owner: +r1 \(epoch 3; its volume driver failed there: the DTL peer takes it over\)/);
    document.volumes.sick.dtlInSync = false; // no safe takeover: the operator is told how to reopen it
    await writeFile(documentPath, JSON.stringify(document));
    expect((await keel('volume', 'info', 'sick')).stdout).toMatch(/epoch 3; its volume driver failed there; no safe takeover, the DTL was not in sync: mend the disk, then `keel volume takeover sick --to r1` or restart r1/);
    document.volumes.sick.ownerEpoch = 4; // a new owner's epoch leaves the mark stale
    await writeFile(documentPath, JSON.stringify(document));
    expect((await keel('volume', 'info', 'sick')).stdout).toMatch(/owner: +r1 \(epoch 4\)\n/);
  });

  it('refuses a data directory that cannot be one (a path under a file) with one line, for keel up too', async () => {
    const file = path.join(dataDir, 'a-file');
    await writeFile(file, 'not a directory');
    const up = await runKeel(['up', '--port', '1', '--data', path.join(file, 'data')]);
    expect(up.code).toBe(1);
    expect(up.stderr.trim()).toMatch(/^keel: cannot use .*a-file\/data as the data directory: ENOTDIR/);
    expect(up.stderr).not.toMatch(/\n\s+at /); // no stack trace
  });

  it('refuses a --data directory that does not exist instead of making an empty cluster there (a typo)', async () => {
    const typo = path.join(dataDir, 'dtaa');
    for (const args of [['volume', 'list'], ['volume', 'create', 'v', '1G'], ['snapshot', 'create', 'v', 's'], ['scrub', 'v'], ['router', 'list']]) {
      const refused = await runKeel([...args, '--data', typo]);
      expect(refused.code, args.join(' ')).toBe(2);
      expect(refused.stderr.trim()).toBe(`keel: no Keel cluster at ${typo} (no such directory): start one with \`keel up --data ${typo}\`, or point --data or $KEEL_DATA at an existing one`);
    }
    expect(existsSync(typo)).toBe(false);
  });
});
