import { SetMetadata } from '@nestjs/common';
import { STEP_RUNNER_METADATA } from '../workflow.constants.js';
import type { StepRunnerOptions } from '../interfaces/step-runner.interface.js';
import type { Step } from '../interfaces/step.interface.js';
import type { StepOutcome } from '../outcomes/step-outcome.js';

export interface StepRunnerMetadata {
  name: string;
  options: StepRunnerOptions;
}

/**
 * The runner's contract. Declared beside the decorator under the same name so that one
 * import serves both `@StepRunner('x')` and `class X implements StepRunner`: a separate
 * interface re-exported next to the function would be shadowed by it (TS2749).
 */
export interface StepRunner<P = any, R = any> {
  runStep(step: Step<P>): Promise<StepOutcome<P, R>> | StepOutcome<P, R>;
}

/**
 * Marks a provider as the runner of workflow `name`. The class implements
 * `runStep(step)` and is an ordinary provider: it may inject anything.
 */
export function StepRunner(name: string, options: StepRunnerOptions = {}): ClassDecorator {
  return SetMetadata<string, StepRunnerMetadata>(STEP_RUNNER_METADATA, { name, options });
}
