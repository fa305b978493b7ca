/**
 * Snapshots, clones, rollback, scrubbing and export streams end to end: a real `keel up` cluster, the
 * `keel` CLI, and Debian's NBD clients (qemu-io, qemu-img, nbdinfo) plus Keel's own NBD client for the
 * write that must be refused with EPERM.
 */
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NbdClient } from '../../edge/nbd-client.ts';
import { isKeelError } from '../../shared/errors.ts';
import { KeelCluster } from '../helpers/keel-cluster.ts';
import { keelBin, run } from '../helpers/processes.ts';
import { until } from '../helpers/until.ts';

describe('snapshots on a keel up cluster', () => {
  let cluster: KeelCluster;
  let work: string;

  beforeAll(async () => {
    cluster = await KeelCluster.start({ volumeSize: '64M', scoSize: '4M', routers: 2 });
    work = await mkdtemp(path.join(tmpdir(), 'keel-snap-'));
  }, 90_000);

  afterAll(async () => {
    await cluster?.stop();
    await cluster?.destroy();
    await rm(work, { recursive: true, force: true });
  });

  const keelOk = async (...args: string[]) => {
    const result = await cluster.keel(...args);
    expect(result.code, `keel ${args.join(' ')}: ${result.stderr}`).toBe(0);
    return result.stdout;
  };
  /** qemu-io commands against an export; fails the test unless every command succeeds. */
  const qemuIo = async (exportName: string, commands: string[], readOnly = false) => {
    const args = ['-f', 'raw', ...(readOnly ? ['-r'] : []), ...commands.flatMap((c) => ['-c', c]), cluster.uri(exportName)];
    const result = await run('qemu-io', args);
    expect(result.stdout + result.stderr, `qemu-io ${commands.join('; ')}`).not.toMatch(/Pattern verification failed|error|failed/i);
    expect(result.code).toBe(0);
    return result.stdout;
  };

  it('serves VOL@SNAP read-only with the data of that moment; writes get EPERM', async () => {
    await qemuIo('demo', ['write -P 0xa1 0 1M', 'write -P 0xa2 8M 256k']);
    expect((await keelOk('snapshot', 'create', 'demo', 's1')).trim()).toBe('s1');
    await qemuIo('demo', ['write -P 0xb1 0 512k', 'write -z 8M 256k']);

    await qemuIo('demo@s1', ['read -P 0xa1 0 1M', 'read -P 0xa2 8M 256k', 'read -P 0 16M 64k'], true);
    await qemuIo('demo', ['read -P 0xb1 0 512k', 'read -P 0xa1 512k 512k', 'read -P 0 8M 256k'], true);

    const info = JSON.parse((await run('nbdinfo', ['--json', cluster.uri('demo@s1')])).stdout).exports[0];
    expect(info['export-size']).toBe(64 * 2 ** 20);
    expect(info.is_read_only).toBe(true);

    const client = await NbdClient.connect(cluster.uri('demo@s1'));
    try {
      expect(client.readOnly).toBe(true);
      const refused = await client.write(0, Buffer.alloc(4096, 1)).then(() => undefined, (err: unknown) => err);
      expect(isKeelError(refused, 'READ_ONLY')).toBe(true);
      expect((refused as Error).message).toMatch(/EPERM/);
      expect((await client.read(0, 4096)).every((b) => b === 0xa1)).toBe(true);
    } finally {
      await client.close();
    }

    const missing = await run('qemu-io', ['-f', 'raw', '-r', '-c', 'read 0 4k', cluster.uri('demo@nope')]);
    expect(missing.code).not.toBe(0);
  }, 60_000);

  it('lists, labels, refuses duplicates, and clones that fall through to the parent snapshot', async () => {
    const duplicate = await cluster.keel('snapshot', 'create', 'demo', 's1');
    expect(duplicate.code).toBe(1);
    expect(duplicate.stderr).toMatch(/already has a snapshot 's1'/);
    await keelOk('snapshot', 'label', 'demo', 's1', 'purpose=test', 'owner=ci');
    const listed = JSON.parse(await keelOk('snapshot', 'list', 'demo', '--json'));
    expect(listed.snapshots).toMatchObject([{ name: 's1', labels: { purpose: 'test', owner: 'ci' }, sizeBytes: 64 * 2 ** 20 }]);

    expect(await keelOk('snapshot', 'clone', 'demo@s1', 'c1')).toMatch(/created clone 'c1' of demo@s1/);
    await qemuIo('c1', ['read -P 0xa1 0 1M', 'write -P 0xc1 4k 4k', 'read -P 0xc1 4k 4k', 'read -P 0xa1 8k 8k', 'write -z 0 4k', 'read -P 0 0 4k', 'read -P 0xa2 8M 256k']);
    await qemuIo('demo', ['read -P 0xb1 0 512k'], true); // the parent is untouched

    const refused = await cluster.keel('snapshot', 'delete', 'demo', 's1');
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/dependent clones: c1/);

    expect((await cluster.keel('volume', 'create', 'fresh', '16M')).code).toBe(0); // no client opened it yet
    const tree = await keelOk('tree');
    expect(tree).toMatch(/fresh \(16 MiB/);
    expect(tree).toMatch(/demo \(64 MiB/);
    expect(tree).toMatch(/@s1/);
    expect(tree).toMatch(/↳ c1/);
    const treeJson = JSON.parse(await keelOk('tree', '--json'));
    expect(treeJson.find((v: { volume: string }) => v.volume === 'c1').origin).toMatchObject({ parentVolume: 'demo', parentSnapshotName: 's1' });

    // A clone reads its parent through the parent's driver on their router: neither moves alone.
    const records = JSON.parse(await keelOk('volume', 'list', '--json')) as Array<{ name: string; owner: string; cloneOf?: string }>;
    const home = records.find((v) => v.name === 'demo')!.owner;
    expect(records.find((v) => v.name === 'c1')).toMatchObject({ owner: home, cloneOf: 'demo' });
    const other = home === 'r1' ? 'r2' : 'r1';
    for (const [volume, why] of [['c1', "volume 'c1' is a clone of 'demo'"], ['demo', "volume 'demo' has clones that read its data on its router \\(c1\\)"]]) {
      const moved = await cluster.keel('volume', 'move', volume, '--to', other);
      expect(moved.code, moved.stdout).toBe(1);
      expect(moved.stderr).toMatch(new RegExp(`^keel: ${why}.*: clones and their parents stay on router ${home}`));
    }
    await qemuIo('c1', ['read -P 0xc1 4k 4k', 'read -P 0xa1 8k 8k'], true); // still served, from the parent where unwritten

    // A pipelined snapshot (the near-continuous mode: not fsynced before the call returns) of the clone.
    expect((await keelOk('snapshot', 'create', 'c1', 'p1', '--pipelined')).trim()).toBe('p1');
    await qemuIo('c1', ['write -P 0xc2 4k 4k']);
    await qemuIo('c1@p1', ['read -P 0xc1 4k 4k', 'read -P 0 0 4k', 'read -P 0xa1 8k 8k'], true);
  }, 60_000);

  it('refuses to delete a snapshot while a client reads it as an export, and deletes it once the client is gone', async () => {
    await keelOk('snapshot', 'create', 'demo', 'exported');
    const reader = await NbdClient.connect(cluster.uri('demo@exported'));
    try {
      await reader.read(0, 4096);
      const refused = await cluster.keel('snapshot', 'delete', 'demo', 'exported');
      expect(refused.code).toBe(1);
      expect(refused.stderr.trim()).toBe("keel: snapshot 'demo@exported' is open as an export by 1 client(s): disconnect them before deleting it");
      await reader.read(4096, 4096); // the export still reads
    } finally {
      await reader.close();
    }
    await until(async () => (await cluster.keel('snapshot', 'delete', 'demo', 'exported')).code === 0, 10_000);
  }, 60_000);

  it('rolls back (deleting newer snapshots), survives a restart, scrubs space back', async () => {
    await keelOk('snapshot', 'create', 'demo', 's2');
    await qemuIo('demo', ['write -P 0xd1 0 2M']);
    const rollback = await keelOk('snapshot', 'rollback', 'demo', 's1');
    expect(rollback).toMatch(/rolled back 'demo' to snapshot 's1'/);
    expect(rollback).toMatch(/deleted newer snapshots: s2/);
    await qemuIo('demo', ['read -P 0xa1 0 1M', 'read -P 0 1M 1M', 'read -P 0xa2 8M 256k'], true);

    await cluster.stop();
    await cluster.startUp();
    const listed = JSON.parse(await keelOk('snapshot', 'list', 'demo', '--json'));
    expect(listed.snapshots.map((s: { name: string }) => s.name)).toEqual(['s1']);
    await qemuIo('demo@s1', ['read -P 0xa1 0 1M'], true);
    await qemuIo('c1', ['read -P 0xc2 4k 4k', 'read -P 0 0 4k', 'read -P 0xa1 8k 8k'], true);
    await qemuIo('c1@p1', ['read -P 0xc1 4k 4k'], true); // the pipelined snapshot survived the restart

    // Overwrite 12 MiB twice: the first copy is garbage no snapshot references.
    await qemuIo('demo', ['write -P 0xe1 16M 12M']);
    await qemuIo('demo', ['write -P 0xe2 16M 12M']);
    const report = JSON.parse(await keelOk('scrub', 'demo', '--json'));
    expect(report.scosDeleted).toBeGreaterThan(0);
    expect(report.backendBytesAfter).toBeLessThan(report.backendBytesBefore - 8 * 2 ** 20);
    // Locally the first copy is gone too: evicted as dead SCOs once on the backend, or deleted by the scrub.
    expect(report.bytesAfter).toBeLessThanOrEqual(report.bytesBefore);
    expect(report.bytesAfter).toBeLessThan(report.backendBytesBefore - 8 * 2 ** 20);
    await qemuIo('demo', ['read -P 0xe2 16M 12M', 'read -P 0xa1 0 1M'], true);
    await qemuIo('demo@s1', ['read -P 0xa1 0 1M', 'read -P 0 16M 12M'], true);
    await qemuIo('c1', ['read -P 0xa1 8k 8k'], true);
  }, 90_000);

  it('moves the live half of half-overwritten SCOs at the pace asked for, printing progress', async () => {
    await qemuIo('demo', ['write -P 0x31 32M 8M']);
    const halves = Array.from({ length: 64 }, (_, i) => `write -P 0x32 ${32 * 2 ** 20 + i * 128 * 1024} 64k`);
    await qemuIo('demo', halves);
    const bad = await cluster.keel('scrub', 'demo', '--clusters-per-second', '0');
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/--clusters-per-second must be a whole number from 1 on, got '0'/);

    const result = await cluster.keel('scrub', 'demo', '--json', '--clusters-per-second', '400');
    expect(result.code, result.stderr).toBe(0);
    const report = JSON.parse(result.stdout);
    expect(report.clustersRewritten).toBeGreaterThanOrEqual(800); // at least 2 of the 8 MiB's SCOs, half live
    expect(report.durationMs).toBeGreaterThanOrEqual(1000); // 800 clusters at 400 a second
    expect(result.stderr).toMatch(/^rewrite \d+\/\d+ clusters \(\d+ s\)$/m);
    await qemuIo('demo', Array.from({ length: 64 }, (_, i) => `read -P 0x32 ${32 * 2 ** 20 + i * 128 * 1024} 64k`), true);
    await qemuIo('demo', Array.from({ length: 64 }, (_, i) => `read -P 0x31 ${32 * 2 ** 20 + i * 128 * 1024 + 64 * 1024} 64k`), true);
  }, 60_000);

  it('defragments on request: 4k writes scattered over 2 MiB become one run per extent, data unchanged', async () => {
    await qemuIo('demo', ['write -P 0x41 44M 2M']);
    await qemuIo('demo', Array.from({ length: 32 }, (_, i) => `write -P 0x42 ${44 * 2 ** 20 + i * 64 * 1024} 4k`));
    const text = await keelOk('scrub', 'demo', '--defrag');
    const done = /defragmented (\d+) extents of 1 MiB \((\d+) clusters rewritten in LBA order\)/.exec(text);
    expect(done, text).not.toBeNull();
    expect(Number(done![1])).toBeGreaterThanOrEqual(2); // 44M-46M: each extent in 33 runs
    expect(Number(done![2])).toBeGreaterThanOrEqual(512);
    const report = JSON.parse(await keelOk('scrub', 'demo', '--defrag', '--json'));
    expect(report.extentsDefragmented).toBe(0); // the first run left nothing fragmented
    expect(report.extentsFragmentedLeft).toBe(0);
    const reads = Array.from({ length: 32 }, (_, i) => [`read -P 0x42 ${44 * 2 ** 20 + i * 64 * 1024} 4k`, `read -P 0x41 ${44 * 2 ** 20 + i * 64 * 1024 + 4096} 60k`]).flat();
    await qemuIo('demo', reads, true);
  }, 60_000);

  it('exports a snapshot and the changes between two, and imports them into another volume', async () => {
    await keelOk('snapshot', 'create', 'demo', 'x1');
    await qemuIo('demo', ['write -P 0xf1 40M 64k', 'write -z 0 256k']);
    await keelOk('snapshot', 'create', 'demo', 'x2');
    const diff = JSON.parse(await keelOk('snapshot', 'diff', 'demo', 'x1', 'x2', '--json'));
    expect(diff).toEqual([
      { offset: 0, length: 256 * 1024, kind: 'zero' },
      { offset: 40 * 2 ** 20, length: 64 * 1024, kind: 'data' },
    ]);
    await keelOk('volume', 'create', 'copy', '64M', '--sco-size', '4M');
    const full = path.join(work, 'full.kexp');
    const incremental = path.join(work, 'inc.kexp');
    const sh = (command: string) => run('sh', ['-c', command]);
    const keel = `${process.execPath} ${keelBin}`;
    const data = `--data ${cluster.dataDir}`;
    expect((await sh(`${keel} snapshot export demo x1 ${data} > ${full}`)).code).toBe(0);
    expect((await sh(`${keel} snapshot export demo x2 --from x1 ${data} > ${incremental}`)).code).toBe(0);
    expect((await stat(incremental)).size).toBeLessThan(100 * 1024);

    // A truncated stream is refused with a clear error and applies no snapshot.
    const truncated = await sh(`head -c 5000 ${full} | ${keel} snapshot import copy ${data}`);
    expect(truncated.code).toBe(1);
    expect(truncated.stderr).toMatch(/truncated|checksum/);
    // An incremental stream needs its base.
    const baseless = await sh(`${keel} snapshot import copy ${data} < ${incremental}`);
    expect(baseless.stderr).toMatch(/x1/);
    expect(baseless.code).toBe(1);

    // A target smaller than the stream's volume is refused, with the resize that fixes it.
    await keelOk('volume', 'create', 'tiny', '32M', '--sco-size', '4M');
    const small = await sh(`${keel} snapshot import tiny ${data} < ${full}`);
    expect(small.code).toBe(1);
    expect(small.stderr.trim()).toBe("keel: volume 'tiny' (32 MiB) is smaller than the stream's volume (64 MiB): resize it first (keel volume resize tiny 67108864)");
    await keelOk('volume', 'resize', 'tiny', '67108864');
    expect((await sh(`${keel} snapshot import tiny ${data} < ${full}`)).stdout).toMatch(/imported tiny@x1/);
    expect((await sh(`${keel} snapshot import copy ${data} < ${full}`)).stdout).toMatch(/imported copy@x1/);
    expect((await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', cluster.uri('demo@x1'), cluster.uri('copy')])).code).toBe(0);
    // A target written since the base is refused (it would end neither x1 nor x2), until rolled back.
    await qemuIo('copy', ['write -P 0x99 30M 4k']);
    const diverged = await sh(`${keel} snapshot import copy ${data} < ${incremental}`);
    expect(diverged.code).toBe(1); // a state to mend, not a malformed command (2)
    expect(diverged.stderr.trim()).toBe(
      "keel: volume 'copy' changed since snapshot 'x1' (1 extents): this incremental stream applies only to 'x1' as it was; roll back first (keel snapshot rollback copy x1), or import with --force to apply it on top",
    );
    await keelOk('snapshot', 'rollback', 'copy', 'x1');
    expect((await sh(`${keel} snapshot import copy ${data} < ${incremental}`)).stdout).toMatch(/incremental from x1/);
    expect((await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', cluster.uri('demo@x2'), cluster.uri('copy')])).code).toBe(0);
  }, 90_000);

  it('serves templates read-only, clones them, and exports a clone with its parent data', async () => {
    await keelOk('volume', 'create', 'golden', '64M', '--sco-size', '4M');
    await qemuIo('golden', ['write -P 0x61 0 2M', 'write -P 0x62 32M 1M']);
    expect(await keelOk('volume', 'template', 'golden')).toMatch(/read-only template \(snapshot 'template'\)/);
    const write = await run('qemu-io', ['-f', 'raw', '-c', 'write 0 4k', cluster.uri('golden')]);
    expect(write.code).not.toBe(0);
    expect(write.stderr).toMatch(/Permission denied|read-only/i);

    expect(await keelOk('volume', 'clone', 'golden', 'vm1')).toMatch(/clone 'vm1' of golden@template/);
    await qemuIo('vm1', ['read -P 0x61 0 2M', 'write -P 0x71 1M 4k', 'read -P 0x71 1M 4k', 'read -P 0x62 32M 1M']);
    await keelOk('snapshot', 'create', 'vm1', 'v1');
    await keelOk('volume', 'create', 'vm1-copy', '64M', '--sco-size', '4M');
    const stream = path.join(work, 'vm1.kexp');
    const keel = `${process.execPath} ${keelBin} `;
    const data = ` --data ${cluster.dataDir}`;
    expect((await run('sh', ['-c', `${keel}snapshot export vm1 v1${data} > ${stream} && ${keel}snapshot import vm1-copy${data} < ${stream}`])).code).toBe(0);
    expect((await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', cluster.uri('vm1@v1'), cluster.uri('vm1-copy')])).code).toBe(0);
    await qemuIo('vm1-copy', ['read -P 0x61 0 1M', 'read -P 0x71 1M 4k', 'read -P 0x62 32M 1M'], true);

    const refused = await cluster.keel('volume', 'delete', 'golden');
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/dependent clones: vm1/);
  }, 60_000);
});
