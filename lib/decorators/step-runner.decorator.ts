import { SetMetadata } from '@nestjs/common';
import { STEP_RUNNER_METADATA } from '../workflow.constants.js';
import type { StepRunnerOptions } from '../interfaces/step-runner.interface.js';

export interface StepRunnerMetadata {
  name: string;
  options: StepRunnerOptions;
}

/**
 * Marks a provider as the runner of workflow `name`. The class implements
 * `runStep(step)` and is an ordinary provider: it may inject anything.
 */
export function StepRunner(name: string, options: StepRunnerOptions = {}): ClassDecorator {
  return SetMetadata<string, StepRunnerMetadata>(STEP_RUNNER_METADATA, { name, options });
}
