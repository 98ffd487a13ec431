import { Cron } from 'croner';
import * as fc from 'fast-check';
import { latestTick, nextTick } from '../../lib/utils/schedule-spec.js';

/** What croner computes through its time-zone path, the reference for UTC's fixed-offset shortcut. */
const viaTimeZone = (pattern: string, timeZone: string) =>
  new Cron(pattern, { timezone: timeZone, mode: '5-or-6-parts' });

const PATTERNS = [
  '* * * * *',
  '*/15 * * * *',
  '30 2 * * *',
  '0 0 29 2 *',
  '0 9 * * 1-5',
  '0 0 L * *',
  '5 4 1,15 */2 *',
  '* * * * * *',
  '*/2 * * * * *',
  '45 59 23 31 12 *',
];

describe('schedule ticks', () => {
  it("in 'UTC' are the ticks croner computes for timeZone 'UTC' (the fixed-offset shortcut changes nothing)", () => {
    fc.assert(
      fc.property(
        fc.constantFrom(...PATTERNS),
        fc.integer({ min: Date.UTC(1990, 0, 1), max: Date.UTC(2090, 0, 1) }),
        fc.integer({ min: 0, max: 400 * 24 * 3_600_000 }),
        (pattern, at, span) => {
          const ref = viaTimeZone(pattern, 'UTC');
          expect(nextTick(pattern, 'UTC', at)).toBe(ref.nextRun(new Date(at))?.getTime() ?? null);
          // latestTick: the latest tick at or before `now`, not before the due one.
          const due = ref.nextRun(new Date(at))!.getTime();
          const now = due + span;
          const prev = ref.previousRuns(1, new Date(now + 1))[0]?.getTime();
          expect(latestTick(pattern, 'UTC', due, now)).toBe(prev !== undefined && prev > due ? prev : due);
        },
      ),
      { numRuns: 2_000 },
    );
  });

  it('in another zone still follow its daylight-saving changes', () => {
    // 02:30 in Berlin: CET (UTC+1) before 2026-03-29, CEST (UTC+2) after; 02:30 does not exist that day.
    expect(nextTick('30 2 * * *', 'Europe/Berlin', Date.parse('2026-03-27T12:00:00Z'))).toBe(
      Date.parse('2026-03-28T01:30:00Z'),
    );
    expect(nextTick('30 2 * * *', 'Europe/Berlin', Date.parse('2026-03-29T12:00:00Z'))).toBe(
      Date.parse('2026-03-30T00:30:00Z'),
    );
  });
});
