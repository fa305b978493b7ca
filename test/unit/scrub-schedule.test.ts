import { describe, expect, it } from 'vitest';
import { ScrubSchedule } from '../../router/scrub-schedule.ts';
import type { ScrubReport } from '../../router/scrubber.ts';

const report: ScrubReport = {
  volume: 'v',
  scosBefore: 3,
  bytesBefore: 300,
  scosAfter: 2,
  bytesAfter: 200,
  scosDeleted: 1,
  scosRewritten: 1,
  clustersRewritten: 4,
  scosPending: 0,
  durationMs: 5,
};

describe('ScrubSchedule', () => {
  it('skips a volume while no user change, snapshot change or reopen happened since a scrub left it clean', () => {
    const schedule = new ScrubSchedule<object>();
    const driver = {};
    const state = { userMapChanges: 7, snapshotIds: [1, 2] };
    expect(schedule.isDue(driver, state)).toBe(true); // never scrubbed
    schedule.scrubbed(driver, state, report);
    expect(schedule.isDue(driver, { userMapChanges: 7, snapshotIds: [1, 2] })).toBe(false);
    expect(schedule.isDue(driver, { userMapChanges: 8, snapshotIds: [1, 2] })).toBe(true); // a write since
    expect(schedule.isDue(driver, { userMapChanges: 7, snapshotIds: [2] })).toBe(true); // a snapshot deleted
    expect(schedule.isDue({}, state)).toBe(true); // the volume was reopened: a new driver
  });

  it('runs again after a scrub that had to defer deletions', () => {
    const schedule = new ScrubSchedule<object>();
    const driver = {};
    const state = { userMapChanges: 1, snapshotIds: [] };
    schedule.scrubbed(driver, state, report);
    schedule.scrubbed(driver, state, { ...report, scosPending: 2 });
    expect(schedule.isDue(driver, state)).toBe(true);
  });
});
