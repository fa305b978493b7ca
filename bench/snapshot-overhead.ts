/**
 * What near-continuous snapshots cost (issue 5, docs/snapshots.md "Cost"): fio 4k random writes at QD32
 * through a fresh `keel up` cluster for N seconds, once alone and once while a loop takes a snapshot of
 * the same volume every 10 ms (the Parallax figure) through the snapshot-create admin op. Prints both
 * IOPS, their ratio, and how many snapshots were taken with their latency.
 *
 *   node --import tsx bench/snapshot-overhead.ts [--seconds 20] [--interval-ms 10] [--routers 1]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { connectToOwner } from '../cli/router-admin.ts';
import { openCoordination } from '../cli/data-dir.ts';
import { keelBin, freePort, waitForOutput, waitForExit, run } from '../test/helpers/processes.ts';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '20' },
    'interval-ms': { type: 'string', default: '10' },
    routers: { type: 'string', default: '1' },
    'volume-size': { type: 'string', default: '4G' },
  },
});
const seconds = Number(values.seconds);
const intervalMs = Number(values['interval-ms']);

async function startCluster(): Promise<{ up: ChildProcess; dataDir: string; port: number }> {
  const dataDir = await mkdtemp(path.join(tmpdir(), 'keel-snapbench-'));
  const port = await freePort();
  const up = spawn(process.execPath, [keelBin, 'up', '--data', dataDir, '--port', String(port), '--volume-size', values['volume-size']!, '--routers', values.routers!], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, KEEL_LOG_LEVEL: 'warn', KEEL_LOG_PRETTY: '0' },
  });
  up.stderr!.resume();
  await waitForOutput(up, /Keel is up/, 60_000);
  return { up, dataDir, port };
}

async function fioRandwrite(port: number, volume: string): Promise<number> {
  const result = await run(
    'fio',
    [
      '--name=randwrite',
      '--ioengine=nbd',
      `--uri=nbd://127.0.0.1:${port}/${volume}`,
      '--rw=randwrite',
      '--bs=4k',
      '--iodepth=32',
      '--size=1G',
      '--time_based',
      `--runtime=${seconds}`,
      '--ramp_time=2',
      '--output-format=json',
    ],
    { timeoutMs: (seconds + 60) * 1000 },
  );
  if (result.code !== 0) throw new Error(`fio failed (exit ${result.code}): ${result.stderr} ${result.stdout.slice(-2000)}`);
  // The nbd engine prints "fio: connected to NBD server" before the JSON.
  return (JSON.parse(result.stdout.slice(result.stdout.indexOf('{'))) as { jobs: Array<{ write: { iops: number } }> }).jobs[0].write.iops;
}

/** Takes a snapshot every intervalMs (measured start to start) until stopped; returns latencies in ms. */
function snapshotLoop(dataDir: string, volume: string, durable: boolean): { stop: () => Promise<number[]> } {
  let running = true;
  const latencies: number[] = [];
  const done = (async () => {
    const coordination = await openCoordination(dataDir);
    const client = await connectToOwner(coordination, volume);
    try {
      while (running) {
        const startedMs = performance.now();
        await client.request({ op: 'snapshot-create', volume, durable });
        latencies.push(performance.now() - startedMs);
        const waitMs = intervalMs - (performance.now() - startedMs);
        if (waitMs > 0) await new Promise((resolve) => setTimeout(resolve, waitMs));
      }
    } finally {
      client.close();
      await coordination.close();
    }
  })();
  return {
    stop: async () => {
      running = false;
      await done;
      return latencies;
    },
  };
}

function percentile(sorted: number[], p: number): number {
  return sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

const cluster = await startCluster();
try {
  const run1 = await runKeel(cluster.dataDir, ['volume', 'create', 'plain', values['volume-size']!]);
  const run2 = await runKeel(cluster.dataDir, ['volume', 'create', 'snapped', values['volume-size']!]);
  const run3 = await runKeel(cluster.dataDir, ['volume', 'create', 'durable', values['volume-size']!]);
  if (run1 !== 0 || run2 !== 0 || run3 !== 0) throw new Error('volume create failed');
  console.log(`fio randwrite 4k QD32, ${seconds} s per run, ${values.routers} router(s)`);
  const baselineIops = await fioRandwrite(cluster.port, 'plain');
  console.log(`without snapshots:            ${baselineIops.toFixed(0)} IOPS`);
  for (const durable of [false, true]) {
    const volume = durable ? 'durable' : 'snapped';
    const loop = snapshotLoop(cluster.dataDir, volume, durable);
    const iops = await fioRandwrite(cluster.port, volume);
    const latencies = (await loop.stop()).sort((a, b) => a - b);
    const kind = durable ? 'durable (SYNC + fsync)' : 'pipelined (durable at next FLUSH)';
    console.log(`with a ${kind} snapshot every ${intervalMs} ms: ${iops.toFixed(0)} IOPS (${latencies.length} snapshots, latency p50 ${percentile(latencies, 50).toFixed(1)} ms, p99 ${percentile(latencies, 99).toFixed(1)} ms)`);
    console.log(`  ratio ${(iops / baselineIops).toFixed(3)} (overhead ${((1 - iops / baselineIops) * 100).toFixed(1)}%)`);
  }
} finally {
  cluster.up.kill('SIGTERM');
  await waitForExit(cluster.up, 30_000);
  await rm(cluster.dataDir, { recursive: true, force: true });
}

async function runKeel(dataDir: string, args: string[]): Promise<number> {
  return (await run(process.execPath, [keelBin, ...args, '--data', dataDir])).code;
}
