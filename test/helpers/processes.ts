/** Running real programs from tests: Debian's NBD clients and Keel's own processes. */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import { fileURLToPath } from 'node:url';

export const keelBin = fileURLToPath(new URL('../../bin/keel.js', import.meta.url));

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a program to completion (bounded by timeoutMs); never rejects on a non-zero exit. */
export function run(file: string, args: string[], options: { timeoutMs?: number; env?: NodeJS.ProcessEnv; input?: string } = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = execFile(
      file,
      args,
      { timeout: options.timeoutMs ?? 60_000, maxBuffer: 64 << 20, env: options.env ?? process.env, killSignal: 'SIGKILL' },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === 'number' ? error.code : -1) : 0;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) });
      },
    );
    if (options.input !== undefined) child.stdin?.end(options.input);
  });
}

export function runKeel(args: string[], timeoutMs = 30_000): Promise<RunResult> {
  return run(process.execPath, [keelBin, ...args], { timeoutMs, env: { ...process.env, KEEL_LOG_PRETTY: '0' } });
}

/**
 * A port that is free now, chosen below the kernel's ephemeral range: a port from bind(0) can be handed to
 * another process's bind(0) or outgoing connection before the caller's server binds it (in one CI run the
 * edge lost its port that way and fio reached another listener). Falls back to bind(0) when no such range
 * is known.
 */
export async function freePort(): Promise<number> {
  const [ephemeralLow] = await readFile('/proc/sys/net/ipv4/ip_local_port_range', 'utf8')
    .then((text) => text.trim().split(/\s+/).map(Number))
    .catch(() => [0]);
  const low = 10_000;
  for (let attempt = 0; ephemeralLow! > low + 1000 && attempt < 50; attempt++) {
    const port = low + Math.floor(Math.random() * (ephemeralLow! - low));
    if (await canListen(port)) return port;
  }
  return listenAndClose(0);
}

async function canListen(port: number): Promise<boolean> {
  return listenAndClose(port).then(
    () => true,
    () => false,
  );
}

function listenAndClose(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      const bound = (server.address() as net.AddressInfo).port;
      server.close(() => resolve(bound));
    });
  });
}

/** Resolves with everything `child` printed on `stream` (stdout unless told) once it matches `pattern`. */
export function waitForOutput(child: ChildProcess, pattern: RegExp, timeoutMs: number, stream: 'stdout' | 'stderr' = 'stdout'): Promise<string> {
  const output = child[stream];
  return new Promise((resolve, reject) => {
    let seen = '';
    const timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${pattern}; output so far:\n${seen}`)), timeoutMs);
    const onData = (chunk: Buffer) => {
      seen += chunk.toString();
      if (pattern.test(seen)) {
        clearTimeout(timer);
        output?.off('data', onData);
        resolve(seen);
      }
    };
    output?.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`exited with ${code} before printing ${pattern}; output:\n${seen}`));
    });
  });
}

export function waitForExit(child: ChildProcess, timeoutMs: number): Promise<number | null> {
  if (child.exitCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`process ${child.pid} did not exit within ${timeoutMs} ms`)), timeoutMs);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve(code);
    });
  });
}

/** The command line of a live process, as its words. */
export function commandLineOf(pid: number): string[] {
  return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
}

/** The pids whose parent is `parentPid` (from /proc). */
export function childrenOf(parentPid: number): number[] {
  return readdirSync('/proc')
    .filter((entry) => /^\d+$/.test(entry))
    .map(Number)
    .filter((pid) => {
      try {
        // The parent pid is the 2nd field after the parenthesised command name.
        const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
        return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === parentPid;
      } catch {
        return false; // gone meanwhile
      }
    });
}

export { spawn };
