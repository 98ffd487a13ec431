import { RUN_ID_PATTERN } from '../../lib/workflow.constants.js';
import { ulid } from '../../lib/utils/ulid.js';

describe('ulid', () => {
  it('is 26 characters, a valid run id, and sorts by creation even within one millisecond', () => {
    const ids = Array.from({ length: 5_000 }, () => ulid(1_700_000_000_000));
    expect(new Set(ids).size).toBe(ids.length);
    expect([...ids].sort()).toEqual(ids);
    for (const id of ids.slice(0, 10)) {
      expect(id).toHaveLength(26);
      expect(RUN_ID_PATTERN.test(id)).toBe(true);
    }
    expect(ulid(1_700_000_000_001) > ids[ids.length - 1]).toBe(true);
  });

  it('stays monotonic when the clock steps back', () => {
    const a = ulid(1_800_000_000_000);
    const b = ulid(1_799_999_999_000);
    expect(b > a).toBe(true);
  });
});
