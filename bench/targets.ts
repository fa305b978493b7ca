/**
 * The block devices the benchmark drives, each served over NBD on loopback so that one fio (nbd engine)
 * measures them all the same way: Keel (edge -> routers, `keel up`), Keel on an S3 server, nbdkit's
 * memory plugin (the ceiling for an NBD server here), nbdkit's file plugin (page cache), and s3backer
 * (FUSE, on the same kind of S3 server) exported with nbdkit's file plugin. How each starts and stops is
 * documented in docs/benchmark.md.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, open, readdir, readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import net from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import { keelUpPlacementArgs, placed } from './placement.ts';
import { isMounted, spawnTracked, stopTracked, trackMount, unmountLazily, untrackMount, waitForOutput, type TrackedChild } from './child-processes.ts';
import { findProcess, repoDir, type RoleProcess } from './system-metrics.ts';
import type { JobId } from './fio-jobs.ts';
import { freePort } from '../test/helpers/processes.ts';

export type TargetId = 'keel' | 'keel-s3' | 'nbdkit-memory' | 'node-relay' | 'node-relay-2' | 'nbdkit-file' | 's3backer';

export interface TargetContext {
  /** A fresh directory for this target, removed by the caller afterwards. */
  workDir: string;
  /** Size of the exported device (the fio region is a prefix of it). */
  deviceBytes: number;
  /** The prefix of the device the jobs use. */
  regionBytes: number;
  scoSize: string;
}

export interface RunningTarget {
  uri(): string;
  /**
   * The target's server processes by their part in the chain, fio's side first (asked again before each
   * job: Keel's owner can change), whose CPU per I/O the report gives for the 4k QD32 jobs. Keel's `edge`
   * is also sampled for RSS.
   */
  processes?: () => Promise<RoleProcess[]>;
  /** The S3 server's process, whose socket writes count the backend bytes fetched by cold reads. */
  backendPid?: number;
  /** Makes the next reads cold (restart, caches dropped) and says how; absent when there is no slower tier. */
  makeCold?: () => Promise<string>;
  /** The last lines the target printed (warnings and errors), to explain a failed job. */
  logTail?: (lines: number) => string;
  /**
   * Waits, up to waitMaxMs, until the write-back that earlier jobs left behind is done (Keel's SCO and TLog
   * uploads, s3backer's dirty blocks), so that a job does not share the cores with its predecessor's
   * background work. Says what it waited for; absent on targets that have no write-back.
   */
  settle?: (waitMaxMs: number) => Promise<Settled>;
  /**
   * Keel on S3 only: `keel scrub --defrag` after the last job, so that one more sequential read shows what
   * a user who defragments gets (run.ts, "after defrag"). Says what it did.
   */
  defragment?: (waitMaxMs: number) => Promise<string>;
  stop(): Promise<void>;
}

export interface Settled {
  waitedMs: number;
  /** False when waitMaxMs passed with work still pending. */
  quiet: boolean;
  /** What was pending when the wait began, e.g. "12 SCOs and 6 TLogs to upload"; undefined when nothing was. */
  pending?: string;
}

export interface TargetSpec {
  id: TargetId;
  label: string;
  /** One line for the report: what is being measured. */
  method: string;
  /** The jobs this target runs, and why it runs no others; every job when absent. */
  only?: { jobs: readonly JobId[]; why: string };
  /** Why this target cannot run here, or undefined when it can. */
  unavailable(): Promise<string | undefined>;
  start(context: TargetContext): Promise<RunningTarget>;
}

