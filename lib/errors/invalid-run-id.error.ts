import { WorkflowError } from './workflow.error.js';

export class InvalidRunIdError extends WorkflowError {
  constructor(readonly runId: unknown) {
    super(
      `Invalid run id ${typeof runId === 'string' ? JSON.stringify(runId).slice(0, 160) : `(a ${runId === null ? 'null' : typeof runId}, not a string)`}: ` +
        'a run id is a string matching ^[A-Za-z0-9_-]{1,128}$. ' +
        `Omit runId to have a time-ordered one generated.`,
    );
  }
}
