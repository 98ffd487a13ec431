import type { ChildSpec } from '../interfaces/run.interface.js';

export type StepOutcome<P = unknown, R = unknown> =
  | { kind: 'continue'; payload: P; delayMs?: number }
  | { kind: 'succeed'; result: R }
  | { kind: 'fail'; reason: string }
  | { kind: 'cancel'; reason: string }
  | { kind: 'wait'; signal: string; payload: P; timeoutMs?: number }
  | { kind: 'spawn'; children: ChildSpec[]; payload: P; failFast?: boolean };

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
  /**
   * Step done; the run waits (no worker slot, no lease) for the signal `name`. The next
   * step runs with `payload` and `step.received` once the signal arrives (one sent earlier
   * counts: the oldest unread one is taken at once), or after `timeoutMs` with
   * `received.timedOut`.
   */
  waitForSignal<P>(name: string, payload: P, options: { timeoutMs?: number } = {}): StepOutcome<P, never> {
    return options.timeoutMs === undefined
      ? { kind: 'wait', signal: name, payload }
      : { kind: 'wait', signal: name, payload, timeoutMs: options.timeoutMs };
  },
  /**
   * Step done; starts `children` (in this step's settling transaction) and waits for all
   * of them to end, holding no worker slot. The next step runs with `payload` and
   * `step.children` (every child's RunOutcome, in spawn order). With `failFast`, the first
   * child that fails or is cancelled cancels its siblings.
   */
  spawn<P>(children: ChildSpec[], payload: P, options: { failFast?: boolean } = {}): StepOutcome<P, never> {
    return options.failFast
      ? { kind: 'spawn', children, payload, failFast: true }
      : { kind: 'spawn', children, payload };
  },
  /** Run cancelled by the runner's verdict (no dead letter). */
  cancel(reason: string): StepOutcome<never, never> {
    return { kind: 'cancel', reason };
  },
};
