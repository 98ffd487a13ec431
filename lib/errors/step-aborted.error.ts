import { WorkflowError } from './workflow.error.js';

export type StepAbortReason = 'cancelled' | 'timeout' | 'shutdown' | 'lease-lost';

/** The `reason` of an aborted `step.signal`: why the runtime stopped waiting for this step. */
export class StepAbortedError extends WorkflowError {
  constructor(
    readonly reason: StepAbortReason,
    detail: string,
  ) {
    super(detail);
  }
}
