import { WorkflowError } from './workflow.error.js';

/**
 * `step.transaction()` found this delivery no longer owns its step: the lease expired and
 * another delivery took it, or the runtime took the step from its runner (cancel, timeout,
 * shutdown). Nothing the transaction wrote was committed.
 */
export class LeaseLostError extends WorkflowError {
  constructor(
    readonly jobId: string,
    detail: string,
  ) {
    super(`Step ${jobId} is no longer this delivery's to settle (${detail}); nothing was written.`);
  }
}
