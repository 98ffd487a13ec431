export type StepOutcome<P = unknown, R = unknown> =
  | { kind: 'continue'; payload: P; delayMs?: number }
  | { kind: 'succeed'; result: R }
  | { kind: 'fail'; reason: string }
  | { kind: 'cancel'; reason: string };

/** Builders for what a runner returns after a step. */
export const StepOutcome = {
  /** Step done; the next step runs now with `payload`. */
  continue<P>(payload: P): StepOutcome<P, never> {
    return { kind: 'continue', payload };
  },
  /** Step done; the next step becomes claimable `delayMs` from now. No worker is held meanwhile. */
  continueAfter<P>(payload: P, delayMs: number): StepOutcome<P, never> {
    return { kind: 'continue', payload, delayMs };
  },
  /** Run succeeded with `result`. */
  succeed<R>(result: R): StepOutcome<never, R> {
    return { kind: 'succeed', result };
  },
  /** Run failed by the runner's verdict (no dead letter). */
  fail(reason: string): StepOutcome<never, never> {
    return { kind: 'fail', reason };
  },
  /** Run cancelled by the runner's verdict (no dead letter). */
  cancel(reason: string): StepOutcome<never, never> {
    return { kind: 'cancel', reason };
  },
};
