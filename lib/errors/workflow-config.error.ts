import { WorkflowError } from './workflow.error.js';

/** A setup mistake found at startup or on first use; the message says what to fix. */
export class WorkflowConfigError extends WorkflowError {}
