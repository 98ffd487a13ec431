export type StepErrorKind = 'transient' | 'permanent';

/**
 * Thrown by a runner or terminal handler. `transient` is retried with backoff until
 * the attempts run out; `permanent` dead-letters at once. Any other thrown value
 * counts as transient.
 */
export class StepError extends Error {
  constructor(
    message: string,
    readonly kind: StepErrorKind,
  ) {
    super(message);
    this.name = 'StepError';
  }

  static transient(message: string): StepError {
    return new StepError(message, 'transient');
  }

  static permanent(message: string): StepError {
    return new StepError(message, 'permanent');
  }
}
