import { WorkflowError } from './workflow.error.js';

export class InputMismatchError extends WorkflowError {
  constructor(
    readonly runId: string,
    detail: string,
  ) {
    super(
      `Run "${runId}" already exists with ${detail}. Re-submitting a run id is idempotent only with the same ` +
        `workflow and input; use a new runId for a new run.`,
    );
  }
}
