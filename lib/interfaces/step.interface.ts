import type { EntityManager } from 'typeorm';
import type { StepOutcome } from '../outcomes/step-outcome.js';
import type { RunOutcome } from './run.interface.js';

export interface Step<P = unknown> {
  readonly runId: string;
  readonly workflow: string;
  /** 0 for the first step, whose payload is the run's input. */
  readonly stepNumber: number;
  readonly payload: P;
  /** Submitter headers; reserved `workflow.*` keys never appear. */
  readonly headers: Readonly<Record<string, string>>;
  readonly jobId: string;
  /** 1 on first delivery. */
  readonly attempts: number;
  /** Aborted on external cancel, step timeout or forced shutdown; `signal.reason` says which. */
  readonly signal: AbortSignal;
  /** Make the lease last at least `ms` from now. */
  extendLease(ms: number): Promise<void>;
  /**
   * Runs `work` in a transaction of the module's DataSource (`forRoot({ dataSource })`)
   * that also settles the outcome `work` returns: the writes made through `manager` and
   * the step's settlement commit together, so they happen exactly once. Return what it
   * returns. Throws `LeaseLostError` (nothing written) when this delivery no longer owns
   * the step, `WorkflowConfigError` without a shared DataSource; a throw from `work`
   * rolls back and is rethrown.
   */
  transaction(work: (manager: EntityManager) => Promise<StepOutcome>): Promise<StepOutcome>;
  /** Only on the step after a `waitForSignal`: the signal it received, or that the wait timed out. */
  readonly received?: ReceivedSignal;
  /** Only on the step after a `spawn`: every child's outcome, in spawn order. */
  readonly children?: readonly RunOutcome[];
}

/** What the step after a `waitForSignal` received. */
export type ReceivedSignal =
  { name: string; timedOut: false; data: unknown; signalId: string; sentAt: Date } | { name: string; timedOut: true };