const execFileAsync = promisify(execFile);
const keelBin = path.join(repoDir, 'bin', 'keel.js');
const relayScript = path.join(repoDir, 'bench', 'tcp-relay.ts');
const s3rverBin = path.join(path.dirname(createRequire(import.meta.url).resolve('s3rver/package.json')), 'bin', 's3rver.js');
const startTimeoutMs = 60_000;
const stopGraceMs = 30_000;
const keelS3ScoSize = '4M';
/** The router requires a write buffer of at least tlogScosMax + 2 SCOs (backend/backend-config.ts). */
const keelS3WriteBufferScos = 8;
/**
 * s3backer's block size: 64 KiB, chosen by measuring 4 KiB (s3backer's default), 64 KiB and 1 MiB in
 * quick mode (2-core machine, 1.5 s jobs; 4k randwrite QD32 / 1M seq write / fill):
 * - 1 MiB: 85-101 IOPS, 85 MiB/s, fill 116-131 MiB/s; but a 4 KiB write missing the cache is a 1 MiB
 *   read-modify-write;
 * - 64 KiB: 363-466 IOPS, 30-37 MiB/s, fill 25-30 MiB/s (a full-mode 1 GiB fill: about 35-41 s of its
 *   120 s cap);
 * - 4 KiB: 467-919 IOPS, 3-6 MiB/s, but the fill runs at 4.9 MiB/s: every block is one S3 object, and
 *   s3backer's default MD5 cache (10 000 entries held 10 s each) lets through at most 1 000 block writes
 *   a second (md5_cache_full_delays 192 s), so a full-mode fill would need about 210 s, over its cap.
 * The 4 KiB figures are better for 4k random writes, but they could not be measured on a written 1 GiB
 * region in full mode, so 64 KiB is used. No extra tuning (MD5 cache, --blockHashPrefix, --listBlocks).
 */
