import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { limits } from '../../shared/limits.ts';
import { crashGroupSize, crashScoSizeBytes, crashVolumeSizeBytes, crashWrite, openCrashVolume } from '../helpers/crash-workload.ts';

const childScript = fileURLToPath(new URL('../helpers/volume-crash-child.ts', import.meta.url));
const writesBeforeFlush = 400;
let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'keel-crash-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Runs the child until it flushed and wrote `extraGroups` more groups, SIGKILLs it; returns the last ACK. */
async function runAndKill(extraGroups: number): Promise<{ flushed: number; lastAck: number }> {
  const child = spawn(process.execPath, ['--import', 'tsx', childScript, dir, String(writesBeforeFlush)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  let flushed = -1;
  let lastAck = -1;
  let pending = '';
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`child did not reach the flush marker; stderr: ${stderr}`)), 45_000);
    child.stdout.on('data', (chunk: Buffer) => {
      pending += chunk.toString();
      const lines = pending.split('\n');
      pending = lines.pop()!;
      for (const line of lines) {
        const [word, value] = line.split(' ');
        if (word === 'ACK') lastAck = Number(value);
        if (word === 'FLUSHED') flushed = Number(value);
      }
      if (flushed >= 0 && lastAck >= flushed + extraGroups * crashGroupSize) {
        child.kill('SIGKILL');
        clearTimeout(timer);
        resolve();
      }
    });
    child.on('exit', (code, signal) => {
      if (signal !== 'SIGKILL') reject(new Error(`child exited early (${code}); stderr: ${stderr}`));
    });
  });
  await exited;
  // ACK lines already in the pipe when the kill landed were printed after their writes completed.
  return { flushed, lastAck };
}

describe('volume driver crash (SIGKILL of the writing process)', () => {
  it('keeps every acknowledged write; writes in flight read as old or new, never garbage', async () => {
    await expectCrashRecovers();
  });

  it('does the same when new SCOs live in reused files of old ones (spares) that hold other bytes', async () => {
    // Spares bigger than a SCO, full of bytes no write has: the child's first SCO rolls take them.
    await mkdir(path.join(dir, 'sco-spares'));
    for (let index = 1; index <= limits.scoSparesMax; index++) {
      await writeFile(path.join(dir, 'sco-spares', `spare-${90_000 + index}`), Buffer.alloc(2 * crashScoSizeBytes, 0xa5));
    }
    await expectCrashRecovers();
    expect(await readdir(path.join(dir, 'sco-spares'))).toEqual([]); // every spare became a SCO
  });
});

async function expectCrashRecovers(): Promise<void> {
  const { flushed, lastAck } = await runAndKill(20);
  expect(flushed).toBe(writesBeforeFlush - 1);
  expect(lastAck).toBeGreaterThan(flushed);

  // The expected contents after every acknowledged write, and the writes that may or may not be there.
  const model = Buffer.alloc(crashVolumeSizeBytes);
  for (let index = 0; index <= lastAck; index++) {
    const write = crashWrite(index);
    write.data.copy(model, write.offset);
  }
  const inFlight = [];
  for (let index = lastAck + 1; index <= lastAck + crashGroupSize; index++) inFlight.push(crashWrite(index));

  const driver = await openCrashVolume(dir);
  try {
    expect(driver.stats().scoCount).toBeGreaterThan(4);
    expect(driver.stats().tlogCount).toBeGreaterThan(1);
    const actual = await driver.read(0, crashVolumeSizeBytes);
    let mismatches = 0;
    let firstBad = -1;
    for (let at = 0; at < crashVolumeSizeBytes; at++) {
      if (actual[at] === model[at]) continue;
      const fromInFlight = inFlight.some((write) => at >= write.offset && at < write.offset + write.data.length && write.data[at - write.offset] === actual[at]);
      if (!fromInFlight) {
        mismatches += 1;
        if (firstBad < 0) firstBad = at;
      }
    }
    expect({ mismatches, firstBad }).toEqual({ mismatches: 0, firstBad: -1 });
  } finally {
    await driver.close();
  }
}
