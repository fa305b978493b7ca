/**
 * Which volumes the background scrubber may skip. A scrub reads every TLog of the volume, lists its
 * backend objects and flushes it: on an idle 1 GiB volume that was a second of router CPU every scrub
 * interval. A scrub leaves a volume clean unless it had to defer deletions (scosPending): then a volume
 * is skipped while no user write, trim or rollback changed its map since that scrub began (the scrub's
 * own rewrites do not count), its snapshots are the same, and its driver is the same one.
 */
import type { ScrubReport } from './scrubber.ts';

/** What identifies a volume's state for this purpose: user map changes of the open driver, and snapshot ids. */
export interface ScrubState {
  userMapChanges: number;
  snapshotIds: readonly number[];
}

export class ScrubSchedule<Driver extends object> {
  /** Weak: a closed driver (the volume moved away) takes its entry with it; its successor starts over. */
  private readonly cleanStates = new WeakMap<Driver, string>();

  isDue(driver: Driver, state: ScrubState): boolean {
    return this.cleanStates.get(driver) !== stateKey(state);
  }

  /** `state` is the volume's state when the scrub began, so changes made during it make the next one due. */
  scrubbed(driver: Driver, state: ScrubState, report: ScrubReport): void {
    if (report.scosPending === 0) this.cleanStates.set(driver, stateKey(state));
    else this.cleanStates.delete(driver);
  }
}

function stateKey(state: ScrubState): string {
  return `${state.userMapChanges} ${state.snapshotIds.join(',')}`;
}
