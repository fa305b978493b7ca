import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { acquirePidLock, runsKeelCommand } from '../../shared/pid-lock.ts';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'keel-pidlock-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

it('recognises keel command lines whatever the order and form of their options', () => {
  const isR1 = runsKeelCommand('router', { '--id': 'r1' });
  expect(isR1(['node', '--single-threaded-gc', '/x/bin/keel.js', 'router', '--id', 'r1', '--data', 'd'].join('\0'))).toBe(true);
  expect(isR1(['node', '/x/bin/keel.js', 'router', '--data', 'd', '--id=r1'].join('\0'))).toBe(true);
  expect(isR1(['node', '/x/cli/main.ts', 'router', '--id', 'r1'].join('\0'))).toBe(true);
  expect(isR1(['node', '/x/bin/keel.js', 'router', '--id', 'r10'].join('\0'))).toBe(false);
  expect(isR1(['node', '/x/bin/keel.js', 'edge', '--id', 'r1'].join('\0'))).toBe(false);
  expect(isR1(['vim', 'router', '--id', 'r1'].join('\0'))).toBe(false);
  expect(runsKeelCommand('up')(['node', 'bin/keel.js', 'up', '--port', '1'].join('\0'))).toBe(true);
});

it('refuses while the holder lives, takes a stale lock at once, and releases only its own', async () => {
  const file = path.join(dir, 'router.pid');
  const holder = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)', 'keel.js', 'router', '--id', 'r9'], { stdio: 'ignore' });
  await new Promise((resolve) => holder.once('spawn', resolve));
  try {
    await writeFile(file, `${holder.pid}\n`);
    await expect(acquirePidLock(file, 'router r9', runsKeelCommand('router', { '--id': 'r9' }))).rejects.toMatchObject({ code: 'ALREADY_RUNNING', details: { pid: holder.pid } });
    // The same live pid is no holder for another router id (a reused pid), so the lock is stale for it.
    const other = await acquirePidLock(file, 'router r8', runsKeelCommand('router', { '--id': 'r8' }));
    expect(await readFile(file, 'utf8')).toBe(`${process.pid}\n`);
    await other.release();
  } finally {
    holder.kill('SIGKILL');
  }
  await writeFile(file, '999999999\n'); // no such process: SIGKILLed long ago
  const lock = await acquirePidLock(file, 'router r9', runsKeelCommand('router', { '--id': 'r9' }));
  expect(await readFile(file, 'utf8')).toBe(`${process.pid}\n`);
  await writeFile(file, '12345\n'); // someone else's now: release leaves it
  await lock.release();
  expect(await readFile(file, 'utf8')).toBe('12345\n');
});
