import { WorkflowError } from './workflow.error.js';

export class RunNotFoundError extends WorkflowError {
  constructor(readonly runId: string) {
    super(`No run "${runId}": it was never submitted (or its transaction has not committed), or retention removed it.`);
  }
}
