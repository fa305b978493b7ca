/**
 * The V8 flags the edge and the routers run with (docs/benchmark-log.md, "The edge's garbage collector had
 * two steady states"). Heap sizes are fixed when the process starts, so these must be on node's command
 * line: `keel up` passes them to its children, and a process started without them says so in its log.
 */
import os from 'node:os';
import type { Logger } from './logger.ts';

export type TunedRole = 'edge' | 'router';

/** Hosts with at most this many cores run the garbage collector on the main thread. */
const singleThreadedGcCoresMax = 2;

/*
 * V8 scavenges with helper threads by default. On a small host those threads compete for the same cores
 * as the edge, the routers and the NBD client, and every scavenge wakes them: measured on 2 cores at 4k
 * QD32, the edge spent 24-28 us of CPU per write and 20 per read with helper threads against 17-18 and
 * 13-15 with --single-threaded-gc.
 */

/*
 * A router allocates socket chunks, DTL records and reply buffers outside V8's heap at the rate data
 * flows, and with V8's small starting heap limits that started a full mark-compact every 150-250 ms
 * (--trace-gc: 57 during an 8 s 4k write run across the owner and its DTL peer). Starting the old space
 * at 256 MiB cut that to 5, and the DTL peer's CPU per write from 29 to 17 us. The heap may now grow to
 * that size before it is collected; after 15 s of 4k writes the routers' RSS was 10-20 MiB higher (owner
 * 410 -> 419 MiB, most of it the DTL backlog).
 */
const routerInitialOldSpaceMiB = 256;

/*
 * With V8's default limits the edge fell, at random, into a state where its garbage collector took a large
 * share of its CPU under 4k QD32 load. Normally nothing outlives a scavenge: 55-75 KB survive each, none is
 * promoted, and 8 s of reads see no mark-compact. But a mark-compact during the load keeps, through
 * incremental marking, the requests that pass while it runs; then 1.4-2.7 MB survived each scavenge, was
 * promoted, filled the small old space and started the next mark-compact 60-190 ms later, for as long as
 * the load lasted. In 6 alternating 8 s randread runs each (--trace-gc-nvp), V8's defaults ran 10-48
 * mark-compacts in 5 runs, paused 145-911 ms and did 58.0-73.3k IOPS; 64 MiB ran none in any run (nor in
 * 6 earlier randread and randwrite runs), paused 144-151 ms and did 70.7-77.8k. The edge's RSS under load
 * fell from 174-186 to 124-132 MiB, as that state also held socket chunks until a mark-compact. 32 MiB
 * still fell into it once in 3 runs.
 */
const edgeInitialOldSpaceMiB = 64;

/** The V8 flags for a process of `role` on this host. */
export function v8FlagsFor(role: TunedRole, cores = os.availableParallelism()): string[] {
  const flags = cores <= singleThreadedGcCoresMax ? ['--single-threaded-gc'] : [];
  const oldSpaceMiB = role === 'router' ? routerInitialOldSpaceMiB : edgeInitialOldSpaceMiB;
  flags.push(`--initial-old-space-size=${oldSpaceMiB}`);
  return flags;
}

/** The flags of v8FlagsFor(role) that `execArgv` does not set (any value of a sized flag counts as set). */
export function missingV8Flags(role: TunedRole, execArgv: readonly string[] = process.execArgv): string[] {
  const given = new Set(execArgv.map(flagName));
  return v8FlagsFor(role).filter((flag) => !given.has(flagName(flag)));
}

/** A process started by hand (not by `keel up`) without the flags logs how to start it with them. */
export function warnIfUntuned(role: TunedRole, logger: Logger): void {
  const missing = missingV8Flags(role);
  if (missing.length === 0) return;
  logger.warn(
    { missing, start: `node ${v8FlagsFor(role).join(' ')} bin/keel.js ${role} ...` },
    `started without the V8 flags the ${role} is tuned with; its garbage collector may cost up to a fifth of its CPU under load (docs/benchmark-log.md)`,
  );
}

function flagName(flag: string): string {
  return flag.split('=')[0]!.replaceAll('_', '-');
}
