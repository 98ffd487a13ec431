import type { BackoffOptions } from './workflow-module-options.interface.js';

export interface StepRunnerOptions {
  maxAttempts?: number;
  backoff?: BackoffOptions;
  priority?: number;
  /** Steps of this workflow in flight at once in one process. Default: the worker's concurrency. */
  concurrency?: number;
  /** A step still running after this long is aborted and counted as a transient failure. */
  timeoutMs?: number;
  /**
   * Steps of one `concurrencyKey` running at once, across every process on the database
   * (runs without a key are not limited by it). Declare the same value in every process.
   */
  keyConcurrency?: number;
  /**
   * At most `limit` steps start in any `periodMs` window, across every process: for the
   * workflow as a whole, or with `perKey` for each `concurrencyKey` (runs without a key
   * then share one budget). A held-back step uses no attempt and no worker slot.
   */
  rateLimit?: RateLimit;
}

export interface RateLimit {
  limit: number;
  periodMs: number;
  perKey?: boolean;
}

// The interface lives with the decorator (declaration merging); kept importable from here.
export type { StepRunner } from '../decorators/step-runner.decorator.js';
