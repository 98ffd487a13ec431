import { WorkflowError } from './workflow.error.js';

export class PayloadTooLargeError extends WorkflowError {
  constructor(
    readonly what: string,
    readonly bytes: number,
    readonly limit: number,
  ) {
    super(
      `The ${what} serializes to ${bytes} bytes, over maxPayloadBytes (${limit}). Store large data elsewhere and ` +
        `pass a reference, or raise maxPayloadBytes (and the server's max_allowed_packet).`,
    );
  }
}
