/**
 * A real local cluster for integration tests: `keel up` as a child process (it spawns router and edge
 * processes), in a temporary data directory, on a free NBD port.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { freePort, keelBin, runKeel, waitForExit, waitForOutput } from './processes.ts';

export interface RouterRow {
  id: string;
  address: string;
  state: string;
  pid: number;
  volumes: string;
  mgmtAddress?: string;
}

export class KeelCluster {
  private up: ChildProcess | undefined;
  stderr = '';

  private constructor(
    readonly dataDir: string,
    readonly port: number,
    private readonly upArgs: string[],
    private readonly upEnv: NodeJS.ProcessEnv,
  ) {}

  static async start(
    options: {
      volumeSize?: string;
      scoSize?: string;
      routers?: number;
      dataDir?: string;
      /** Extra `keel up` arguments (e.g. --s3 URL). */
      upArgs?: string[];
      /** Extra environment for `keel up` (e.g. KEEL_NO_RESTART: '1' keeps a killed router down). */
      env?: NodeJS.ProcessEnv;
    } = {},
  ): Promise<KeelCluster> {
    const dataDir = options.dataDir ?? (await mkdtemp(path.join(tmpdir(), 'keel-it-')));
    const port = await freePort();
    const args = ['--volume-size', options.volumeSize ?? '1G', '--sco-size', options.scoSize ?? '4M', '--routers', String(options.routers ?? 3), ...(options.upArgs ?? [])];
    const cluster = new KeelCluster(dataDir, port, args, options.env ?? {});
    await cluster.startUp();
    return cluster;
  }

  /** The pid of `keel up` (its routers and edge are its children). */
  get upPid(): number | undefined {
    return this.up?.pid;
  }

  uri(volume = 'demo'): string {
    return `nbd://127.0.0.1:${this.port}/${volume}`;
  }

  async startUp(): Promise<void> {
    this.up = spawn(process.execPath, [keelBin, 'up', '--data', this.dataDir, '--port', String(this.port), ...this.upArgs], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...this.upEnv, KEEL_LOG_PRETTY: '0', KEEL_LOG_LEVEL: process.env.KEEL_LOG_LEVEL ?? 'warn' },
    });
    this.up.stderr!.on('data', (chunk: Buffer) => {
      this.stderr += chunk.toString();
      if (this.stderr.length > 1 << 20) this.stderr = this.stderr.slice(-(1 << 19));
    });
    await waitForOutput(this.up, /Keel is up/, 60_000);
  }

  /** SIGTERM to `keel up`, which stops the edge and the routers cleanly. */
  async stop(): Promise<number | null> {
    if (!this.up) return null;
    const up = this.up;
    this.up = undefined;
    up.kill('SIGTERM');
    return waitForExit(up, 30_000);
  }

  async destroy(): Promise<void> {
    if (this.up) {
      this.up.kill('SIGKILL');
      this.up = undefined;
    }
    await rm(this.dataDir, { recursive: true, force: true });
  }

  async keel(...args: string[]) {
    return runKeel([...args, '--data', this.dataDir]);
  }

  async routers(): Promise<RouterRow[]> {
    const result = await this.keel('router', 'list', '--json');
    if (result.code !== 0) throw new Error(`router list failed: ${result.stderr}`);
    return JSON.parse(result.stdout) as RouterRow[];
  }

  async ownerOf(volume: string): Promise<RouterRow> {
    const info = await this.keel('volume', 'info', volume, '--json');
    const owner = (JSON.parse(info.stdout) as { owner: string }).owner;
    const row = (await this.routers()).find((r) => r.id === owner);
    if (!row) throw new Error(`volume ${volume} has no registered owner (${owner})`);
    return row;
  }

  /** Waits until router `id` is registered again with a pid other than `oldPid` and is up. */
  async waitForRestart(id: string, oldPid: number, timeoutMs = 30_000): Promise<RouterRow> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const row = (await this.routers()).find((r) => r.id === id);
      if (row && row.pid !== oldPid && row.state === 'up') return row;
      await new Promise((r) => setTimeout(r, 200));
    }
    throw new Error(`router ${id} did not come back within ${timeoutMs} ms`);
  }
}
