/**
 * Every process the benchmark starts goes through here, so that every one of them is stopped at the end,
 * even when the run fails or is interrupted: each child leads its own process group (so `keel up`'s
 * routers and edge go with it), `stopAll()` signals the groups in reverse start order, and a process
 * 'exit' hook SIGKILLs whatever is still alive and lazily unmounts any FUSE mount left behind.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';

export interface TrackedChild {
  name: string;
  process: ChildProcess;
  /** stdout + stderr, last 64 KiB, for error messages. */
  output(): string;
  exited: Promise<number | null>;
}

const outputKeepBytes = 64 * 1024;
const children = new Set<TrackedChild>();
const mounts = new Set<string>();
let hooksInstalled = false;

export function spawnTracked(name: string, file: string, args: string[], env: NodeJS.ProcessEnv = process.env): TrackedChild {
  installExitHooks();
  const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'], env, detached: true });
  let output = '';
  const keep = (chunk: Buffer) => {
    output += chunk.toString();
    if (output.length > outputKeepBytes * 2) output = output.slice(-outputKeepBytes);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const exited = new Promise<number | null>((resolve) => {
    child.once('exit', (code) => resolve(code));
    child.once('error', (err) => {
      keep(Buffer.from(`spawn error: ${err.message}\n`));
      resolve(-1);
    });
  });
  const tracked: TrackedChild = { name, process: child, output: () => output.slice(-outputKeepBytes), exited };
  children.add(tracked);
  void exited.then(() => children.delete(tracked));
  return tracked;
}

/** Resolves with everything printed so far once `pattern` appears; rejects on exit or after timeoutMs. */
export function waitForOutput(child: TrackedChild, pattern: RegExp, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const check = () => {
      if (!pattern.test(child.output())) return false;
      cleanup();
      resolve(child.output());
      return true;
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`${child.name}: no ${pattern} within ${timeoutMs} ms; output:\n${child.output()}`));
    }, timeoutMs);
    const onExit = (code: number | null) => {
      if (check()) return;
      cleanup();
      reject(new Error(`${child.name} exited with ${code} before printing ${pattern}; output:\n${child.output()}`));
    };
    const cleanup = () => {
      clearTimeout(timer);
      child.process.stdout!.off('data', check);
      child.process.stderr!.off('data', check);
      child.process.off('exit', onExit);
    };
    child.process.stdout!.on('data', check);
    child.process.stderr!.on('data', check);
    child.process.once('exit', onExit);
    check();
  });
}

/** SIGTERM to the child's group, SIGKILL after graceMs; resolves once the leader has exited. */
export async function stopTracked(child: TrackedChild, graceMs: number): Promise<void> {
  if (child.process.exitCode !== null || child.process.signalCode !== null || child.process.pid === undefined) return;
  signalGroup(child.process.pid, 'SIGTERM');
  const timer = setTimeout(() => signalGroup(child.process.pid!, 'SIGKILL'), graceMs);
  await child.exited;
  clearTimeout(timer);
  // The leader may exit before its children (a router still flushing): take the rest of the group too.
  signalGroup(child.process.pid, 'SIGKILL');
}

export async function stopAll(graceMs: number): Promise<void> {
  for (const child of [...children].reverse()) await stopTracked(child, graceMs);
}

export function trackMount(directory: string): void {
  installExitHooks();
  mounts.add(directory);
}

export function untrackMount(directory: string): void {
  mounts.delete(directory);
}

export function isMounted(directory: string): boolean {
  const table = readFileSync('/proc/mounts', 'utf8');
  return table.split('\n').some((line) => line.split(' ')[1] === directory);
}

/** Lazy unmount: detaches the mount even when its FUSE daemon is gone or stuck. */
export function unmountLazily(directory: string): void {
  if (!isMounted(directory)) return;
  try {
    execFileSync('umount', ['-l', directory], { stdio: 'ignore', timeout: 10_000 });
  } catch {
    // Reported by the caller, which checks isMounted() before removing anything.
  }
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // The group is already gone.
  }
}

function killEverythingNow(): void {
  for (const child of children) if (child.process.pid !== undefined) signalGroup(child.process.pid, 'SIGKILL');
  for (const directory of mounts) unmountLazily(directory);
}

function installExitHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', killEverythingNow);
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(signal, () => {
      console.error(`\nbench: ${signal}, stopping every child process`);
      killEverythingNow();
      process.exit(130);
    });
  }
}
