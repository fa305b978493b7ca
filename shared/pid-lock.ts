/**
 * One live process per directory: a `keel up` per data directory, a router per router directory. Two of
 * them on one directory would fence each other's volumes and append to the same files.
 *
 * The lock is a file holding the owner's pid, created with O_EXCL. A lock whose process is gone, or is
 * no longer a Keel process of that kind (the pid was reused), is stale and taken over at once: a router
 * that `keel up` restarts after a SIGKILL must not wait for a timeout, as an mtime-based lock would make it.
 */
import { readFileSync } from 'node:fs';
import { open, readFile, unlink } from 'node:fs/promises';
import { KeelError } from './errors.ts';

export interface PidLock {
  release(): Promise<void>;
}

/**
 * Takes the lock at `filePath` for this process, or throws ALREADY_RUNNING naming the live holder.
 * `isHolder(cmdline)` tells whether a live pid's command line (NUL-separated) is a process of this kind.
 */
export async function acquirePidLock(filePath: string, what: string, isHolder: (cmdline: string) => boolean): Promise<PidLock> {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const handle = await open(filePath, 'wx');
      await handle.writeFile(`${process.pid}\n`);
      await handle.close();
      return { release: () => releasePidLock(filePath) };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw KeelError.io(`cannot create ${filePath}`, err);
    }
    const holder = await lockHolder(filePath);
    if (holder !== undefined && holder !== process.pid && isLiveHolder(holder, isHolder)) throw KeelError.alreadyRunning(what, holder);
    await unlink(filePath).catch(() => undefined); // stale: its process is gone
  }
  throw KeelError.io(`cannot take ${filePath}: another process took it at the same time`);
}

async function lockHolder(filePath: string): Promise<number | undefined> {
  const text = await readFile(filePath, 'utf8').catch(() => '');
  const pid = Number.parseInt(text, 10);
  return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
}

function isLiveHolder(pid: number, isHolder: (cmdline: string) => boolean): boolean {
  try {
    return isHolder(readFileSync(`/proc/${pid}/cmdline`, 'utf8'));
  } catch {
    return false; // no such process (or no /proc): not a holder
  }
}

async function releasePidLock(filePath: string): Promise<void> {
  if ((await lockHolder(filePath)) === process.pid) await unlink(filePath).catch(() => undefined);
}

/**
 * A command line (from /proc, NUL-separated) running `keel SUBCOMMAND` with these option values, e.g.
 * ('router', { '--id': 'r1' }); options may come in any order, as `--id r1` or `--id=r1`.
 */
export function runsKeelCommand(subcommand: string, options: Record<string, string> = {}): (cmdline: string) => boolean {
  return (cmdline) => {
    const words = cmdline.split('\0').flatMap((word) => (word.startsWith('--') && word.includes('=') ? [word.slice(0, word.indexOf('=')), word.slice(word.indexOf('=') + 1)] : [word]));
    const start = words.findIndex((word, i) => /(^|\/)(keel(\.js)?|main\.[jt]s)$/.test(word) && words[i + 1] === subcommand);
    if (start < 0) return false;
    return Object.entries(options).every(([name, value]) => words.some((word, i) => i > start && word === name && words[i + 1] === value));
  };
}
