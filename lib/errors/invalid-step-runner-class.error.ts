import { WorkflowConfigError } from './workflow-config.error.js';

/** A class has @StepRunner but no runStep(step) method. */
export class InvalidStepRunnerClassError extends WorkflowConfigError {}
