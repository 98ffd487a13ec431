import { WorkflowError } from './workflow.error.js';

/** A malformed RunSpec field other than the run id, a header name or the input. */
export class InvalidRunSpecError extends WorkflowError {}
