import { WorkflowError } from './workflow.error.js';

export class InvalidRunIdError extends WorkflowError {
  constructor(readonly runId: unknown) {
    super(
      `Invalid run id ${JSON.stringify(String(runId)).slice(0, 160)}: a run id must match ^[A-Za-z0-9_-]{1,128}$. ` +
        `Omit runId to have a time-ordered one generated.`,
    );
  }
}
