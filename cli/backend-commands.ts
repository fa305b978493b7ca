/**
 * `keel backend status|verify|repair`: the vPool's backend seen from the CLI (docs/backend-volumes.md).
 * The CLI builds its own ErasureObjectStore from the vPool config; `status` also collects every live
 * router's counters from its management server (GET /status at RouterRecord.mgmtAddress).
 */
import type { Command } from 'commander';
import type { VpoolBackend } from '../backend/backend-config.ts';
import { mapBounded } from '../backend/concurrency-gate.ts';
import { listObjectNames } from '../backend/object-listing.ts';
import type { ObjectVerification } from '../backend/object-store.ts';
import { describeStripes } from '../backend/stripe-repair-plan.ts';
import type { AsdCounters } from '../backend/backend-stats.ts';
import { volumeObjectPrefix } from '../router/backend-object-names.ts';
import type { Coordination } from '../shared/coordination.ts';
import { KeelError } from '../shared/errors.ts';
import { limits } from '../shared/limits.ts';
import { silentLogger } from '../shared/logger.ts';
import { loadBackendConfig } from './backend-loader.ts';
import { openCoordination, resolveDataDir, resolveRedisUrl } from './data-dir.ts';
import { printJson, printTable } from './output.ts';
import { fetchRouterStatus } from './router-status.ts';

interface CommonOptions {
  data?: string;
  redis?: string;
  json?: boolean;
}

interface CheckOptions extends CommonOptions {
  /** Also compare every stripe's stored parity with its data units (ErasureObjectStore.verifyObject). */
  deep?: boolean;
}

/** Objects verified or repaired at once (each is held in RAM, ~1.5x its size). */
const objectsInFlightMax = 4;
const progressIntervalMs = 1_000;

export function addBackendCommands(program: Command): void {
  const backend = program.command('backend').description("the vPool's erasure-coded backend: health, verification, repair");
  backend
    .command('status')
    .description('per-ASD reachability, fragments stored, and the live counters of every router')
    .option('--data <dir>', 'cluster data directory')
    .option('--redis <url>', 'Redis coordination URL (default $KEEL_REDIS_URL; none: embedded, under --data)')
    .option('--json', 'machine-readable output')
    .action(async (options: CommonOptions) => backendStatus(options));
  backend
    .command('verify [volume]')
    .description('check every fragment of every object of a volume (or of all volumes)')
    .option('--data <dir>', 'cluster data directory')
    .option('--redis <url>', 'Redis coordination URL (default $KEEL_REDIS_URL; none: embedded, under --data)')
    .option('--deep', "also re-encode each stripe's parity from its data and compare with the stored parity")
    .option('--json', 'machine-readable output')
    .action(async (volume: string | undefined, options: CheckOptions) => backendVerify(volume, options));
  backend
    .command('repair [volume]')
    .description('rewrite lost or corrupt fragments of a volume (or of all volumes), stripe by stripe; names the stripes that cannot be rebuilt')
    .option('--data <dir>', 'cluster data directory')
    .option('--redis <url>', 'Redis coordination URL (default $KEEL_REDIS_URL; none: embedded, under --data)')
    .option('--deep', 'also find units whose parity check fails (as verify --deep) and rebuild them')
    .option('--json', 'machine-readable output')
    .action(async (volume: string | undefined, options: CheckOptions) => backendRepair(volume, options));
}

async function openBackend(options: CommonOptions): Promise<{ coordination: Coordination; backend: VpoolBackend; description: Record<string, unknown> }> {
  const coordination = await openCoordination(resolveDataDir(options.data), resolveRedisUrl(options.redis));
  const { openVpoolBackend, describeBackend } = await loadBackendConfig();
  const backend = openVpoolBackend(await coordination.getVpool(), silentLogger());
  return { coordination, backend, description: describeBackend(backend.config) };
}

