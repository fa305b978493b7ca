/**
 * A router's disk fills up, with real parts: a `keel up` cluster whose data directory is a real tmpfs
 * of a fixed size, and qemu-io over NBD. Writes past the space fail with ENOSPC (not EIO: QEMU's default
 * werror=enospc pauses the guest on it), reads go on, writes succeed again once the filesystem has room,
 * and what was acknowledged survives a SIGKILL of the owner afterwards (docs/volume-driver.md, "Disk full").
 *
 * Mounting a tmpfs needs root (CI runs as root); elsewhere the suite is skipped and says why.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeelCluster } from '../helpers/keel-cluster.ts';
import { run } from '../helpers/processes.ts';

const hasQemuIo = spawnSync('qemu-io', ['--version']).status === 0;

/** A tmpfs of `size` at a new directory, or undefined when this user may not mount one. */
function mountTmpfs(size: string): string | undefined {
  const dir = mkdtempSync(path.join(tmpdir(), 'keel-full-'));
  if (spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir]).status === 0) return dir;
  rmSync(dir, { recursive: true, force: true });
  console.warn('disk-full suite skipped: cannot mount a tmpfs here (needs root)');
  return undefined;
}

const mountDir = hasQemuIo ? mountTmpfs('192M') : undefined;

describe.skipIf(mountDir === undefined)('a router whose disk fills up (real tmpfs, qemu-io)', () => {
  let cluster: KeelCluster;

  const qemuIo = (...commands: string[]) => run('qemu-io', ['-f', 'raw', ...commands.flatMap((c) => ['-c', c]), cluster.uri()], { timeoutMs: 120_000 });
  const expectRead = async (pattern: string, offset: string, length: string) => {
    const read = await qemuIo(`read -P ${pattern} ${offset} ${length}`);
    expect(read.stdout + read.stderr, `read -P ${pattern} ${offset} ${length}`).not.toMatch(/failed|error/i);
    expect(read.code).toBe(0);
  };

  beforeAll(async () => {
    cluster = await KeelCluster.start({ dataDir: path.join(mountDir!, 'data'), volumeSize: '1G', scoSize: '4M' });
  }, 90_000);

  afterAll(async () => {
    await cluster?.stop();
    await cluster?.destroy();
    spawnSync('umount', [mountDir!]);
    rmSync(mountDir!, { recursive: true, force: true });
  });

  it('fails writes with ENOSPC while full, keeps serving reads, takes writes again once there is room, and loses nothing acknowledged', async () => {
    const first = await qemuIo('write -P 0x5a 0 16M');
    expect(first.stdout + first.stderr).not.toMatch(/failed/i);

    // Far more than the tmpfs holds (SCOs, DTL segments and 4+2 fragments all live on it).
    const fill = await qemuIo('write -P 0x6b 16M 512M');
    expect(fill.stdout + fill.stderr).toMatch(/write failed: No space left on device/);
    expect(spawnSync('df', ['--output=avail', '-B1', mountDir!]).stdout.toString()).toMatch(/\n\s*\d{1,7}\s*$/); // under 10 MB left

    await expectRead('0x5a', '0', '16M'); // reads go on while the disk is full
    const stillFull = await qemuIo('write -P 0x6b 700M 1M');
    expect(stillFull.stdout + stillFull.stderr).toMatch(/No space left on device/);

    expect(spawnSync('mount', ['-o', 'remount,size=2G', mountDir!]).status).toBe(0); // room again, no restart
    const after = await qemuIo('write -P 0x7c 600M 16M', 'flush');
    expect(after.stdout + after.stderr).not.toMatch(/failed/i);
    await expectRead('0x7c', '600M', '16M');
    await expectRead('0x5a', '0', '16M');

    const owner = await cluster.ownerOf('demo');
    process.kill(owner.pid, 'SIGKILL');
    await cluster.waitForRestart(owner.id, owner.pid, 60_000);
    await expectRead('0x5a', '0', '16M');
    await expectRead('0x7c', '600M', '16M');
  }, 240_000);
});
