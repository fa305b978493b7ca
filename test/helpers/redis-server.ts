/**
 * A real redis-server for tests: a child process on a free loopback port, working directory in a temp dir.
 * `stop()` + `restart()` simulate an outage on the same port (connections refused meanwhile); `pause()` /
 * `resume()` freeze the process with SIGSTOP / SIGCONT (connections stay open, nothing is answered).
 * Without `persistent`, a restart loses every key (`--save '' --appendonly no`); with it, the server
 * appends and fsyncs every write (`--appendonly yes --appendfsync always`), so keys survive a restart.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { freePort, waitForExit } from './processes.ts';

export interface TestRedisServer {
  url: string;
  port: number;
  directory: string;
  stop(): Promise<void>;
  restart(): Promise<void>;
  pause(): void;
  resume(): void;
  close(): Promise<void>;
}

export interface RedisServerOptions {
  persistent?: boolean;
}

const startTimeoutMs = 10_000;
const stopTimeoutMs = 5_000;
const portAttemptsMax = 5;

export async function startRedisServer(options: RedisServerOptions = {}): Promise<TestRedisServer> {
  const directory = await mkdtemp(path.join(os.tmpdir(), 'keel-redis-'));
  const persistence = options.persistent
    ? ['--appendonly', 'yes', '--appendfsync', 'always', '--save', '']
    : ['--save', '', '--appendonly', 'no'];
  let child: ChildProcess | undefined;
  let port = 0;

  const launch = async (onPort: number) => {
    const args = ['--port', String(onPort), '--bind', '127.0.0.1', '--daemonize', 'no', '--dir', directory, ...persistence];
    const started = spawn('redis-server', args, { cwd: directory, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    started.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
    started.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
    try {
      await waitForPong(onPort, started, startTimeoutMs);
    } catch (err) {
      started.kill('SIGKILL');
      throw new Error(`redis-server on port ${onPort} did not start: ${(err as Error).message}\n${output}`);
    }
    child = started;
  };

  const stop = async () => {
    const running = child;
    child = undefined;
    if (!running || running.exitCode !== null || running.signalCode !== null) return;
    running.kill('SIGCONT'); // a paused server cannot handle SIGTERM
    running.kill('SIGTERM');
    await waitForExit(running, stopTimeoutMs).catch(() => {
      running.kill('SIGKILL');
      return waitForExit(running, stopTimeoutMs);
    });
  };

  for (let attempt = 1; ; attempt++) {
    port = await freePort();
    try {
      await launch(port);
      break;
    } catch (err) {
      if (attempt >= portAttemptsMax) throw err; // another process took the port between probe and bind
    }
  }

  const server: TestRedisServer = {
    url: `redis://127.0.0.1:${port}`,
    port,
    directory,
    stop,
    restart: () => launch(port),
    pause: () => child?.kill('SIGSTOP'),
    resume: () => child?.kill('SIGCONT'),
    close: async () => {
      await stop();
      await rm(directory, { recursive: true, force: true });
    },
  };
  return server;
}

/** Resolves once the server answers PING with +PONG; rejects if it exits or the deadline passes. */
async function waitForPong(port: number, child: ChildProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`exited with ${child.exitCode ?? child.signalCode}`);
    if (await pingOnce(port)) return;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error(`no PONG within ${timeoutMs} ms`);
}

function pingOnce(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    let reply = '';
    const finish = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(500, () => finish(false));
    socket.once('error', () => finish(false));
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.on('data', (chunk) => {
      reply += chunk.toString();
      if (reply.includes('\r\n')) finish(reply.startsWith('+PONG'));
    });
  });
}
