import type { BackoffOptions } from './workflow-module-options.interface.js';

export interface StepRunnerOptions {
  maxAttempts?: number;
  backoff?: BackoffOptions;
  priority?: number;
  /** Steps of this workflow in flight at once in one process. Default: the worker's concurrency. */
  concurrency?: number;
  /** A step still running after this long is aborted and counted as a transient failure. */
  timeoutMs?: number;
}

// The interface lives with the decorator (declaration merging); kept importable from here.
export type { StepRunner } from '../decorators/step-runner.decorator.js';
