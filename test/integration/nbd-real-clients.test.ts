/**
 * Real Debian NBD clients (libnbd-bin, qemu-utils, fio) against NbdServer + the in-memory target.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NbdServer } from '../../edge/nbd-server.ts';
import { silentLogger } from '../../shared/logger.ts';
import { MemoryExportResolver, MemoryVolume } from '../helpers/memory-target.ts';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const tools = ['nbdinfo', 'nbdcopy', 'qemu-io', 'qemu-img', 'fio'];

async function haveTools(): Promise<boolean> {
  try {
    await run('which', tools);
    return true;
  } catch {
    return false;
  }
}

const toolsInstalled = await haveTools();
if (!toolsInstalled) console.warn(`skipping real NBD client tests: need ${tools.join(', ')} on PATH`);

describe.skipIf(!toolsInstalled)('NbdServer with real NBD clients', () => {
  const resolver = new MemoryExportResolver();
  const volume = resolver.add('vol', new MemoryVolume(64 * MiB), 'keel test volume');
  const image = resolver.add('img', new MemoryVolume(4 * MiB));
  const copy = resolver.add('copy', new MemoryVolume(4 * MiB));
  resolver.add('ro', new MemoryVolume(1 * MiB, true));
  const server = new NbdServer({ host: '127.0.0.1', port: 0, resolver, defaultExport: 'vol', logger: silentLogger() });
  let uriBase = '';
  let workDir = '';

  beforeAll(async () => {
    const { port } = await server.start();
    uriBase = `nbd://127.0.0.1:${port}`;
    workDir = mkdtempSync(path.join(tmpdir(), 'keel-nbd-'));
  });

  afterAll(async () => {
    await server.stop();
    if (workDir) rmSync(workDir, { recursive: true, force: true });
  });

  const tool = (file: string, args: string[], timeoutMs = 60_000) => run(file, args, { timeout: timeoutMs, maxBuffer: 16 * MiB });

  it('nbdinfo reports size, flags and block sizes', async () => {
    const { stdout } = await tool('nbdinfo', ['--json', `${uriBase}/vol`]);
    const info = JSON.parse(stdout);
    const entry = info.exports[0];
    expect(info.protocol).toBe('newstyle-fixed');
    expect(entry['export-size']).toBe(64 * MiB);
    expect(entry).toMatchObject({
      is_read_only: false,
      can_flush: true,
      can_fua: true,
      can_trim: true,
      can_zero: true,
      can_multi_conn: true,
      block_size_minimum: 512,
      block_size_preferred: 4096,
      block_size_maximum: 32 * MiB,
    });
    const readOnly = JSON.parse((await tool('nbdinfo', ['--json', `${uriBase}/ro`])).stdout).exports[0];
    expect(readOnly.is_read_only).toBe(true);
    expect(readOnly['export-size']).toBe(MiB);
  });

  it('nbdinfo --list shows every export', async () => {
    const { stdout } = await tool('nbdinfo', ['--list', '--json', uriBase]);
    const listed = JSON.parse(stdout).exports.map((e: { 'export-name': string }) => e['export-name']);
    expect(listed.sort()).toEqual(['copy', 'img', 'ro', 'vol']);
  });

  it('qemu-io writes and reads patterns at unaligned offsets', async () => {
    const { stdout } = await tool('qemu-io', [
      '-f', 'raw',
      '-c', 'write -P 0xab 1000 5000',
      '-c', 'read -P 0xab 1000 5000',
      '-c', 'read -P 0 0 1000',
      '-c', 'write -P 0xcd 1048573 7',
      '-c', 'read -P 0xcd 1048573 7',
      `${uriBase}/vol`,
    ]);
    expect(stdout).not.toMatch(/Pattern verification failed|error/i);
    expect(volume.peek(1000, 5000).equals(Buffer.alloc(5000, 0xab))).toBe(true);
    expect(volume.peek(0, 1000).equals(Buffer.alloc(1000))).toBe(true);
    expect(volume.peek(6000, 100).equals(Buffer.alloc(100))).toBe(true);
    expect(volume.peek(1048573, 7).equals(Buffer.alloc(7, 0xcd))).toBe(true);
  });

  it('qemu-io fails on a wrong pattern (so the check above can fail)', async () => {
    const failure = await tool('qemu-io', ['-f', 'raw', '-c', 'read -P 0x11 1000 5000', `${uriBase}/vol`]).then(
      () => undefined,
      (err: { stdout?: string }) => err,
    );
    expect(failure?.stdout).toMatch(/Pattern verification failed/); // qemu-io exits non-zero, so execFile rejects
  });

  it('qemu-img convert copies a file in and qemu-img compare finds it identical', async () => {
    const source = path.join(workDir, 'random.img');
    const data = randomBytes(4 * MiB);
    writeFileSync(source, data);
    await tool('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', source, `${uriBase}/img`]);
    expect(image.peek(0, data.length).equals(data)).toBe(true);
    const { stdout } = await tool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', source, `${uriBase}/img`]);
    expect(stdout).toMatch(/Images are identical/);
  });

  it('nbdcopy copies to and from an export', async () => {
    const source = path.join(workDir, 'nbdcopy-in.img');
    const target = path.join(workDir, 'nbdcopy-out.img');
    const data = randomBytes(4 * MiB);
    data.fill(0, MiB, 2 * MiB); // a zero run, so nbdcopy may use zeroing or trimming
    writeFileSync(source, data);
    await tool('nbdcopy', [source, `${uriBase}/copy`]);
    expect(copy.peek(0, data.length).equals(data)).toBe(true);
    await tool('nbdcopy', [`${uriBase}/copy`, target]);
    expect(readFileSync(target).equals(data)).toBe(true);
  });

  it('fio with the nbd engine writes and verifies crc32c at queue depth 16', async () => {
    const output = path.join(workDir, 'fio.json');
    await tool(
      'fio',
      [
        '--name=keel-verify',
        '--ioengine=nbd',
        `--uri=${uriBase}/vol`,
        '--rw=randwrite',
        '--bs=4k',
        '--iodepth=16',
        '--size=16m',
        '--verify=crc32c',
        '--verify_state_save=0', // no state file left in the working directory
        '--output-format=json',
        `--output=${output}`,
      ],
      120_000,
    );
    const job = JSON.parse(readFileSync(output, 'utf8')).jobs[0];
    expect(job.error).toBe(0);
    expect(job.write.total_ios).toBe(4096);
    expect(job.read.total_ios).toBe(4096); // every block read back and verified
  });
});
