/**
 * High availability with real processes (docs/high-availability.md): fio (nbd engine, verify=crc32c,
 * iodepth 16) writes through the edge of a `keel up` cluster while
 *   1. every router is restarted in turn with SIGTERM (rolling upgrade: each hands its volumes over), and
 *   2. the owner is killed with SIGKILL (DTL sync);
 * afterwards fio's verify pass reads everything back with no error. The longest I/O pause of each run is
 * fio's largest completion latency (an I/O in flight across the pause waits for all of it).
 * Also: a takeover with DTL replay (owner frozen with SIGSTOP, then fenced when it wakes), a takeover
 * refused while the DTL is not in sync (and forced), a cluster on a real redis-server, and a crash
 * takeover: the owner killed with SIGKILL mid-write and kept down (KEEL_NO_RESTART=1), so that its DTL
 * peer takes the volume over and replays the DTL while fio runs.
 */
import { readdirSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { limits } from '../../shared/limits.ts';
import { KeelCluster } from '../helpers/keel-cluster.ts';
import { run, runKeel } from '../helpers/processes.ts';
import { startRedisServer, type TestRedisServer } from '../helpers/redis-server.ts';
import { until } from '../helpers/until.ts';

interface FioJob {
  error: number;
  write: { io_bytes: number; clat_ns: { max: number } };
  read: { io_bytes: number };
}

const figures: Record<string, unknown> = {};

function fioArgs(uri: string, output: string, sizeMiB: number, rateIops: number): string[] {
  return [
    '--name=ha', '--ioengine=nbd', `--uri=${uri}`, '--rw=randwrite', '--bs=4k', '--iodepth=16', `--size=${sizeMiB}m`,
    `--rate_iops=${rateIops}`, '--verify=crc32c', '--do_verify=1', '--verify_fatal=1', '--verify_state_save=0',
    '--output-format=json', `--output=${output}`,
  ]; // prettier-ignore
}

async function fioResult(output: string): Promise<FioJob> {
  return JSON.parse(await readFile(output, 'utf8')).jobs[0] as FioJob;
}

describe('high availability on a keel up cluster', () => {
  let cluster: KeelCluster;
  let work: string;

  beforeAll(async () => {
    cluster = await KeelCluster.start({ volumeSize: '64M', scoSize: '4M', routers: 3 });
    work = await mkdtemp(path.join(tmpdir(), 'keel-ha-'));
  }, 90_000);

  afterAll(async () => {
    console.log('HA figures', JSON.stringify(figures, null, 2));
    await cluster?.stop();
    await cluster?.destroy();
    await rm(work, { recursive: true, force: true });
  });

  const createVolume = async (name: string, ...extra: string[]) => {
    const created = await cluster.keel('volume', 'create', name, '64M', '--sco-size', '4M', ...extra);
    expect(created.code, created.stderr).toBe(0);
  };

  it('fio verifies with no error while every router is restarted in turn with SIGTERM (rolling upgrade)', async () => {
    await createVolume('rolling');
    const output = path.join(work, 'rolling.json');
    const fio = run('fio', fioArgs(cluster.uri('rolling'), output, 48, 1500), { timeoutMs: 120_000 });
    await new Promise((r) => setTimeout(r, 1500));
    const routers = await cluster.routers();
    for (const router of routers) {
      process.kill(router.pid, 'SIGTERM');
      await cluster.waitForRestart(router.id, router.pid);
    }
    const result = await fio;
    expect(result.code, `${result.stdout}${result.stderr}\ncluster log tail:\n${cluster.stderr.slice(-6000)}`).toBe(0);
    const job = await fioResult(output);
    expect(job.error).toBe(0);
    expect(job.write.io_bytes).toBe(48 * 2 ** 20);
    expect(job.read.io_bytes).toBe(48 * 2 ** 20); // the verify pass read every block back
    figures.rollingLongestPauseMs = Math.round(job.write.clat_ns.max / 1e6);
    // The edge switched because the old owner closed the volume for a handover (CLOSED), never gave up.
    expect(cluster.stderr).toMatch(/"volume":"rolling".*"reason":"CLOSED: volume 'rolling' is closed"/);
    expect(cluster.stderr).not.toMatch(/"volume":"rolling".*"to":"no-owner"/);
  }, 150_000);

  it('fio verifies with no error when the owner is killed with SIGKILL mid-write (DTL sync)', async () => {
    await createVolume('crash');
    const output = path.join(work, 'crash.json');
    const fio = run('fio', fioArgs(cluster.uri('crash'), output, 48, 3000), { timeoutMs: 120_000 });
    await new Promise((r) => setTimeout(r, 1500)); // well into the write phase (about 4 s long)
    const owner = await cluster.ownerOf('crash');
    process.kill(owner.pid, 'SIGKILL');
    const killedAtMs = Date.now();
    const result = await fio;
    expect(result.code, `${result.stdout}${result.stderr}\ncluster log tail:\n${cluster.stderr.slice(-6000)}`).toBe(0);
    const job = await fioResult(output);
    expect(job.error).toBe(0);
    expect(job.read.io_bytes).toBe(48 * 2 ** 20);
    expect(Date.now() - killedAtMs).toBeGreaterThan(1000); // fio was still running when the owner died
    figures.crashLongestPauseMs = Math.round(job.write.clat_ns.max / 1e6);
    expect(cluster.stderr).toMatch(/"volume":"crash".*"to":"failing-over"/);
  }, 150_000);

  it('a frozen owner is taken over by its DTL peer, which replays the DTL; the old owner is fenced when it wakes', async () => {
    await createVolume('frozen');
    const write = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x3c 0 2M', '-c', 'write -P 0xc3 1M 4096', cluster.uri('frozen')]); // no flush
    expect(write.code, write.stderr).toBe(0);
    const before = JSON.parse((await cluster.keel('volume', 'info', 'frozen', '--json')).stdout);
    expect(before).toMatchObject({ dtlInSync: true });
    const owner = await cluster.ownerOf('frozen');
    process.kill(owner.pid, 'SIGSTOP');
    try {
      const startedMs = Date.now();
      const read = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x3c 0 1M', '-c', 'read -P 0xc3 1M 4096', '-c', 'read -P 0x3c 1052672 1044480', cluster.uri('frozen')]);
      figures.frozenOwnerTakeoverMs = Date.now() - startedMs;
      expect(read.code, read.stdout + read.stderr).toBe(0);
      expect(read.stdout).not.toMatch(/Pattern verification failed/);
      const after = JSON.parse((await cluster.keel('volume', 'info', 'frozen', '--json')).stdout);
      expect(after.owner).toBe(before.dtlPeer); // the DTL peer took it
      expect(after.ownerEpoch).toBe(before.ownerEpoch + 1);
      expect(cluster.stderr).toMatch(/"volume":"frozen".*"msg":"DTL replayed"/);
    } finally {
      process.kill(owner.pid, 'SIGCONT');
    }
    // The woken old owner gives the volume up at its next reconcile.
    const deadline = Date.now() + 10_000;
    while (!/"volume":"frozen".*"msg":"volume now owned elsewhere: closed here"/.test(cluster.stderr) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
    expect(cluster.stderr).toMatch(/"volume":"frozen".*"msg":"volume now owned elsewhere: closed here"/);
  }, 90_000);

  it('an owner restarted at the same epoch and later frozen: the takeover replays only its last run, and no acknowledged write rolls back', async () => {
    await createVolume('rerun');
    const first = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x01 0 2M', cluster.uri('rerun')]); // in the first run's DTL stream
    expect(first.code, first.stderr).toBe(0);
    const crashed = await cluster.ownerOf('rerun');
    process.kill(crashed.pid, 'SIGKILL'); // restarted by keel up at once: same epoch, a new DTL stream
    const owner = await cluster.waitForRestart(crashed.id, crashed.pid);
    // 24 MiB more fill tlogScosMax SCOs of 4 MiB: TLogs close and the 0x02 writes reach the backend, so the
    // second run's records of them are trimmed while the first run's 0x01 records were never trimmed.
    const second = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x02 0 2M', '-c', 'write -P 0x03 8M 24M', cluster.uri('rerun')]);
    expect(second.code, second.stderr).toBe(0);
    let info: { ownerEpoch: number; dtlInSync: boolean; dtlStream?: string } = { ownerEpoch: 0, dtlInSync: false };
    await until(async () => {
      info = JSON.parse((await cluster.keel('volume', 'info', 'rerun', '--json')).stdout);
      return info.dtlInSync && (info.dtlStream ?? '') !== '';
    }, 20_000);
    await new Promise((r) => setTimeout(r, 2_000)); // uploads done, and the peer heard of the trims
    process.kill(owner.pid, 'SIGSTOP');
    try {
      const read = await run('qemu-io', ['-f', 'raw', '-r', '-c', 'read -P 0x02 0 2M', '-c', 'read -P 0x03 8M 24M', cluster.uri('rerun')]);
      expect(read.code, read.stdout + read.stderr).toBe(0);
      expect(read.stdout).not.toMatch(/Pattern verification failed/);
      expect(JSON.parse((await cluster.keel('volume', 'info', 'rerun', '--json')).stdout).ownerEpoch).toBe(info.ownerEpoch + 1);
    } finally {
      process.kill(owner.pid, 'SIGCONT');
    }
  }, 90_000);

  it('refuses a takeover while the DTL is not in sync, and takes over when forced', async () => {
    await createVolume('unsafe', '--dtl-mode', 'none');
    const write = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 1M', '-c', 'flush', cluster.uri('unsafe')]);
    expect(write.code, write.stderr).toBe(0);
    const owner = await cluster.ownerOf('unsafe');
    const other = (await cluster.routers()).find((r) => r.id !== owner.id)!;
    const alive = await cluster.keel('volume', 'takeover', 'unsafe', '--to', other.id, '--force'); // the owner answers: a move, not a takeover
    expect(alive.code).toBe(1);
    expect(alive.stderr.trim()).toBe(`keel: volume 'unsafe': its owner ${owner.id} is alive and answers; hand it over with keel volume move unsafe --to ${other.id}`);
    process.kill(owner.pid, 'SIGSTOP');
    try {
      await new Promise((r) => setTimeout(r, 2500)); // heartbeat older than takeoverHeartbeatAgeMinMs
      const refused = await cluster.keel('volume', 'takeover', 'unsafe', '--to', other.id);
      expect(refused.code).toBe(1);
      expect(refused.stderr).toMatch(/DTL mode none.*could lose acknowledged writes/);
      expect(JSON.parse((await cluster.keel('volume', 'info', 'unsafe', '--json')).stdout).owner).toBe(owner.id);
      const forced = await cluster.keel('volume', 'takeover', 'unsafe', '--to', other.id, '--force');
      expect(forced.code, forced.stderr).toBe(0);
      expect(JSON.parse((await cluster.keel('volume', 'info', 'unsafe', '--json')).stdout).owner).toBe(other.id);
    } finally {
      process.kill(owner.pid, 'SIGCONT');
    }
  }, 60_000);

  it('keel volume move hands a volume over with its data; keel router drain empties a router', async () => {
    await createVolume('moving');
    const write = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x42 0 3M', cluster.uri('moving')]);
    expect(write.code, write.stderr).toBe(0);
    const snapshot = await cluster.keel('snapshot', 'create', 'moving', 'before-move', '--label', 'why=upgrade');
    expect(snapshot.code, snapshot.stderr).toBe(0);
    expect((await cluster.keel('volume', 'resize', 'moving', '96M')).code).toBe(0); // the snapshot keeps 64M
    const owner = await cluster.ownerOf('moving');
    const target = (await cluster.routers()).find((r) => r.id !== owner.id)!;
    const moved = await cluster.keel('volume', 'move', 'moving', '--to', target.id, '--json');
    expect(moved.code, moved.stderr).toBe(0);
    figures.movePauseMs = JSON.parse(moved.stdout).pauseMs;
    expect((await cluster.ownerOf('moving')).id).toBe(target.id);
    const expectSnapshotKept = async () => {
      // The snapshot keeps its name, label and size on a router that never had the volume: the catalog's backend copy.
      const listed = JSON.parse((await cluster.keel('snapshot', 'list', 'moving', '--json')).stdout);
      expect(listed.snapshots).toMatchObject([{ name: 'before-move', labels: { why: 'upgrade' }, sizeBytes: 64 * 2 ** 20 }]);
      expect((await run('nbdinfo', ['--size', cluster.uri('moving@before-move')])).stdout.trim()).toBe(String(64 * 2 ** 20));
    };
    await expectSnapshotKept();
    const drained = await cluster.keel('router', 'drain', target.id, '--json');
    expect(drained.code, drained.stderr).toBe(0);
    expect(JSON.parse(drained.stdout).moved).toContain('moving');
    const rows = await cluster.routers();
    expect(rows.find((r) => r.id === target.id)).toMatchObject({ state: 'draining', volumes: '-' });
    const toDraining = await cluster.keel('volume', 'takeover', 'moving', '--to', target.id, '--force');
    expect(toDraining.stderr.trim()).toBe(`keel: router ${target.id} is draining: take the volume over on a router that accepts volumes`);
    const resumed = await cluster.keel('router', 'resume', target.id); // the upgrade was called off
    expect(resumed.stdout.trim()).toBe(`router ${target.id} is up: it accepts volumes and DTL streams again`);
    expect((await cluster.routers()).find((r) => r.id === target.id)).toMatchObject({ state: 'up' });
    const read = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x42 0 3M', cluster.uri('moving')]);
    expect(read.code, read.stdout + read.stderr).toBe(0);
    expect(read.stdout).not.toMatch(/Pattern verification failed/);
    await expectSnapshotKept();
  }, 60_000);
});

describe('keel up --redis: coordination on a real redis-server', () => {
  let redis: TestRedisServer;
  let cluster: KeelCluster;

  beforeAll(async () => {
    redis = await startRedisServer();
    cluster = await KeelCluster.start({ volumeSize: '64M', scoSize: '4M', routers: 2, upArgs: ['--redis', redis.url] });
  }, 90_000);

  afterAll(async () => {
    await cluster?.stop();
    await cluster?.destroy();
    await redis?.close();
  });

  it('serves, hands over and survives a SIGKILL with every record in Redis', async () => {
    const keel = (...args: string[]) => runKeel([...args, '--data', cluster.dataDir, '--redis', redis.url]);
    const list = await keel('router', 'list', '--json');
    expect(list.code, list.stderr).toBe(0);
    expect(JSON.parse(list.stdout).map((r: { id: string }) => r.id)).toEqual(['r1', 'r2']);
    const write = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x6b 0 2M', cluster.uri()]);
    expect(write.code, write.stderr).toBe(0);
    const info = JSON.parse((await keel('volume', 'info', 'demo', '--json')).stdout);
    expect(info).toMatchObject({ dtlInSync: true });
    // Every command that reads the cluster takes --redis: snapshots and the backend too.
    expect((await keel('snapshot', 'create', 'demo', 'r1')).code).toBe(0);
    expect((await keel('snapshot', 'list', 'demo')).stdout).toMatch(/^r1 /m);
    const status = await keel('backend', 'status', '--json');
    expect(status.code, status.stderr).toBe(0);
    expect(JSON.parse(status.stdout).objects).toBeGreaterThanOrEqual(0);
    const other = info.owner === 'r1' ? 'r2' : 'r1';
    expect((await keel('volume', 'move', 'demo', '--to', other)).code).toBe(0);
    const owner = JSON.parse((await keel('router', 'list', '--json')).stdout).find((r: { id: string }) => r.id === other);
    process.kill(owner.pid, 'SIGKILL');
    const read = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x6b 0 2M', cluster.uri()]);
    expect(read.code, read.stdout + read.stderr).toBe(0);
    expect(read.stdout).not.toMatch(/Pattern verification failed/);
    // Nothing was written to the embedded document: coordination lives in Redis.
    await expect(readFile(path.join(cluster.dataDir, 'coordination.json'), 'utf8')).rejects.toThrow();
  }, 90_000);

  it('keeps every volume when Redis comes back empty (restarted without persistence), and its routers register again', async () => {
    const keel = (...args: string[]) => runKeel([...args, '--data', cluster.dataDir, '--redis', redis.url]);
    const write = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x6c 0 4M', '-c', 'flush', cluster.uri()]);
    expect(write.code, write.stderr).toBe(0);
    const fragments = async () => (await readdir(path.join(cluster.dataDir, 'asds'), { recursive: true })).length;
    const before = await fragments();
    const admin = new Redis(redis.url);
    try {
      await admin.flushall(); // what a redis-server restarted with --save '' and no AOF comes back as
    } finally {
      admin.disconnect();
    }
    await new Promise((resolve) => setTimeout(resolve, 8000)); // several reconcile rounds: they dropped every volume before
    expect(await fragments()).toBeGreaterThanOrEqual(before);
    expect(JSON.parse((await keel('router', 'list', '--json')).stdout).map((r: { id: string }) => r.id)).toEqual(['r1', 'r2']);
    const volumes = readdirSync(path.join(cluster.dataDir, 'routers'), { recursive: true }).filter((p) => String(p).endsWith(path.join('volumes', 'demo')));
    expect(volumes.length).toBeGreaterThan(0); // the owner's write buffer is still there
  }, 60_000);
});

describe('crash takeover: the owner is killed with SIGKILL and stays down (keel up with KEEL_NO_RESTART=1)', () => {
  let cluster: KeelCluster;
  let work: string;
  const crashFigures: Record<string, unknown> = {};

  beforeAll(async () => {
    cluster = await KeelCluster.start({ volumeSize: '64M', scoSize: '4M', routers: 3, env: { KEEL_NO_RESTART: '1' } });
    work = await mkdtemp(path.join(tmpdir(), 'keel-ha-crash-'));
  }, 90_000);

  afterAll(async () => {
    console.log('HA figures', JSON.stringify(crashFigures, null, 2));
    await cluster?.stop();
    await cluster?.destroy();
    await rm(work, { recursive: true, force: true });
  });

  it('fio verifies with no error while the DTL peer takes the volume over and replays the DTL', async () => {
    const created = await cluster.keel('volume', 'create', 'orphan', '64M', '--sco-size', '4M', '--dtl-mode', 'sync');
    expect(created.code, created.stderr).toBe(0);
    const output = path.join(work, 'orphan.json');
    const fio = run('fio', fioArgs(cluster.uri('orphan'), output, 40, 3000), { timeoutMs: 80_000 }); // ~3.5 s of writes
    await new Promise((r) => setTimeout(r, 1000));
    const before = JSON.parse((await cluster.keel('volume', 'info', 'orphan', '--json')).stdout);
    expect(before).toMatchObject({ dtlMode: 'sync', dtlInSync: true }); // else the takeover would be refused
    const owner = await cluster.ownerOf('orphan');
    process.kill(owner.pid, 'SIGKILL');
    const killedAtMs = Date.now();
    const result = await fio;
    const logs = `${result.stdout}${result.stderr}\ncluster log tail:\n${cluster.stderr.slice(-8000)}`;
    expect(result.code, logs).toBe(0);
    expect(Date.now() - killedAtMs).toBeGreaterThan(1000); // fio was still running when the owner died
    const job = await fioResult(output);
    expect(job.error).toBe(0);
    expect(job.write.io_bytes).toBe(40 * 2 ** 20);
    expect(job.read.io_bytes).toBe(40 * 2 ** 20); // the verify pass read every block back

    // The killed router stayed down: same pid, no longer heartbeating, and the supervisor did not restart it.
    // (Listing calls it unreachable once its heartbeat is routerDeadAfterMs old; fio may finish sooner.)
    expect(() => process.kill(owner.pid, 0)).toThrow();
    await new Promise((r) => setTimeout(r, Math.max(0, killedAtMs + limits.routerDeadAfterMs + 500 - Date.now())));
    expect((await cluster.routers()).find((r) => r.id === owner.id)).toMatchObject({ pid: owner.pid, state: 'unreachable' });
    expect(cluster.stderr).toContain(`"msg":"router ${owner.id}: running -> failed"`);
    // Another router owns the volume now, under a newer epoch: the DTL peer, which held the DTL.
    const after = JSON.parse((await cluster.keel('volume', 'info', 'orphan', '--json')).stdout);
    expect(after.owner).not.toBe(owner.id);
    expect(after.owner).toBe(before.dtlPeer);
    expect(after.ownerEpoch).toBe(before.ownerEpoch + 1);
    // ... and opened it by a takeover that replayed the old owner's DTL (records acknowledged, not on the backend).
    const replays = cluster.stderr
      .split('\n')
      .filter((line) => line.includes('"msg":"DTL replayed"'))
      .map((line) => JSON.parse(line) as { volume: string; dtlPeer: string; oldEpoch: number; streams: number; records: number; replayMs: number })
      .filter((entry) => entry.volume === 'orphan');
    expect(replays, logs).toHaveLength(1);
    expect(replays[0]).toMatchObject({ dtlPeer: before.dtlPeer, oldEpoch: before.ownerEpoch });
    expect(replays[0]!.records).toBeGreaterThan(0);
    Object.assign(crashFigures, {
      crashTakeoverLongestPauseMs: Math.round(job.write.clat_ns.max / 1e6),
      ownerEpochBefore: before.ownerEpoch,
      ownerEpochAfter: after.ownerEpoch,
      oldOwner: owner.id,
      newOwner: after.owner,
      dtlRecordsReplayed: replays[0]!.records,
      dtlReplayMs: replays[0]!.replayMs,
    });
  }, 90_000);

  it('takes over a volume handed to its DTL peer that died before opening it (the record named the owner as its own peer)', async () => {
    const alive = (await cluster.routers()).filter((r) => r.state === 'up');
    expect(alive.length).toBeGreaterThanOrEqual(2);
    const [first, second] = [alive[0]!, alive[1]!];
    const created = await cluster.keel('volume', 'create', 'handed', '64M', '--sco-size', '4M', '--owner', first.id);
    expect(created.code, created.stderr).toBe(0);
    const write = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5e 0 4M', '-c', 'flush', cluster.uri('handed')]);
    expect(write.code, write.stderr).toBe(0);
    const info = async () => JSON.parse((await cluster.keel('volume', 'info', 'handed', '--json')).stdout) as { owner: string; dtlPeer?: string; dtlInSync?: boolean };
    await until(async () => (await info()).dtlInSync === true, 20_000);
    const peer = (await info()).dtlPeer!;
    expect(peer).toBe(second.id); // the only other live router
    expect((await cluster.keel('volume', 'move', 'handed', '--to', peer)).code).toBe(0);
    expect(await info()).toMatchObject({ owner: peer, dtlPeer: '', dtlInSync: true }); // nothing outstanding, no stale peer
    process.kill((await cluster.ownerOf('handed')).pid, 'SIGKILL'); // before any client opened it there
    const read = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x5e 0 4M', cluster.uri('handed')], { timeoutMs: 60_000 });
    expect(read.code, read.stdout + read.stderr).toBe(0);
    expect(read.stdout).not.toMatch(/Pattern verification failed/);
    expect((await info()).owner).toBe(first.id);
  }, 90_000);

  it('acknowledges sync writes through the backend when no router is left to be the DTL peer', async () => {
    const up = async () => (await cluster.routers()).filter((r) => r.state === 'up');
    await until(async () => (await up()).length === 1, 15_000); // the two tests above each killed one
    const alive = await up();
    const created = await cluster.keel('volume', 'create', 'alone', '64M', '--sco-size', '4M', '--dtl-mode', 'sync', '--owner', alive[0]!.id);
    expect(created.code, created.stderr).toBe(0);
    const startedAt = Date.now();
    const write = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x6a 0 1M', cluster.uri('alone')], { timeoutMs: 60_000 });
    const writeMs = Date.now() - startedAt;
    expect(write.stdout + write.stderr).not.toMatch(/failed/i); // it waited for an edge timeout (10 s), failed over, and gave EIO at 30 s
    expect(writeMs).toBeLessThan(limits.wireRequestTimeoutMs);
    crashFigures.peerlessSyncWriteMs = writeMs;
    const read = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x6a 0 1M', cluster.uri('alone')]);
    expect(read.stdout).not.toMatch(/Pattern verification failed/);
  }, 90_000);
});
