/**
 * End to end: `keel up` (real router and edge processes) driven by Debian's NBD clients.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeelCluster } from '../helpers/keel-cluster.ts';
import { freePort, run, runKeel } from '../helpers/processes.ts';
import { until } from '../helpers/until.ts';

describe('a keel up cluster served to real NBD clients', () => {
  let cluster: KeelCluster;
  let work: string;

  beforeAll(async () => {
    cluster = await KeelCluster.start({ volumeSize: '256M', scoSize: '4M' });
    work = await mkdtemp(path.join(tmpdir(), 'keel-work-'));
  }, 90_000);

  afterAll(async () => {
    await cluster?.stop();
    await cluster?.destroy();
    await rm(work, { recursive: true, force: true });
  });

  const createVolume = async (name: string, size: string) => {
    const created = await cluster.keel('volume', 'create', name, size, '--sco-size', '4M');
    expect(created.code, created.stderr).toBe(0);
  };

  it('nbdinfo shows the size, the block sizes and the flags', async () => {
    const info = await run('nbdinfo', ['--json', cluster.uri()]);
    expect(info.code, info.stderr).toBe(0);
    const exp = JSON.parse(info.stdout).exports[0];
    expect(exp['export-size']).toBe(256 * 2 ** 20);
    expect([exp.block_size_minimum, exp.block_size_preferred, exp.block_size_maximum]).toEqual([512, 4096, 32 * 2 ** 20]);
    expect(exp.can_flush && exp.can_fua && exp.can_trim && exp.can_zero && exp.can_multi_conn).toBe(true);
    const list = await run('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${cluster.port}`]);
    expect(JSON.parse(list.stdout).exports.map((e: { 'export-name': string }) => e['export-name'])).toContain('demo');
  });

  it('qemu-img convert copies a multi-MiB image in and qemu-img compare finds it identical', async () => {
    await createVolume('img', '24M');
    const image = path.join(work, 'image.raw');
    const content = Buffer.alloc(24 * 2 ** 20);
    for (let off = 0; off < content.length; off += 3 * 2 ** 20) randomBytes(2 ** 20 + 777).copy(content, off); // data and holes
    await writeFile(image, content);
    const convert = await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', image, cluster.uri('img')]);
    expect(convert.code, convert.stderr).toBe(0);
    const compare = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', image, cluster.uri('img')]);
    expect(compare.code, compare.stdout + compare.stderr).toBe(0);
    expect(compare.stdout).toContain('Images are identical');
    const copyBack = path.join(work, 'copy.raw');
    const nbdcopy = await run('nbdcopy', [cluster.uri('img'), copyBack]);
    expect(nbdcopy.code, nbdcopy.stderr).toBe(0);
    expect((await readFile(copyBack)).equals(content)).toBe(true);
  });

  it('keel volume list and info show how much of each volume is written, from its owner', async () => {
    await createVolume('usage', '64M');
    const usedBytes = async () => {
      const listed = JSON.parse((await cluster.keel('volume', 'list', '--json')).stdout) as Array<{ name: string; usedBytes?: number }>;
      return listed.find((v) => v.name === 'usage')?.usedBytes;
    };
    expect(await usedBytes()).toBeUndefined(); // no client yet: its owner has not opened it
    expect((await cluster.keel('volume', 'info', 'usage')).stdout).toMatch(/used: +- \(not open on r\d: no client since it took the volume\)/);
    const written = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 8M', '-c', 'write -P 0x12 4M 1M', '-c', 'discard 6M 1M', cluster.uri('usage')]);
    expect(written.code, written.stderr).toBe(0);
    expect(await usedBytes()).toBe(7 * 2 ** 20); // 8 MiB written, one overwritten in place, 1 MiB trimmed
    expect((await cluster.keel('volume', 'list')).stdout).toMatch(/^usage +64 MiB +7 MiB \(11%\) /m);
    expect((await cluster.keel('volume', 'info', 'usage')).stdout).toMatch(/used: +7 MiB \(11%\), in \d+ SCOs? and \d+ TLogs?\n/);
  });

  it('qemu-io discards more than the 32 MiB maximum block size in one request (qemu does not split discards)', async () => {
    await createVolume('bigtrim', '128M');
    const uri = cluster.uri('bigtrim');
    const written = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x21 0 100M', uri]);
    expect(written.code, written.stderr).toBe(0);
    const discarded = await run('qemu-io', ['-f', 'raw', '-c', 'discard 4096 96M', uri]);
    expect(discarded.stdout + discarded.stderr).not.toMatch(/failed/i);
    const read = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x21 0 4096', '-c', 'read -P 0 4096 96M', '-c', 'read -P 0x21 97M 3M', uri]);
    expect(read.stdout + read.stderr).not.toMatch(/failed|error/i);
    expect(read.code).toBe(0);
  });

  it('a shrink discards the data past the new end at once: a grow right after it reads zeros there', async () => {
    await createVolume('shrink', '8M');
    const written = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 8M', cluster.uri('shrink')]);
    expect(written.code, written.stderr).toBe(0);
    const shrunk = await cluster.keel('volume', 'resize', 'shrink', '4M', '--allow-shrink');
    expect(shrunk.code, shrunk.stderr).toBe(0);
    const grown = await cluster.keel('volume', 'resize', 'shrink', '8M'); // within the owner's 1 s reconcile
    expect(grown.code, grown.stderr).toBe(0);
    await until(async () => (await run('nbdinfo', ['--size', cluster.uri('shrink')])).stdout.trim() === String(8 * 2 ** 20), 10_000);
    const read = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x5a 0 4M', '-c', 'read -P 0 4M 4M', cluster.uri('shrink')]);
    expect(read.stdout + read.stderr).not.toMatch(/failed|error/i);
    expect(read.code).toBe(0);
  });

  it('qemu-io pattern writes and reads at unaligned offsets', async () => {
    await createVolume('qio', '64M');
    const writes = [
      ['0xab', 1000, 5000],
      ['0x11', 4095, 2],
      ['0x22', 12345, 70000],
      ['0x33', 8 * 2 ** 20 - 512, 1024],
    ] as const;
    const args = ['-f', 'raw'];
    for (const [p, off, len] of writes) args.push('-c', `write -P ${p} ${off} ${len}`);
    args.push('-c', 'flush');
    for (const [p, off, len] of writes.slice(1)) args.push('-c', `read -P ${p} ${off} ${len}`);
    args.push('-c', 'read -P 0xab 1000 3095'); // the part of the first write not overwritten by the second
    args.push('-c', 'read -P 0 0 1000', '-c', 'read -P 0 9000000 4096'); // never written: zeros
    const io = await run('qemu-io', [...args, cluster.uri('qio')]);
    expect(io.code, io.stdout + io.stderr).toBe(0);
    expect(io.stdout).not.toMatch(/Pattern verification failed|error/i);
    expect(io.stdout.match(/^read /gm)).toHaveLength(6);
  });

  it("the owner's RAM cache serves repeated 4k reads, and a rewritten cluster reads back new", async () => {
    await createVolume('ram', '8M');
    const ramCache = async () => {
      const owner = await cluster.ownerOf('ram');
      const status = (await (await fetch(`http://${owner.mgmtAddress}/status`)).json()) as { ramCache: { hits: number; fills: number; bytes: number } };
      return status.ramCache;
    };
    const write = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 64k', cluster.uri('ram')]);
    expect(write.code, write.stdout + write.stderr).toBe(0);
    const before = await ramCache();
    const reads = ['-f', 'raw'];
    for (let pass = 0; pass < 2; pass++) for (let at = 0; at < 64 * 1024; at += 4096) reads.push('-c', `read -P 0x11 ${at} 4k`);
    const read = await run('qemu-io', [...reads, cluster.uri('ram')]);
    expect(read.code, read.stdout + read.stderr).toBe(0);
    expect(read.stdout).not.toMatch(/Pattern verification failed/);
    const after = await ramCache();
    expect(after.fills - before.fills).toBe(16); // the first pass
    expect(after.hits - before.hits).toBeGreaterThanOrEqual(16); // the second
    expect(after.bytes).toBeGreaterThanOrEqual(16 * 4096);
    const rewrite = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x22 4k 4k', '-c', 'read -P 0x22 4k 4k', '-c', 'read -P 0x11 0 4k', '-c', 'read -P 0x11 8k 4k', cluster.uri('ram')]);
    expect(rewrite.code, rewrite.stdout + rewrite.stderr).toBe(0);
    expect(rewrite.stdout).not.toMatch(/Pattern verification failed/);
  });

  it('fio with verify=crc32c over the nbd engine finds no errors', async () => {
    await createVolume('fio', '128M');
    const output = path.join(work, 'fio.json');
    const fio = await run('fio', [
      '--name=verify', '--ioengine=nbd', `--uri=${cluster.uri('fio')}`, '--rw=randwrite', '--bsrange=4k-64k',
      '--iodepth=32', '--size=64m', '--verify=crc32c', '--do_verify=1', '--verify_fatal=1',
      '--verify_state_save=0', '--output-format=json', `--output=${output}`,
    ], { timeoutMs: 240_000 });
    expect(fio.code, fio.stdout + fio.stderr).toBe(0);
    const job = JSON.parse(await readFile(output, 'utf8')).jobs[0];
    expect(job.error).toBe(0);
    expect(job.write.io_bytes).toBeGreaterThanOrEqual(64 * 2 ** 20);
    expect(job.read.io_bytes).toBeGreaterThan(0); // the verify pass read it all back
  }, 300_000);

  it('keeps every flushed write when the owning router is killed with SIGKILL and restarted', async () => {
    await createVolume('crash', '64M');
    const write = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 6M', '-c', 'write -P 0xa5 4095 10000', '-c', 'flush', cluster.uri('crash')]);
    expect(write.code, write.stderr).toBe(0);
    const owner = await cluster.ownerOf('crash');
    process.kill(owner.pid, 'SIGKILL');
    await cluster.waitForRestart(owner.id, owner.pid);
    const read = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x5a 0 4095', '-c', 'read -P 0xa5 4095 10000', '-c', 'read -P 0x5a 14095 6277105', cluster.uri('crash')]);
    expect(read.code, read.stdout + read.stderr).toBe(0);
    expect(read.stdout).not.toMatch(/Pattern verification failed/);
  }, 120_000);

  it('fio keeps running with no verify errors while the owner is killed with SIGKILL mid-write', async () => {
    await createVolume('midkill', '64M');
    const owner = await cluster.ownerOf('midkill');
    const output = path.join(work, 'fio-midkill.json');
    const fio = run('fio', [
      '--name=midkill', '--ioengine=nbd', `--uri=${cluster.uri('midkill')}`, '--rw=randwrite', '--bs=4k', '--iodepth=16',
      '--size=24m', '--rate_iops=3000', '--verify=crc32c', '--do_verify=1', '--verify_fatal=1', '--verify_state_save=0',
      '--output-format=json', `--output=${output}`,
    ], { timeoutMs: 120_000 });
    await new Promise((r) => setTimeout(r, 1000)); // well into the write phase (about 2 s long)
    process.kill(owner.pid, 'SIGKILL');
    const result = await fio;
    expect(result.code, result.stdout + result.stderr).toBe(0);
    const job = JSON.parse(await readFile(output, 'utf8')).jobs[0];
    expect(job.error).toBe(0);
    expect(job.write.io_bytes).toBe(24 * 2 ** 20);
    expect(job.read.io_bytes).toBe(24 * 2 ** 20); // every block read back and verified
    // The edge saw the connection die under load and failed over (the kill landed mid-write).
    expect(cluster.stderr).toMatch(/"volume":"midkill".*"to":"failing-over"|"to":"failing-over".*"volume":"midkill"/);
    const restarted = await cluster.waitForRestart(owner.id, owner.pid);
    expect(restarted.pid).not.toBe(owner.pid);
  }, 150_000);

  it('a client sending garbage is disconnected while another client keeps working', async () => {
    const net = await import('node:net');
    const garbage = net.connect(cluster.port, '127.0.0.1');
    await new Promise((resolve) => garbage.once('connect', resolve));
    garbage.resume(); // read the greeting, so that the server's close reaches us
    const closed = new Promise((resolve) => garbage.once('close', resolve));
    garbage.write(Buffer.alloc(64, 0xff));
    const io = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x77 0 4096', '-c', 'read -P 0x77 0 4096', cluster.uri()]);
    expect(io.code, io.stderr).toBe(0);
    await closed;
  });

  it('refuses a second keel up, and a second router with a taken id, on the same data directory, and the first cluster keeps serving', async () => {
    const second = await runKeel(['up', '--data', cluster.dataDir, '--port', String(await freePort()), '--volume-size', '64M'], 30_000);
    expect(second.code, second.stdout + second.stderr).toBe(1);
    expect(second.stderr).toMatch(new RegExp(`keel up on ${cluster.dataDir} already runs \\(pid \\d+\\)`));
    expect(second.stdout).not.toContain('Keel is up');
    const router = await runKeel(['router', '--id', 'r1', '--data', cluster.dataDir], 30_000);
    expect(router.code, router.stdout + router.stderr).toBe(1);
    expect(router.stderr).toMatch(/router r1 on .* already runs \(pid \d+\)/);
    const routers = JSON.parse((await cluster.keel('router', 'list', '--json')).stdout) as Array<{ id: string; state: string }>;
    expect(routers.map((r) => [r.id, r.state])).toEqual([['r1', 'up'], ['r2', 'up'], ['r3', 'up']]);
    const read = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0xab 1000 3095', cluster.uri('qio')]);
    expect(read.code, read.stdout + read.stderr).toBe(0);
    expect(read.stdout).not.toMatch(/Pattern verification failed/);
  }, 90_000);

  it('after a clean stop, keel up on the same data directory serves the same data', async () => {
    expect(await cluster.stop()).toBe(0);
    await cluster.startUp();
    const read = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0xab 1000 3095', '-c', 'read -P 0x22 12345 70000', cluster.uri('qio')]);
    expect(read.code, read.stdout + read.stderr).toBe(0);
    expect(read.stdout).not.toMatch(/Pattern verification failed/);
    const compare = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', path.join(work, 'image.raw'), cluster.uri('img')]);
    expect(compare.code, compare.stdout + compare.stderr).toBe(0);
  }, 120_000);

  it('serves every other volume when one cannot be recovered at start, and tells the client why at once', async () => {
    const owner = (await cluster.ownerOf('qio')).id;
    expect(await cluster.stop()).toBe(0);
    await writeFile(path.join(cluster.dataDir, 'routers', owner, 'volumes', 'qio', 'volume.json'), '{ torn'); // a bad disk, say
    await cluster.startUp(); // its router crash-looped on this before, and with it every volume it owns
    const startedAt = Date.now();
    const refused = await run('qemu-io', ['-f', 'raw', '-c', 'read 0 4k', cluster.uri('qio')]);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/server reported: export 'qio' is not available: corrupt .*volume\.json: not JSON/);
    expect(Date.now() - startedAt).toBeLessThan(5000); // not after the edge's 30 s search for an owner
    const compare = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', path.join(work, 'image.raw'), cluster.uri('img')]);
    expect(compare.code, compare.stdout + compare.stderr).toBe(0);
  }, 120_000);
});

describe('keel up on a port that another program answers', () => {
  it('fails at once with a clear error, before starting any router or edge', async () => {
    const net = await import('node:net');
    const dataDir = await mkdtemp(path.join(tmpdir(), 'keel-port-'));
    const port = await freePort();
    const squatter = net.createServer((socket) => socket.on('error', () => undefined));
    await new Promise<void>((resolve) => squatter.listen(port, '127.0.0.1', resolve));
    try {
      const up = await runKeel(['up', '--data', dataDir, '--port', String(port), '--routers', '1', '--volume-size', '64M'], 30_000);
      expect(up.code, up.stdout + up.stderr).toBe(1);
      expect(up.stderr).toContain(`127.0.0.1:${port} is in use`);
      expect(up.stdout).not.toContain('Keel is up');
      const left = await run('pgrep', ['-f', `--data ${dataDir}`]);
      expect(left.stdout.trim(), 'router or edge processes left running').toBe('');
    } finally {
      squatter.close();
      await rm(dataDir, { recursive: true, force: true });
    }
  }, 120_000);
});
