/**
 * Which volumes the background scrubber may skip. A scrub reads every TLog of the volume, lists its
 * backend objects and flushes it: on a 1 GiB volume that took a third of a core for seconds, every
 * scrub interval, while nothing had changed. So a volume is skipped while it is as the last scrub left
 * it with nothing to do: the same driver, no batch that changed its LBA map since, and the same snapshots.
 * A scrub that deleted, rewrote or deferred anything is followed by another one.
 */
import type { ScrubReport } from './scrubber.ts';

/** What identifies a volume's state for this purpose: map changes of the open driver, and snapshot ids. */
export interface ScrubState {
  mapChanges: number;
  snapshotIds: readonly number[];
}

export class ScrubSchedule<Driver extends object> {
  /** Weak: a closed driver (the volume moved away) takes its entry with it; its successor starts over. */
  private readonly cleanStates = new WeakMap<Driver, string>();

  isDue(driver: Driver, state: ScrubState): boolean {
    return this.cleanStates.get(driver) !== stateKey(state);
  }

  /** `state` is what isDue saw before the scrub began, so changes made during it make the next one due. */
  scrubbed(driver: Driver, state: ScrubState, report: ScrubReport): void {
    const foundNothing = report.scosDeleted === 0 && report.clustersRewritten === 0 && report.scosPending === 0 && (report.backendObjectsDeleted ?? 0) === 0;
    if (foundNothing) this.cleanStates.set(driver, stateKey(state));
    else this.cleanStates.delete(driver);
  }
}

function stateKey(state: ScrubState): string {
  return `${state.mapChanges} ${state.snapshotIds.join(',')}`;
}
