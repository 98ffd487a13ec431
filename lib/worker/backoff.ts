import type { BackoffPolicy } from '../interfaces/backoff-policy.interface.js';

export type { BackoffPolicy };

/**
 * Delay before delivery `attempts + 1` after `attempts` failed ones: exponential from
 * `baseMs`, capped at `maxMs`, with "equal jitter" (half fixed, half random) so
 * retries of a burst of failures spread out without ever retrying immediately.
 */
export function backoffDelay(policy: BackoffPolicy, attempts: number, random: () => number = Math.random): number {
  const exp = Math.min(policy.maxMs, policy.baseMs * 2 ** Math.max(0, Math.min(attempts - 1, 30)));
  const half = exp / 2;
  return Math.round(half + random() * half);
}