async function backendStatus(options: CommonOptions): Promise<void> {
  const { coordination, backend, description } = await openBackend(options);
  const asdRows = await Promise.all(
    backend.asds.map(async (asd) => {
      const startedMs = Date.now();
      try {
        const keys = await asd.list('vol/', AbortSignal.timeout(limits.backendRequestTimeoutMs));
        return { id: asd.id, reachable: true, latencyMs: Date.now() - startedMs, fragments: keys.filter((k) => /\.frag\d+$/.test(k)).length };
      } catch (err) {
        return { id: asd.id, reachable: false, latencyMs: Date.now() - startedMs, fragments: 0, error: (err as Error).message };
      }
    }),
  );
  const listing = await listObjectNames(backend.asds, 'vol/').catch(() => ({ names: [] as string[], unreachable: [] }));
  const routers = await Promise.all(
    (await coordination.listRouters()).map(async (router) => ({ id: router.id, state: router.state, mgmtAddress: router.mgmtAddress, status: await fetchRouterStatus(router.mgmtAddress) })),
  );
  // Sum every router's live per-ASD counters (each router has its own store).
  const counters = new Map<string, AsdCounters>();
  for (const router of routers) {
    const asds = ((router.status as { backend?: { asds?: AsdCounters[] } } | undefined)?.backend?.asds ?? []) as AsdCounters[];
    for (const c of asds) {
      const sum = counters.get(c.asdId);
      if (!sum) counters.set(c.asdId, { ...c });
      else for (const key of Object.keys(c) as Array<keyof AsdCounters>) if (key !== 'asdId') (sum[key] as number) += c[key] as number;
    }
  }
  const asds = asdRows.map((row) => ({ ...row, counters: counters.get(row.id) }));
  const result = { backend: description, objects: listing.names.length, asds, routers };
  if (options.json) return printJson(result);
  console.log(`objects stored: ${result.objects}`);
  printTable(
    asds.map((a) => ({
      asd: a.id,
      reachable: a.reachable ? 'yes' : `NO (${a.error})`,
      fragments: a.fragments,
      requests: a.counters?.requests ?? 0,
      written: a.counters?.bytesWritten ?? 0,
      read: a.counters?.bytesRead ?? 0,
      errors: (a.counters?.readErrors ?? 0) + (a.counters?.writeErrors ?? 0) + (a.counters?.timeouts ?? 0),
      checksumErrors: a.counters?.checksumErrors ?? 0,
      repaired: a.counters?.fragmentsRepaired ?? 0,
    })),
    ['asd', 'reachable', 'fragments', 'requests', 'written', 'read', 'errors', 'checksumErrors', 'repaired'],
  );
  for (const router of routers) {
    const status = router.status as { volumes?: Array<{ name: string; stats: { backend?: Record<string, number> } }>; backend?: { writeBuffer?: Record<string, number> } } | undefined;
    if (!status) {
      console.log(`router ${router.id}: ${router.state}, no status`);
      continue;
    }
    const wb = status.backend?.writeBuffer;
    console.log(
      `router ${router.id}: write buffer ${wb?.pendingBytes ?? 0}/${wb?.bytesMax ?? 0} bytes pending, throttled ${wb?.throttledWrites ?? 0}, waited ${wb?.blockedWrites ?? 0}`,
    );
    for (const volume of status.volumes ?? []) {
      const b = volume.stats.backend;
      if (b) console.log(`  ${volume.name}: ${b.scosUploaded} SCOs + ${b.tlogsUploaded} TLogs uploaded, ${b.scosQueued + b.scosUploading} SCOs and ${b.tlogsQueued} TLogs pending`);
    }
  }
}

/** Object names of a volume (by its stable id), or of every volume. */
async function objectsOf(coordination: Coordination, backend: VpoolBackend, volume: string | undefined): Promise<string[]> {
  let prefix = 'vol/';
  if (volume !== undefined) {
    const record = await coordination.getVolume(volume);
    if (!record) throw KeelError.volumeNotFound(volume);
    prefix = volumeObjectPrefix(record.id);
  }
  return (await listObjectNames(backend.asds, prefix)).names;
}

