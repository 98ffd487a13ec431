import { WorkflowConfigError } from './workflow-config.error.js';

/** Two provider classes declare @StepRunner with the same workflow name. */
export class DuplicateWorkflowError extends WorkflowConfigError {}
