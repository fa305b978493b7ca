import { describe, expect, it } from 'vitest';
import { ScrubSchedule } from '../../router/scrub-schedule.ts';
import type { ScrubReport } from '../../router/scrubber.ts';

const nothingFound: ScrubReport = {
  volume: 'v',
  scosBefore: 3,
  bytesBefore: 300,
  scosAfter: 3,
  bytesAfter: 300,
  scosDeleted: 0,
  scosRewritten: 0,
  clustersRewritten: 0,
  scosPending: 0,
  durationMs: 5,
};

describe('ScrubSchedule', () => {
  it('skips a volume only while it is as a scrub that found nothing left it', () => {
    const schedule = new ScrubSchedule<object>();
    const driver = {};
    const state = { mapChanges: 7, snapshotIds: [1, 2] };
    expect(schedule.isDue(driver, state)).toBe(true); // never scrubbed
    schedule.scrubbed(driver, state, nothingFound);
    expect(schedule.isDue(driver, { mapChanges: 7, snapshotIds: [1, 2] })).toBe(false);
    expect(schedule.isDue(driver, { mapChanges: 8, snapshotIds: [1, 2] })).toBe(true); // a write since
    expect(schedule.isDue(driver, { mapChanges: 7, snapshotIds: [2] })).toBe(true); // a snapshot deleted
    expect(schedule.isDue({}, state)).toBe(true); // the volume was reopened: a new driver
  });

  it('runs again after a scrub that deleted, rewrote or deferred anything', () => {
    const schedule = new ScrubSchedule<object>();
    const driver = {};
    const state = { mapChanges: 1, snapshotIds: [] };
    for (const found of [{ scosDeleted: 1 }, { clustersRewritten: 9 }, { scosPending: 2 }, { backendObjectsDeleted: 1 }]) {
      schedule.scrubbed(driver, state, nothingFound);
      schedule.scrubbed(driver, state, { ...nothingFound, ...found });
      expect(schedule.isDue(driver, state), JSON.stringify(found)).toBe(true);
    }
  });
});
