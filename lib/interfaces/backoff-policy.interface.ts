/** A resolved backoff: both bounds known. Internal (users give `BackoffOptions`). */
export interface BackoffPolicy {
  baseMs: number;
  maxMs: number;
}
