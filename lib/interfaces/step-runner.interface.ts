import type { BackoffOptions } from './workflow-module-options.interface.js';
import type { Step } from './step.interface.js';
import type { StepOutcome } from '../outcomes/step-outcome.js';

export interface StepRunnerOptions {
  maxAttempts?: number;
  backoff?: BackoffOptions;
  priority?: number;
  /** Steps of this workflow in flight at once in one process. Default: the worker's concurrency. */
  concurrency?: number;
  /** A step still running after this long is aborted and counted as a transient failure. */
  timeoutMs?: number;
}

export interface StepRunner<P = any, R = any> {
  runStep(step: Step<P>): Promise<StepOutcome<P, R>> | StepOutcome<P, R>;
}
