import type { EntityManager } from 'typeorm';

export interface RunSpec<I = unknown> {
  /** Caller-chosen id, `^[A-Za-z0-9_-]{1,128}$`; makes the submit idempotent. Generated (time-ordered) when absent. */
  runId?: string;
  input: I;
  headers?: Record<string, string>;
  priority?: number;
  maxAttemptsPerStep?: number;
  /** Step 0 becomes claimable this long after submit. */
  delayMs?: number;
  /**
   * Groups runs for the runner's `keyConcurrency` and per-key `rateLimit` (a tenant, an
   * API key), 1-128 characters. A run without one is not limited by keyConcurrency.
   */
  concurrencyKey?: string;
}

export interface SubmitOptions {
  /** Write through this EntityManager: the run exists if and only if its transaction commits. */
  manager?: EntityManager;
}

export interface SubmitOutcome {
  runId: string;
  newlySubmitted: boolean;
}

export type TerminalStatus = 'succeeded' | 'failed' | 'cancelled';

export interface RunOutcome {
  runId: string;
  workflow: string;
  status: TerminalStatus;
  result?: unknown;
  error?: string;
  headers: Record<string, string>;
  finalStep: number;
  submittedAt: Date;
  finishedAt: Date;
  /**
   * 1 for the run's first ending, + 1 for each time `retryDead` re-opened it since: two
   * outcomes of one run never share it, so a handler keys on `(runId, ending)`.
   */
  ending: number;
}

/** `waiting`: parked on a signal (no worker slot, no lease). A delayed step is `pending`. */
export type RunState = 'pending' | 'running' | 'waiting' | 'cancelling' | 'succeeded' | 'failed' | 'cancelled';

export interface RunStatus {
  runId: string;
  workflow: string;
  state: RunState;
  currentStep: number;
  /** Deliveries of the current step so far. */
  attempts: number;
  headers: Record<string, string>;
  submittedAt: Date;
  updatedAt: Date;
  finishedAt?: Date;
  result?: unknown;
  error?: string;
  /** When a pending step becomes due. */
  runAt?: Date;
  /** While `waiting`: the signal it waits for and when the wait times out (absent: never). */
  waitingFor?: { signal?: string; children?: number; until?: Date };
  /** The schedule whose tick started this run. */
  scheduleId?: string;
  /** Set on a child run: the run whose step spawned it. */
  parentRunId?: string;
  /** The run's `concurrencyKey`, if it was given one. */
  concurrencyKey?: string;
}

/** What `listRuns` lists: every filter given must hold. */
export interface RunFilter {
  workflow?: string;
  state?: RunState | RunState[];
  concurrencyKey?: string;
  parentRunId?: string;
  /** Runs per page: 50 by default, at most 500. */
  limit?: number;
  /** `nextCursor` of the page before. */
  cursor?: string;
}

export interface RunPage {
  /** Newest first (ties by run id, descending). */
  runs: RunStatus[];
  /** Set when more runs follow: pass it as `cursor` for the next page. */
  nextCursor?: string;
}

/** Runs of one workflow by state, as the database holds them now (retention removes finished ones). */
export interface RunCounts {
  workflow: string;
  states: Record<RunState, number>;
  total: number;
}

export interface WaitOptions {
  timeoutMs?: number;
}

export interface DeadStep {
  jobId: string;
  runId: string;
  workflow: string;
  stepNumber: number;
  attempts: number;
  /** Message and stack of the last failure. */
  lastError: string;
  deadAt: Date;
  /** Set for a dead terminal delivery: the `Class#method` of its @OnTerminal handler. */
  handler?: string;
}

export interface DeadStepFilter {
  workflow?: string;
  /** Only this run's dead letters (its steps' and its terminal deliveries'). */
  runId?: string;
  limit?: number;
  /** Only dead letters that died before this instant. */
  before?: Date;
}

export interface SignalOptions {
  /** Deduplicates per run: a repeated id stores nothing more (and still returns true). Default: a fresh id. */
  signalId?: string;
  /** Store the signal through this EntityManager: it exists if and only if that transaction commits. */
  manager?: EntityManager;
}

/** A child run a step spawns (`StepOutcome.spawn`). */
export interface ChildSpec {
  workflow: string;
  input: unknown;
  /** Default: derived from the parent's run id, step and the child's position, so a redelivered spawn creates nothing twice. */
  runId?: string;
  /** Over the parent's headers, which the child inherits. */
  headers?: Record<string, string>;
  priority?: number;
  /** Children do not inherit the parent's key: this sets one. */
  concurrencyKey?: string;
}

/** One delivery of a step (`WorkflowService.history`). */
export interface StepRecord {
  stepNumber: number;
  /** 1 on the step's first delivery. */
  attempt: number;
  startedAt: Date;
  finishedAt: Date;
  /**
   * How the delivery ended: the runner's outcome ('continue' | 'wait' | 'spawn' | 'succeed'
   * | 'fail' | 'cancel'), or the runtime's ('retry' | 'dead' | 'timeout' | 'cancelled' |
   * 'handed-back' | 'lease-expired').
   */
  outcome: string;
  /** Set on deliveries that failed: 'retry', 'dead', 'timeout', 'lease-expired'. */
  error?: string;
  /** The process that ran it (`host#pid`; for an expired lease, its lease token's tag). */
  worker: string;
}
