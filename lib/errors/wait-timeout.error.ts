import { WorkflowError } from './workflow.error.js';

export class WaitTimeoutError extends WorkflowError {
  constructor(
    readonly runId: string,
    readonly timeoutMs: number,
  ) {
    super(`Run "${runId}" did not finish within ${timeoutMs} ms. It keeps running; wait again or check status().`);
  }
}