function progress(verb: string, total: number): { tick: () => void; done: () => void } {
  let count = 0;
  let lastMs = 0;
  const print = () => process.stderr.write(`${verb} ${count}/${total} objects\n`);
  return {
    tick: () => {
      count += 1;
      if (Date.now() - lastMs >= progressIntervalMs) {
        lastMs = Date.now();
        print();
      }
    },
    done: print,
  };
}

async function backendVerify(volume: string | undefined, options: CheckOptions): Promise<void> {
  const { coordination, backend } = await openBackend(options);
  const names = await objectsOf(coordination, backend, volume);
  const meter = progress('verified', names.length);
  const results = await mapBounded(names, objectsInFlightMax, async (name): Promise<ObjectVerification | { name: string; error: string }> => {
    try {
      return await backend.store.verifyObject(name, { deep: options.deep === true });
    } catch (err) {
      return { name, error: (err as Error).message };
    } finally {
      meter.tick();
    }
  });
  meter.done();
  const problems = results.filter((r) => 'error' in r || !r.healthy);
  const summary = {
    objects: names.length,
    healthy: results.length - problems.length,
    degraded: problems.filter((r) => !('error' in r) && r.readable).length,
    unreadable: problems.filter((r) => 'error' in r || !r.readable).length,
    problems: problems.map((r) =>
      'error' in r
        ? r
        : {
            name: r.name,
            healthyFragments: r.healthyFragments,
            bad: r.fragments.filter((f) => f.state !== 'ok'),
            unrecoverableStripes: r.unrecoverableStripes,
            ...(r.unlocatedParityMismatches ? { unlocatedParityMismatches: r.unlocatedParityMismatches } : {}),
          },
    ),
  };
  if (options.json) printJson(summary);
  else {
    console.log(`${summary.objects} objects: ${summary.healthy} healthy, ${summary.degraded} degraded (repairable), ${summary.unreadable} unreadable`);
    for (const p of summary.problems) {
      if ('error' in p) console.log(`  ${p.name}: ${p.error}`);
      else {
        const lost = p.unrecoverableStripes.length > 0 ? `; stripes ${describeStripes(p.unrecoverableStripes)} have fewer than k good units` : '';
        const unlocated = p.unlocatedParityMismatches?.length
          ? `; stripes ${describeStripes(p.unlocatedParityMismatches)} fail the parity check (bad unit unknown)`
          : '';
        console.log(`  ${p.name}: ${p.bad.map((f) => `fragment ${f.fragmentIndex} on ${f.asdId} ${f.state}`).join(', ')}${lost}${unlocated}`);
      }
    }
  }
  if (problems.length > 0) process.exitCode = 1;
}

async function backendRepair(volume: string | undefined, options: CheckOptions): Promise<void> {
  const { coordination, backend } = await openBackend(options);
  const names = await objectsOf(coordination, backend, volume);
  const meter = progress('repaired', names.length);
  const failures: Array<{ name: string; error: string }> = [];
  let objectsRepaired = 0;
  let fragmentsRewritten = 0;
  await mapBounded(names, objectsInFlightMax, async (name) => {
    try {
      const { repaired } = await backend.store.repairObject(name, { deep: options.deep === true });
      if (repaired.length > 0) objectsRepaired += 1;
      fragmentsRewritten += repaired.length;
    } catch (err) {
      failures.push({ name, error: (err as Error).message });
    } finally {
      meter.tick();
    }
  });
  meter.done();
  const summary = { objects: names.length, objectsRepaired, fragmentsRewritten, failures };
  if (options.json) printJson(summary);
  else {
    console.log(`${summary.objects} objects checked: ${objectsRepaired} repaired (${fragmentsRewritten} fragments rewritten), ${failures.length} failed`);
    for (const f of failures) console.log(`  ${f.name}: ${f.error}`);
  }
  if (failures.length > 0) process.exitCode = 1;
}
