import { backoffDelay } from '../../lib/worker/backoff.js';

describe('backoffDelay', () => {
  const policy = { baseMs: 1_000, maxMs: 300_000 };

  it('doubles per attempt, with jitter in the upper half', () => {
    expect(backoffDelay(policy, 1, () => 0)).toBe(500);
    expect(backoffDelay(policy, 1, () => 1)).toBe(1_000);
    expect(backoffDelay(policy, 2, () => 0)).toBe(1_000);
    expect(backoffDelay(policy, 4, () => 1)).toBe(8_000);
  });

  it('never exceeds maxMs, even for huge attempt counts', () => {
    for (const attempts of [10, 50, 1_000_000]) {
      expect(backoffDelay(policy, attempts, () => 1)).toBe(300_000);
      expect(backoffDelay(policy, attempts, () => 0)).toBe(150_000);
    }
  });

  it('spreads a burst of retries instead of retrying them together', () => {
    const delays = new Set(Array.from({ length: 50 }, () => backoffDelay(policy, 3)));
    expect(delays.size).toBeGreaterThan(10);
    for (const d of delays) {
      expect(d).toBeGreaterThanOrEqual(2_000);
      expect(d).toBeLessThanOrEqual(4_000);
    }
  });
});
