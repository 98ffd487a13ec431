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
    /** For a transient error: retry after exactly this long instead of the backoff (still an attempt). */
    readonly retryAfterMs?: number,
  ) {
    super(message);
    this.name = 'StepError';
  }

  /** Retried with backoff, or after `retryAfterMs` when given (a provider's Retry-After). */
  static transient(message: string, options: { retryAfterMs?: number } = {}): StepError {
    return new StepError(message, 'transient', options.retryAfterMs);
  }

  static permanent(message: string): StepError {
    return new StepError(message, 'permanent');
  }
}
