/**
 * Runs one Keel process (router or edge) as a child, restarting it when it dies unexpectedly. Restarts are
 * bounded (childRestartsMax within childRestartWindowMs) with growing backoff; past that the child is left
 * failed instead of crash-looping.
 *
 * KEEL_NO_RESTART=1 in `keel up`'s environment turns restarts off: a child that dies stays down (status
 * failed). Tests use it to keep a killed router dead, so that its volumes are taken over by another router
 * (docs/high-availability.md) instead of recovered by the restarted owner.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { limits } from '../shared/limits.ts';
import type { Logger } from '../shared/logger.ts';
import { v8FlagsFor } from '../shared/v8-tuning.ts';

export type ChildStatus = 'starting' | 'running' | 'restarting' | 'stopping' | 'stopped' | 'failed';

const keelBin = fileURLToPath(new URL('../bin/keel.js', import.meta.url));

export class SupervisedChild {
  status: ChildStatus = 'stopped';
  process: ChildProcess | undefined;
  private restartTimesMs: number[] = [];
  private restartTimer: NodeJS.Timeout | undefined;
  /** Set when the whole cluster is stopping: a child that exits now is done, not crashed. */
  private restartsHeld = false;
  private exited: Promise<void> = Promise.resolve();

  constructor(
    readonly name: string,
    private readonly args: string[],
    private readonly logger: Logger,
    private readonly env: NodeJS.ProcessEnv = process.env,
  ) {}

  get pid(): number | undefined {
    return this.process?.pid;
  }

  start(): void {
    this.setStatus('starting');
    const env = { ...this.env, KEEL_SUPERVISED: '1' };
    // KEEL_CHILD_NODE_ARGS passes Node flags to routers and edges, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof".
    const nodeArgs = [...defaultNodeArgs(this.args[0]), ...(this.env.KEEL_CHILD_NODE_ARGS ?? '').split(' ').filter(Boolean)];
    const child = spawn(process.execPath, [...nodeArgs, keelBin, ...this.args], { stdio: ['ignore', 'inherit', 'inherit'], env });
    this.process = child;
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => {
      this.onExit(code, signal);
      resolve();
    }));
    child.once('spawn', () => this.status === 'starting' && this.setStatus('running'));
  }

  /** A terminal's Ctrl-C reaches every child at once: from now on an exit is not a crash. */
  holdRestarts(): void {
    this.restartsHeld = true;
    clearTimeout(this.restartTimer);
  }

  /** SIGTERM, then SIGKILL after childStopTimeoutMs. */
  async stop(): Promise<void> {
    clearTimeout(this.restartTimer);
    if (this.status === 'stopped' || this.status === 'failed' || !this.process || this.process.exitCode !== null) {
      this.setStatus('stopped');
      return;
    }
    this.setStatus('stopping');
    this.process.kill('SIGTERM');
    const killTimer = setTimeout(() => {
      this.logger.warn({ child: this.name }, 'did not stop in time: SIGKILL');
      this.process?.kill('SIGKILL');
    }, limits.childStopTimeoutMs);
    await this.exited;
    clearTimeout(killTimer);
  }

  private onExit(code: number | null, signal: NodeJS.Signals | null): void {
    if (this.status === 'stopping' || this.restartsHeld) {
      this.setStatus('stopped', { code, signal });
      return;
    }
    if (this.env.KEEL_NO_RESTART === '1') {
      this.setStatus('failed', { code, signal, reason: 'restarts are off (KEEL_NO_RESTART=1)' });
      return;
    }
    const nowMs = Date.now();
    this.restartTimesMs = this.restartTimesMs.filter((t) => nowMs - t < limits.childRestartWindowMs);
    if (this.restartTimesMs.length >= limits.childRestartsMax) {
      this.setStatus('failed', { code, signal, restarts: this.restartTimesMs.length });
      return;
    }
    this.restartTimesMs.push(nowMs);
    const backoffMs = Math.min(100 * 2 ** (this.restartTimesMs.length - 1), limits.childRestartBackoffMaxMs);
    this.setStatus('restarting', { code, signal, backoffMs });
    this.restartTimer = setTimeout(() => this.start(), backoffMs);
  }

  private setStatus(status: ChildStatus, details: Record<string, unknown> = {}): void {
    const from = this.status;
    this.status = status;
    const level = status === 'failed' || status === 'restarting' ? 'warn' : 'info';
    this.logger[level]({ child: this.name, from, to: status, pid: this.process?.pid, ...details }, `${this.name}: ${from} -> ${status}`);
  }
}

/** V8 flags for `keel router` and `keel edge` children (shared/v8-tuning.ts); none for other commands. */
function defaultNodeArgs(command: string | undefined): string[] {
  return command === 'router' || command === 'edge' ? v8FlagsFor(command) : [];
}
