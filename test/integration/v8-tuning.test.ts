/**
 * The edge and the routers run with the V8 flags of shared/v8-tuning.ts: `keel up` starts its children
 * with them, and an edge started by hand without them logs how to start it with them.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { v8FlagsFor } from '../../shared/v8-tuning.ts';
import { KeelCluster } from '../helpers/keel-cluster.ts';
import { childrenOf, commandLineOf, freePort, keelBin, spawn, waitForExit, waitForOutput } from '../helpers/processes.ts';

const untunedWarning = 'started without the V8 flags';

/** Starts `node [nodeArgs] keel edge`, waits for it to serve, stops it with SIGTERM; returns its log. */
async function edgeLog(nodeArgs: string[]): Promise<string> {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'keel-v8-'));
  const edge = spawn(process.execPath, [...nodeArgs, keelBin, 'edge', '--data', dataDir, '--port', String(await freePort())], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, KEEL_LOG_PRETTY: '0', KEEL_LOG_LEVEL: 'info' },
  });
  let log = '';
  edge.stderr!.on('data', (chunk: Buffer) => (log += chunk.toString()));
  try {
    await waitForOutput(edge, /"edge up"/, 30_000, 'stderr');
    edge.kill('SIGTERM');
    expect(await waitForExit(edge, 15_000)).toBe(0);
    return log;
  } finally {
    edge.kill('SIGKILL');
    await rm(dataDir, { recursive: true, force: true });
  }
}

describe('V8 flags of the edge and the routers', () => {
  let cluster: KeelCluster;

  beforeAll(async () => {
    cluster = await KeelCluster.start({ routers: 2, env: { KEEL_LOG_LEVEL: 'info' } });
  }, 90_000);

  afterAll(async () => {
    await cluster?.stop();
    await cluster?.destroy();
  });

  it('keel up starts every router and the edge with them', async () => {
    const routers = await cluster.routers();
    expect(routers).toHaveLength(2);
    for (const router of routers) expect(commandLineOf(router.pid)).toEqual(expect.arrayContaining(v8FlagsFor('router')));
    const edges = childrenOf(cluster.upPid!).filter((pid) => commandLineOf(pid).includes('edge'));
    expect(edges).toHaveLength(1);
    expect(commandLineOf(edges[0]!)).toEqual(expect.arrayContaining(v8FlagsFor('edge')));
    expect(v8FlagsFor('edge')).toContain('--initial-old-space-size=64');
    expect(cluster.stderr).not.toContain(untunedWarning);
  });

  it('an edge started by hand without them says how to start it with them, and is quiet with them', async () => {
    const untuned = await edgeLog([]);
    const warning = untuned.split('\n').find((line) => line.includes(untunedWarning));
    expect(warning, untuned).toBeDefined();
    const fields = JSON.parse(warning!) as { level: number; missing: string[]; start: string };
    expect(fields.level).toBe(40);
    expect(fields.missing).toEqual(expect.arrayContaining(['--initial-old-space-size=64']));
    expect(fields.start).toBe(`node ${v8FlagsFor('edge').join(' ')} bin/keel.js edge ...`);

    const tuned = await edgeLog(v8FlagsFor('edge'));
    expect(tuned).not.toContain(untunedWarning);
  }, 60_000);
});