const s3backerBlockBytes = 64 * 2 ** 10;
const s3Credentials = { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER' };

export const targetSpecs: readonly TargetSpec[] = [
  {
    id: 'keel',
    label: 'Keel',
    method: 'keel up: 3 router processes + 1 edge, embedded coordination, 4+2 on local-directory ASDs, a write buffer of 8 × the region (at least 1 GiB) so that nothing the run writes is evicted, and a RAM cache of 2 × the region (--ram-cache) for the cache-hit reads',
    unavailable: async () => undefined,
    start: (context) => startKeel(context, false),
  },
  {
    id: 'keel-s3',
    label: 'Keel on S3',
    method: `keel up --s3 on an s3rver on loopback, ${keelS3ScoSize} SCOs and a write buffer of 1/8 of the region (at least ${keelS3ScoSize} × ${keelS3WriteBufferScos}), so that most of the data lives only on the backend`,
    unavailable: async () => ((await keelUpHelp()).includes('--s3') ? undefined : '`keel up --help` lists no --s3 option in this checkout'),
    start: (context) => startKeel(context, true),
  },
  {
    id: 'nbdkit-memory',
    label: 'nbdkit memory',
    method: 'nbdkit -f -i 127.0.0.1 memory size=DEVICE over TCP',
    unavailable: () => missingProgram('nbdkit'),
    start: async (context) => {
      const server = await startNbdkit('nbdkit memory', [`size=${context.deviceBytes}`], 'memory');
      return { uri: () => server.uri, processes: async () => rolesOf([['nbdkit', server.child]]), stop: () => stopTracked(server.child, stopGraceMs) };
    },
  },
  {
    id: 'node-relay',
    label: 'Node relay',
    method:
      'nbdkit memory behind bench/tcp-relay.ts, a Node.js process that only copies bytes both ways (stream.pipe): one extra process hop with no logic, ' +
      "the shape of a Keel read (fio -> edge -> owner router) with no work in it",
    unavailable: () => missingProgram('nbdkit'),
    start: (context) => startRelayChain(context, 1),
  },
  {
    id: 'node-relay-2',
    label: 'Node relay ×2',
    method:
      'nbdkit memory behind two bench/tcp-relay.ts processes in a chain: the shape of a Keel write (fio -> edge -> owner router -> DTL peer router, ' +
      'three processes and six loopback hops per request) with no work in it and a C server as its last process',
    unavailable: () => missingProgram('nbdkit'),
    start: (context) => startRelayChain(context, 2),
    only: { jobs: ['randwrite-4k-qd32', 'randread-4k-qd32'], why: 'this floor is measured for the 4k QD32 targets only' },
  },
  {
    id: 'nbdkit-file',
    label: 'nbdkit file',
    method: 'nbdkit -f -i 127.0.0.1 file on a sparse file in a temp directory (page cache)',
    unavailable: () => missingProgram('nbdkit'),
    start: async (context) => {
      const file = path.join(context.workDir, 'disk.img');
      const handle = await open(file, 'w');
      await handle.truncate(context.deviceBytes);
      await handle.close();
      const server = await startNbdkit('nbdkit file', [file], 'file');
      return { uri: () => server.uri, processes: async () => rolesOf([['nbdkit', server.child]]), stop: () => stopTracked(server.child, stopGraceMs) };
    },
  },
  {
    id: 's3backer',
    label: 's3backer',
    method:
      `s3backer (FUSE) on an s3rver on loopback, ${s3backerBlockBytes / 2 ** 10} KiB blocks, a block cache bounded to Keel on S3's write buffer ` +
      `(1/8 of the region, at least ${keelS3ScoSize} × ${keelS3WriteBufferScos}; write-back, 250 ms delay) and --directIO (no kernel page cache), so that most of the data lives only on S3; ` +
      "MOUNT/file exported by nbdkit file. s3backer acknowledges a write once it is in its RAM cache, Keel once it is in the local write buffer and the peer router's DTL",
    unavailable: async () => (await missingProgram('s3backer')) ?? (await missingProgram('nbdkit')) ?? (existsSync('/dev/fuse') ? undefined : 'no /dev/fuse'),
    start: startS3backer,
  },
];

/** nbdkit memory behind `count` relays in a chain (fio connects to the last one started). */
async function startRelayChain(context: TargetContext, count: number): Promise<RunningTarget> {
  const server = await startNbdkit('nbdkit memory (relayed)', [`size=${context.deviceBytes}`], 'memory');
  const relays: TrackedChild[] = [];
  const stop = async () => {
    for (const relay of relays.reverse()) await stopTracked(relay, stopGraceMs);
    await stopTracked(server.child, stopGraceMs);
  };
  try {
    let port = new URL(server.uri).port;
    for (let index = 1; index <= count; index++) {
      const relay = spawnTracked(`node relay ${index}`, ...placed('server', process.execPath, ['--import', 'tsx', relayScript, port]));
      relays.push(relay);
      const output = await waitForOutput(relay, /relay listening on 127\.0\.0\.1:(\d+)/, startTimeoutMs);
      port = /relay listening on 127\.0\.0\.1:(\d+)/.exec(output)![1];
    }
    // Relay 1 is the one fio connects to (where Keel has its edge), the last one the one before nbdkit.
    const chain: Array<[string, TrackedChild]> = relays.map((relay, index): [string, TrackedChild] => [`relay ${count - index}`, relay]).reverse();
    const processes = async () => rolesOf([...chain, ['nbdkit', server.child]]);
    return { uri: () => `nbd://127.0.0.1:${port}/`, processes, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

/** Role and pid of each child still running, in the order given. */
function rolesOf(children: ReadonlyArray<[string, TrackedChild]>): RoleProcess[] {
  return children.filter(([, child]) => child.process.pid !== undefined && child.process.exitCode === null).map(([role, child]) => ({ role, pid: child.process.pid! }));
}

async function startKeel(context: TargetContext, onS3: boolean): Promise<RunningTarget> {
  const s3 = onS3 ? await startS3rver(context.workDir, 'keel') : undefined;
  try {
    const dataDir = path.join(context.workDir, 'keel-data');
    const port = await freePort();
    const scoSize = onS3 ? keelS3ScoSize : context.scoSize;
    const args = [keelBin, 'up', '--data', dataDir, '--port', String(port), '--volume-size', `${context.deviceBytes / 2 ** 20}M`, '--sco-size', scoSize, ...keelUpPlacementArgs()];
    if (s3) args.push('--s3', `${s3.endpoint}/keel`, ...(await keelS3BufferArgs(context)));
    else args.push(...(await keelLocalBufferArgs(context)), ...(await keelLocalRamCacheArgs(context)));
    const env = { ...process.env, ...s3Credentials, KEEL_LOG_PRETTY: '0', KEEL_LOG_LEVEL: process.env.KEEL_LOG_LEVEL ?? 'warn' };
    const up = spawnTracked(onS3 ? 'keel up --s3' : 'keel up', process.execPath, args, env);
    const stop = async () => {
      await stopTracked(up, stopGraceMs);
      if (s3) await stopTracked(s3.child, stopGraceMs);
    };
    try {
      await waitForOutput(up, /Keel is up/, startTimeoutMs);
    } catch (err) {
      await stop();
      throw err;
    }
    return {
      uri: () => `nbd://127.0.0.1:${port}/demo`,
      processes: async () => [...(await keelProcesses(dataDir)), ...(s3 ? rolesOf([['s3rver', s3.child]]) : [])],
      backendPid: s3?.child.process.pid,
      makeCold: () => restartOwnerCold(dataDir, `nbd://127.0.0.1:${port}/demo`),
      settle: async (waitMaxMs) => {
        // The background scrubber would otherwise collect the previous job's garbage at its next minute
        // tick, in the middle of a job: scrub now, then let the SCOs it wrote reach the backend too.
        const startMs = Date.now();
        const scrubbed = await keelScrub(dataDir, 'demo', waitMaxMs);
        const addresses = await keelStatusAddresses(dataDir);
        const uploads = await settleUntil(() => keelUploadsPending(addresses), Math.max(0, waitMaxMs - (Date.now() - startMs)));
        const pending = [scrubbed, uploads.pending].filter((part) => part !== undefined).join(', then ');
        return { waitedMs: Date.now() - startMs, quiet: uploads.quiet, ...(pending ? { pending } : {}) };
      },
      ...(onS3 ? { defragment: (waitMaxMs: number) => keelDefragment(dataDir, 'demo', waitMaxMs) } : {}),
      logTail: (lines) => up.output().trimEnd().split('\n').slice(-lines).join('\n'),
      stop,
    };
  } catch (err) {
    if (s3) await stopTracked(s3.child, stopGraceMs);
    throw err;
  }
}

/**
 * A write buffer far smaller than the region makes the router evict uploaded SCOs, so the cold reads
 * after a restart go to the backend (the read cache starts empty). Needs `keel up --write-buffer`.
 */
async function keelS3BufferArgs(context: TargetContext): Promise<string[]> {
  if (!(await keelUpHelp()).includes('--write-buffer')) return [];
  return ['--write-buffer', `${keelS3WriteBufferBytes(context.regionBytes) / 2 ** 20}M`];
}

/**
 * Keel on local ASDs: a write buffer large enough that nothing the run writes (about 5x the region in
 * full mode: fill, 20 s of 1M writes, the 4k writes) is evicted before the read jobs, so "cache hit"
 * reads are cache hits and the column measures the local data path. With the 1 GiB default, a full run
 * evicted about half of the region's live clusters and the "cache hit" job read them from the ASDs.
 * Bounded caches in front of a backend are what the Keel on S3 column (and s3backer) measure.
 */
async function keelLocalBufferArgs(context: TargetContext): Promise<string[]> {
  if (!(await keelUpHelp()).includes('--write-buffer')) return [];
  return ['--write-buffer', `${Math.max(1024, (8 * context.regionBytes) / 2 ** 20)}M`];
}

/**
 * Keel on local ASDs: a RAM cache (router/cluster-ram-cache.ts) that holds the region twice over, for the
 * same reason as the write buffer above: the "cache hit" job should find its clusters cached, here in the
 * routers' RAM tier (the default, 256 MiB, holds a quarter of the full mode's region). Keel on S3 keeps the default.
 */
async function keelLocalRamCacheArgs(context: TargetContext): Promise<string[]> {
  if (!(await keelUpHelp()).includes('--ram-cache')) return [];
  return ['--ram-cache', `${(2 * context.regionBytes) / 2 ** 20}M`];
}

/** Keel on S3's write buffer: 1/8 of the region, but at least the router's minimum of 8 SCOs. s3backer's block cache gets the same bytes. */
function keelS3WriteBufferBytes(regionBytes: number): number {
  const minimumBytes = keelS3WriteBufferScos * Number.parseInt(keelS3ScoSize, 10) * 2 ** 20;
  return Math.max(minimumBytes, regionBytes / 8);
}

/**
 * Restarts the router owning `demo` (SIGTERM; `keel up` restarts it, and the recovered driver starts with
 * an empty in-memory cache), then asks the kernel to drop the page cache of that volume's files
 * (`dd iflag=nocache count=0` = posix_fadvise DONTNEED on the whole file), so reads come from disk — or
 * from the backend when the router no longer holds the SCO locally.
 */
async function restartOwnerCold(dataDir: string, uri: string): Promise<string> {
  const owner = await ownerOf(dataDir);
  const killedMs = Date.now();
  process.kill(owner.pid, 'SIGTERM');
  await waitFor(() => !isAlive(owner.pid), startTimeoutMs, () => `router ${owner.id} (pid ${owner.pid}) did not exit on SIGTERM`);
  const exitedMs = Date.now();
  let restarted: { id: string; pid: number } | undefined;
  await waitFor(
    async () => {
      const now = await ownerOf(dataDir).catch(() => undefined);
      if (now && now.pid !== owner.pid && now.state === 'up') restarted = now;
      return restarted !== undefined;
    },
    startTimeoutMs,
    () => `router ${owner.id} owning demo did not come back within ${startTimeoutMs} ms`,
  );
  const upMs = Date.now();
  // "Cold" means an empty cache, not a closed volume: open it once (its TLogs replayed) before the timed
  // reads, and drop the page cache after that. A volume with much data on S3 can take longer to open than
  // one NBD handshake waits, hence the retries.
  const attempts = await openOnce(uri, openWaitMaxMs);
  const openMs = Date.now();
  const dropped = await dropPageCache(path.join(dataDir, 'routers'));
  return (
    `owner router ${owner.id} (pid ${owner.pid}) got SIGTERM and exited in ${seconds(exitedMs - killedMs)} s; ` +
    `router ${restarted!.id} owned demo again as pid ${restarted!.pid} ${seconds(upMs - exitedMs)} s later; ` +
    `the volume opened ${seconds(openMs - upMs)} s after that (${attempts} NBD connection${attempts === 1 ? '' : 's'}); page cache dropped for ${dropped} files`
  );
}

const openWaitMaxMs = 180_000;

/** Connects with nbdinfo until the export opens; returns how many connections it took. */
async function openOnce(uri: string, waitMaxMs: number): Promise<number> {
  const deadline = Date.now() + waitMaxMs;
  for (let attempt = 1; ; attempt++) {
    try {
      await execFileAsync('nbdinfo', ['--size', uri], { timeout: 60_000, killSignal: 'SIGKILL' });
      return attempt;
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`${uri} did not open within ${waitMaxMs / 1000} s: ${(err as Error).message.split('\n')[0]}`);
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
}

const settlePollMs = 250;

/** Polls `pending` (a description of outstanding work, or undefined when there is none) until it is done or waitMaxMs passes. */
async function settleUntil(pending: () => Promise<string | undefined>, waitMaxMs: number): Promise<Settled> {
  const startMs = Date.now();
  const first = await pending();
  let now = first;
  while (now !== undefined && Date.now() - startMs < waitMaxMs) {
    await new Promise((resolve) => setTimeout(resolve, settlePollMs));
    now = await pending();
  }
  return { waitedMs: Date.now() - startMs, quiet: now === undefined, pending: first };
}

interface UploadCounters {
  scosQueued: number;
  scosUploading: number;
  tlogsQueued: number;
  tlogsWaitingForOpenSco?: number;
}

/** The management addresses of the routers that are up (`keel router list`). */
async function keelStatusAddresses(dataDir: string): Promise<string[]> {
  const routers = await keelJson<Array<{ state: string; mgmtAddress: string }>>(['router', 'list', '--json', '--data', dataDir]);
  return routers.filter((r) => r.state === 'up' && r.mgmtAddress !== '-').map((r) => r.mgmtAddress);
}

/** SCOs and TLogs not yet on the backend, summed over the routers' volumes (GET /status), or undefined when none. */
async function keelUploadsPending(statusAddresses: readonly string[]): Promise<string | undefined> {
  let scos = 0;
  let tlogs = 0;
  for (const address of statusAddresses) {
    const response = await fetch(`http://${address}/status`, { signal: AbortSignal.timeout(10_000) });
    const status = (await response.json()) as { volumes?: Array<{ stats: { backend?: UploadCounters } }> };
    for (const volume of status.volumes ?? []) {
      const b = volume.stats.backend;
      if (!b) continue;
      scos += b.scosQueued + b.scosUploading;
      // A TLog waiting for the open SCO to fill waits for writes, not for the backend.
      tlogs += b.tlogsQueued - (b.tlogsWaitingForOpenSco ?? 0);
    }
  }
  return scos + tlogs === 0 ? undefined : `${scos} SCOs and ${tlogs} TLogs to upload`;
}

/** Volume demo's record (`keel volume info`) and the registered routers (`keel router list`). */
async function demoAndRouters(dataDir: string): Promise<{ info: { owner: string; dtlPeer?: string }; routers: Array<{ id: string; pid: number; state: string }> }> {
  const info = await keelJson<{ owner: string; dtlPeer?: string }>(['volume', 'info', 'demo', '--json', '--data', dataDir]);
  const routers = await keelJson<Array<{ id: string; pid: number; state: string }>>(['router', 'list', '--json', '--data', dataDir]);
  return { info, routers };
}

/** The edge, then demo's owner and DTL peer, then any other router, each named by its part. */
async function keelProcesses(dataDir: string): Promise<RoleProcess[]> {
  const { info, routers } = await demoAndRouters(dataDir);
  const roleOf = (id: string) => (id === info.owner ? `owner ${id}` : id === info.dtlPeer ? `DTL peer ${id}` : `router ${id}`);
  const rank = (id: string) => (id === info.owner ? 0 : id === info.dtlPeer ? 1 : 2);
  const edge = findProcess(['keel.js', 'edge', '--data', dataDir]);
  const up = routers.filter((r) => r.state === 'up').sort((a, b) => rank(a.id) - rank(b.id));
  return [...(edge !== undefined ? [{ role: 'edge', pid: edge }] : []), ...up.map((r) => ({ role: roleOf(r.id), pid: r.pid }))];
}

async function ownerOf(dataDir: string): Promise<{ id: string; pid: number; state: string }> {
  const { info, routers } = await demoAndRouters(dataDir);
  const row = routers.find((r) => r.id === info.owner);
  if (!row) throw new Error(`volume demo has no registered owner (${info.owner})`);
  return row;
}

/** Runs `keel scrub`: what it collected ("a scrub (3 SCOs deleted, 1200 clusters moved)"), or undefined if nothing. */
async function keelScrub(dataDir: string, volume: string, timeoutMs: number): Promise<string | undefined> {
  const report = await keelJson<{ scosDeleted: number; clustersRewritten: number; durationMs: number }>(['scrub', volume, '--json', '--data', dataDir], Math.max(timeoutMs, 30_000));
  if (report.scosDeleted === 0 && report.clustersRewritten === 0) return undefined;
  return `a scrub (${report.scosDeleted} SCOs deleted, ${report.clustersRewritten} clusters moved, ${(report.durationMs / 1000).toFixed(1)} s)`;
}

/** Runs `keel scrub --defrag`: "256 extents (65536 clusters) rewritten in LBA order in 8.8 s". */
async function keelDefragment(dataDir: string, volume: string, timeoutMs: number): Promise<string> {
  type DefragReport = { extentsDefragmented: number; clustersDefragmented: number; extentsFragmentedLeft: number; durationMs: number };
  const report = await keelJson<DefragReport>(['scrub', volume, '--defrag', '--json', '--data', dataDir], timeoutMs);
  const left = report.extentsFragmentedLeft > 0 ? `, ${report.extentsFragmentedLeft} fragmented extents left` : '';
  return `${report.extentsDefragmented} extents (${report.clustersDefragmented} clusters) rewritten in LBA order in ${(report.durationMs / 1000).toFixed(1)} s${left}`;
}

/** Runs a `keel` command that prints JSON, killed after `timeoutMs`. */
async function keelJson<T>(args: string[], timeoutMs = 30_000): Promise<T> {
  const { stdout } = await execFileAsync(process.execPath, [keelBin, ...args], { timeout: timeoutMs, killSignal: 'SIGKILL', env: { ...process.env, KEEL_LOG_PRETTY: '0' } });
  return JSON.parse(stdout) as T;
}

async function dropPageCache(directory: string): Promise<number> {
  const files = await listFiles(directory);
  for (const file of files) await execFileAsync('dd', [`if=${file}`, 'iflag=nocache', 'count=0', 'status=none'], { timeout: 10_000, killSignal: 'SIGKILL' });
  return files.length;
}

async function listFiles(directory: string): Promise<string[]> {
  const entries = await readdir(directory, { withFileTypes: true, recursive: true });
  return entries.filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name));
}

/**
 * s3backer sized like Keel on S3, so that both hold the same bytes in front of S3 and the rest of the
 * region must live on S3 (by default s3backer caches 1000 blocks, 1 GB with 1 MiB blocks: the whole
 * region, in RAM, and the figures would measure that RAM):
 * - --blockCacheSize: Keel on S3's write buffer in blocks (1/8 of the region, at least 32 MiB). The cache
 *   holds clean and dirty blocks alike, so once the fill has written the whole region it is full and every
 *   timed job must evict (writing dirty blocks back to S3) to make room;
 * - --directIO: without it s3backer mounts with -o kernel_cache and the kernel's page cache keeps every
 *   page of MOUNT/file it has seen, a second cache with no bound but the machine's RAM;
 * - write-back (--blockCacheWriteDelay 250 ms, 20 --blockCacheThreads, no --blockCacheMaxDirty) and the
 *   MD5 cache / --minWriteDelay stay at s3backer's defaults: that is how s3backer is run.
 */
function s3backerArgs(context: TargetContext, endpoint: string, mountDir: string): string[] {
  const cacheBlocks = Math.max(1, Math.floor(keelS3WriteBufferBytes(context.regionBytes) / s3backerBlockBytes));
  return [
    `--baseURL=${endpoint}/`,
    '--accessId=S3RVER',
    '--accessKey=S3RVER',
    `--size=${context.deviceBytes}`,
    `--blockSize=${s3backerBlockBytes / 2 ** 10}K`,
    `--blockCacheSize=${cacheBlocks}`,
    '--directIO',
    '--authVersion=aws4',
    '-f',
    's3backer',
    mountDir,
  ];
}

async function startS3backer(context: TargetContext): Promise<RunningTarget> {
  const s3 = await startS3rver(context.workDir, 's3backer');
  const mountDir = path.join(context.workDir, 's3backer-mount');
  await mkdir(mountDir);
  let fuse: TrackedChild | undefined;
  let server: { child: TrackedChild; uri: string } | undefined;

  const mount = async () => {
    trackMount(mountDir);
    fuse = spawnTracked('s3backer', ...placed('server', 's3backer', s3backerArgs(context, s3.endpoint, mountDir)));
    await waitFor(() => isMounted(mountDir) && existsSync(path.join(mountDir, 'file')), startTimeoutMs, () => `s3backer did not mount: ${fuse!.output()}`);
    server = await startNbdkit('nbdkit file (s3backer)', [path.join(mountDir, 'file')], 'file');
  };
  // s3backer writes its dirty blocks back to S3 when unmounted: SIGTERM and give it time.
  const unmount = async () => {
    if (server) await stopTracked(server.child, stopGraceMs);
    if (fuse) await stopTracked(fuse, stopGraceMs);
    unmountLazily(mountDir);
    if (!isMounted(mountDir)) untrackMount(mountDir);
    server = undefined;
    fuse = undefined;
  };
  const stop = async () => {
    await unmount();
    await stopTracked(s3.child, stopGraceMs);
  };
  try {
    await mount();
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    uri: () => server!.uri,
    processes: async () => rolesOf([['nbdkit', server!.child], ['s3backer', fuse!], ['s3rver', s3.child]]),
    backendPid: s3.child.process.pid,
    makeCold: async () => {
      const stats = await s3backerStats(mountDir);
      await unmount();
      await mount();
      return `s3backer unmounted (dirty blocks written back) and mounted again: its block cache starts empty. Before that, over the fill and the timed jobs: ${stats}`;
    },
    settle: (waitMaxMs) => settleUntil(() => s3backerDirty(mountDir), waitMaxMs),
    stop,
  };
}

/** s3backer's block_cache_dirty_ratio (MOUNT/stats) when it is above zero. */
async function s3backerDirty(mountDir: string): Promise<string | undefined> {
  const text = await readFile(path.join(mountDir, 'stats'), 'utf8');
  const ratio = Number(/^block_cache_dirty_ratio\s+(\S+)/m.exec(text)?.[1] ?? 0);
  return ratio > 0 ? `a block cache ${(ratio * 100).toFixed(1)}% dirty` : undefined;
}

/** A few counters of s3backer's MOUNT/stats file, showing how much of the work went to S3. */
async function s3backerStats(mountDir: string): Promise<string> {
  const wanted = ['http_gets', 'http_puts', 'block_cache_current_size', 'block_cache_read_hit_ratio', 'block_cache_write_hit_ratio', 'md5_cache_write_delays', 'md5_cache_full_delays'];
  try {
    const text = await readFile(path.join(mountDir, 'stats'), 'utf8');
    const values = new Map(text.split('\n').map((line) => /^(\S+)\s+(.*\S)\s*$/.exec(line)).filter((m) => m !== null).map((m) => [m[1], m[2]]));
    return wanted.filter((key) => values.has(key)).map((key) => `${key} ${values.get(key)}`).join(', ');
  } catch (err) {
    return `(MOUNT/stats unreadable: ${(err as Error).message})`;
  }
}

async function startS3rver(workDir: string, bucket: string): Promise<{ child: TrackedChild; endpoint: string }> {
  const directory = path.join(workDir, `s3rver-${bucket}`);
  await mkdir(directory);
  const child = spawnTracked(`s3rver (${bucket})`, ...placed('server', process.execPath, [s3rverBin, '-d', directory, '-a', '127.0.0.1', '-p', '0', '--silent', '--configure-bucket', bucket]));
  try {
    const output = await waitForOutput(child, /listening on 127\.0\.0\.1:(\d+)/, startTimeoutMs);
    const port = /listening on 127\.0\.0\.1:(\d+)/.exec(output)![1];
    return { child, endpoint: `http://127.0.0.1:${port}` };
  } catch (err) {
    await stopTracked(child, stopGraceMs);
    throw err;
  }
}

async function startNbdkit(name: string, pluginArgs: string[], plugin: 'memory' | 'file'): Promise<{ child: TrackedChild; uri: string }> {
  const port = await freePort();
  const child = spawnTracked(name, ...placed('server', 'nbdkit', ['-f', '-i', '127.0.0.1', '-p', String(port), plugin, ...pluginArgs]));
  try {
    await waitFor(() => canConnect(port), startTimeoutMs, () => `${name} did not listen: ${child.output()}`);
  } catch (err) {
    await stopTracked(child, stopGraceMs);
    throw err;
  }
  return { child, uri: `nbd://127.0.0.1:${port}/` };
}

let keelUpHelpText: Promise<string> | undefined;
function keelUpHelp(): Promise<string> {
  keelUpHelpText ??= execFileAsync(process.execPath, [keelBin, 'up', '--help'], { timeout: 30_000, killSignal: 'SIGKILL' }).then(
    (r) => r.stdout,
    () => '',
  );
  return keelUpHelpText;
}

async function missingProgram(program: string): Promise<string | undefined> {
  try {
    await execFileAsync('sh', ['-c', `command -v ${program}`], { timeout: 5000 });
    return undefined;
  } catch {
    return `${program} is not installed (apt-get install ${program})`;
  }
}


function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port }, () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

async function waitFor(condition: () => boolean | Promise<boolean>, timeoutMs: number, describe: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await condition()) return;
    await sleep(100);
  }
  throw new Error(describe());
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

const seconds = (ms: number) => (ms / 1000).toFixed(1);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
