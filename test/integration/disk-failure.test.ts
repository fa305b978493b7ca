/**
 * A router's disk fails under a volume it owns, with real processes: `chattr +i` on the volume's open SCO
 * file makes the owner's next append fail with EPERM, a real I/O error. The owner records the failure in
 * coordination and closes the volume; the edge re-sends the failed writes, the DTL peer takes the volume
 * over although the old owner lives, and qemu-io reads back every acknowledged write
 * (docs/high-availability.md, "A volume whose disk fails"). With no DTL no router may take it over: the
 * volume waits until the operator mends the disk and reopens it with `keel volume takeover --to` its owner.
 *
 * `chattr +i` needs root and a filesystem with the immutable flag (ext4 here and in CI); elsewhere the
 * suite is skipped and says why.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, openSync, readdirSync, rmSync, writeSync, writeFileSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeelCluster } from '../helpers/keel-cluster.ts';
import { expectPatternRead, qemuIo } from '../helpers/qemu-io.ts';
import { until } from '../helpers/until.ts';

/** True when `chattr +i` here makes writes to an already open file fail, as the test needs. */
function immutableFlagWorks(): boolean {
  const dir = mkdtempSync(path.join(tmpdir(), 'keel-chattr-'));
  const file = path.join(dir, 'probe');
  writeFileSync(file, 'x');
  const fd = openSync(file, 'r+');
  let works = false;
  if (spawnSync('chattr', ['+i', file]).status === 0) {
    try {
      writeSync(fd, 'y', 0);
    } catch {
      works = true;
    }
    spawnSync('chattr', ['-i', file]);
  }
  closeSync(fd);
  rmSync(dir, { recursive: true, force: true });
  if (!works) console.warn('disk-failure suite skipped: chattr +i does not stop writes here (needs root and ext4)');
  return works;
}

const canRun = spawnSync('qemu-io', ['--version']).status === 0 && immutableFlagWorks();

describe.skipIf(!canRun)('a router whose disk fails under a volume (chattr +i on its open SCO, qemu-io)', () => {
  let cluster: KeelCluster;
  const frozen = new Set<string>(); // files made immutable, made writable again at the end

  const io = (...commands: string[]) => qemuIo(cluster.uri('eio'), ...commands);
  const expectRead = (pattern: string, offset: string, length: string) => expectPatternRead(cluster.uri('eio'), pattern, offset, length);
  const volumeInfo = async () => JSON.parse((await cluster.keel('volume', 'info', 'eio', '--json')).stdout) as { owner: string; ownerEpoch: number; dtlInSync?: boolean };

  beforeAll(async () => {
    cluster = await KeelCluster.start({ volumeSize: '64M', scoSize: '4M', routers: 3 });
    const created = await cluster.keel('volume', 'create', 'eio', '256M', '--sco-size', '4M', '--owner', 'r1');
    expect(created.code, created.stderr).toBe(0);
  }, 90_000);

  afterAll(async () => {
    for (const file of frozen) spawnSync('chattr', ['-i', file]);
    await cluster?.stop();
    await cluster?.destroy();
  });

  it('hands the volume to its DTL peer, re-sends the failed writes there, and loses nothing acknowledged', async () => {
    const first = await io('write -P 0x31 0 8M', 'flush');
    expect(first.stdout + first.stderr).not.toMatch(/failed/i);
    await until(async () => (await volumeInfo()).dtlInSync === true, 20_000);
    const before = await volumeInfo();
    expect(before.owner).toBe('r1');

    const scoDir = path.join(cluster.dataDir, 'routers', 'r1', 'volumes', 'eio', 'scos');
    const sco = path.join(scoDir, readdirSync(scoDir).filter((name) => name.endsWith('.sco')).sort().at(-1)!);
    frozen.add(sco);
    expect(spawnSync('chattr', ['+i', sco]).status).toBe(0); // the owner's next append fails with EPERM

    const startedAt = Date.now();
    const second = await io('write -P 0x32 16M 8M', 'flush');
    const pausedMs = Date.now() - startedAt;
    expect(second.stdout + second.stderr).not.toMatch(/failed/i);
    const after = await volumeInfo();
    expect(after.owner).not.toBe('r1');
    expect(after.ownerEpoch).toBeGreaterThan(before.ownerEpoch);
    console.log('disk failure', JSON.stringify({ newOwner: after.owner, ownerEpoch: after.ownerEpoch, writeWithHandoverMs: pausedMs }));
    await expectRead('0x31', '0', '8M');
    await expectRead('0x32', '16M', '8M');
  }, 240_000);

  it('with no DTL, the volume waits for the operator, and `keel volume takeover --to` the mended owner reopens it while the write is re-sent', async () => {
    const uri = cluster.uri('eio0');
    const created = await cluster.keel('volume', 'create', 'eio0', '256M', '--sco-size', '4M', '--owner', 'r1', '--dtl-mode', 'none');
    expect(created.code, created.stderr).toBe(0);
    const first = await qemuIo(uri, 'write -P 0x41 0 8M', 'flush');
    expect(first.stdout + first.stderr).not.toMatch(/failed/i);
    const info = async () => JSON.parse((await cluster.keel('volume', 'info', 'eio0', '--json')).stdout) as { owner: string; ownerEpoch: number; ownerFailedEpoch?: number };
    const before = await info();

    const scoDir = path.join(cluster.dataDir, 'routers', 'r1', 'volumes', 'eio0', 'scos');
    const sco = path.join(scoDir, readdirSync(scoDir).filter((name) => name.endsWith('.sco')).sort().at(-1)!);
    frozen.add(sco);
    expect(spawnSync('chattr', ['+i', sco]).status).toBe(0);
    const startedAt = Date.now();
    const second = qemuIo(uri, 'write -P 0x42 16M 8M', 'flush'); // fails at r1; no router may take it over (no DTL)

    await until(async () => (await info()).ownerFailedEpoch === before.ownerEpoch, 15_000);
    const text = (await cluster.keel('volume', 'info', 'eio0')).stdout;
    expect(text).toMatch(/volume driver failed there; no takeover without a DTL: .*keel volume takeover eio0 --to r1/);
    expect(spawnSync('chattr', ['-i', sco]).status).toBe(0); // the operator mends the disk
    const reopened = await cluster.keel('volume', 'takeover', 'eio0', '--to', 'r1');
    expect(reopened.code, reopened.stderr).toBe(0);

    const written = await second;
    const waitedMs = Date.now() - startedAt;
    expect(written.stdout + written.stderr).not.toMatch(/failed/i);
    const after = await info();
    expect(after).toMatchObject({ owner: 'r1', ownerEpoch: before.ownerEpoch, ownerFailedEpoch: 0 });
    console.log('failed volume reopened by the operator', JSON.stringify({ writeWaitedMs: waitedMs }));
    await expectPatternRead(uri, '0x41', '0', '8M');
    await expectPatternRead(uri, '0x42', '16M', '8M');
  }, 240_000);
});
