import { WorkflowError } from './workflow.error.js';

/** A value that is not plain JSON (BigInt, cycle, function, undefined, NaN, Map...). */
export class InvalidPayloadError extends WorkflowError {
  constructor(
    readonly what: string,
    reason: string,
  ) {
    super(
      `The ${what} is not a JSON value: ${reason}. Inputs, payloads and results must be JSON (send bytes as base64).`,
    );
  }
}
