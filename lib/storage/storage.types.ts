/** Cascade: not a job but a cancelled run's pending cascade to its children (cancel.ts), kept in the queue table so it commits with the cancel. */
export const JobKind = { Step: 0, Terminal: 1, Cascade: 2 } as const;
export type JobKind = (typeof JobKind)[keyof typeof JobKind];

/**
 * A run row's own states. A live run is active (its current step waits or runs) or
 * cancelling (a cancel() reached its running step); the others are the terminal statuses.
 * `pending` / `running` in RunStatus are derived from the current job.
 */
export const RunRowState = { Active: 'active', Cancelling: 'cancelling' } as const;

/**
 * Terminal deliveries of one @OnTerminal handler share a queue named after it: stable
 * across deploys as long as the class and method keep their names.
 */
export const TERMINAL_QUEUE_PREFIX = '~terminal:';
export const terminalQueue = (label: string): string => `${TERMINAL_QUEUE_PREFIX}${label}`;
/** The `Class#method` a terminal queue belongs to. */
export const handlerOf = (queue: string): string =>
  queue.startsWith(TERMINAL_QUEUE_PREFIX) ? queue.slice(TERMINAL_QUEUE_PREFIX.length) : queue;

/**
 * Ready: claimable now. Scheduled: waiting for run_at, promoted when due. Leased: a worker
 * holds it. Waiting: parked on a signal (`wait_for`), made ready by the signal or, at
 * run_at, by its timeout. Blocked: held back by its workflow's keyConcurrency, made ready
 * again by the settlement that frees a slot of its key. Throttled: held back by its
 * rateLimit, made ready again when the window has room (flow.ts). Cascade: a cancel's
 * walk to the run's children still to be done (cancel.ts), taken up by maintenance at
 * run_at; no claim, promotion or wake-up reads this state. Only Ready sits in the claim range of ix_claim.
 */
export const JobState = {
  Ready: 0,
  Scheduled: 1,
  Leased: 2,
  Waiting: 3,
  Blocked: 4,
  Throttled: 5,
  Cascade: 6,
} as const;

/** The due time of a wait without timeout: never. */
export const NEVER = Number.MAX_SAFE_INTEGER;

/**
 * The id users see for a job. A run's consecutive steps reuse one queue row (the
 * successor is written over its predecessor), so a step's id is the row's id with the
 * step number: unique per step, the same across that step's retries. Terminal
 * deliveries are the row id alone.
 */
export function publicJobId(rowId: string, kind: JobKind | number, stepNumber: number | string): string {
  return Number(kind) === JobKind.Step ? `${rowId}.${stepNumber}` : rowId;
}

/** The row id and (for a step) step number in a public job id; undefined if it cannot be one. */
export function parseJobId(jobId: unknown): { rowId: string; stepNumber?: number } | undefined {
  if (typeof jobId !== 'string') return undefined;
  const m = /^([0-9A-Za-z]{1,64})(?:\.(\d{1,10}))?$/.exec(jobId);
  if (!m) return undefined;
  return m[2] === undefined ? { rowId: m[1] } : { rowId: m[1], stepNumber: Number(m[2]) };
}

/** Deliveries that count against maxAttempts: a hand-back at shutdown was not the step's fault. */
export const countedAttempts = (job: { attempts: number; handbacks: number }): number => job.attempts - job.handbacks;

/** A job a worker holds; `token` fences every write it makes. */
export interface ClaimedJob {
  id: string;
  queue: string;
  kind: JobKind;
  runId: string;
  stepNumber: number;
  /** Deliveries so far, this one included. */
  attempts: number;
  /** Of those, handed back at shutdown: they do not count against maxAttempts. */
  handbacks: number;
  maxAttempts: number;
  priority: number;
  payload: string;
  headers: string;
  token: string;
  /** The ReceivedSignal (JSON) of the step after a wait. */
  received?: string | null;
  /** 0 on the step after a spawn (its children have all ended); null otherwise. */
  childrenOpen?: number | null;
  /** Its run's concurrency key, when the claim counted it against keyConcurrency: its settlement frees that slot. */
  keySlot?: string;
  /** `headers` already parsed and frozen, handed from a step to its successor run in place. */
  parsedHeaders?: Readonly<Record<string, string>>;
}

/**
 * A free worker slot of this process, held for a step that a transaction of this process
 * is about to make ready (a signal's): the transaction leases the step to `token` as a
 * claim would, and after its COMMIT the step is handed over with `take`, with no claim of
 * its own; `release` gives the slot back when it did not lease. One of the two, once.
 */
export interface Handoff {
  /** A claim token: the step's lease token is `${token}/${jobId}`, as a claim writes it. */
  token: string;
  leaseMs: number;
  /** The runner's maxAttempts, for a step that has none yet. */
  maxAttempts: number;
  take(job: ClaimedJob): void;
  release(): void;
}

/** Asks this process's worker for a slot of `queue`'s workflow (`keyed`: the step counts against keyConcurrency). */
export type ReserveSlot = (queue: string, keyed: boolean) => Handoff | undefined;

/** What one delivery of a step leaves in the history: written by the transaction that settles it. */
export interface DeliveryRecord {
  /** Runtime clock ms. */
  startedAt: number;
  /** The StepRecord outcome word: 'continue', 'wait', ..., 'lease-expired'. */
  outcome: string;
  error?: string;
  worker: string;
}

export interface NewJob {
  id: string;
  queue: string;
  kind: JobKind;
  runId: string;
  stepNumber: number;
  priority: number;
  /** Due time, runtime clock ms. */
  runAt: number;
  scheduled: boolean;
  /** Null: the runner's own maxAttempts, filled in by the worker that first claims it. */
  maxAttempts: number | null;
  payload: string;
  headers: string;
  /** Its run's concurrency key (steps only). */
  ckey?: string | null;
  /** Park it waiting for this signal (until runAt, or NEVER). */
  waitFor?: string;
  /** Park it waiting for this many children to end; `failFast`: the first failure cancels the rest. */
  childrenOpen?: number;
  failFast?: boolean;
  /** Insert already leased to this token (continuation in place): no claim needed. */
  leaseToken?: string;
  leaseMs?: number;
}

export interface NewRun {
  id: string;
  workflow: string;
  inputHash: string;
  headers: string;
  priority: number;
  maxAttempts: number | null;
  submittedAt: number;
  firstJob: NewJob;
  /** Set for a run a schedule's tick started. */
  scheduleId?: string;
  concurrencyKey?: string;
  /** A child run: its parent, the parent's step that spawned it, and its position. */
  parent?: { runId: string; step: number; index: number };
}

export type { Settlement } from './settlements.js';

/** settled: applied. lost: the lease had moved on, nothing changed. cancelled: the run was cancelling, so it was cancelled instead. */
export type SettleResult = 'settled' | 'lost' | 'cancelled';

export interface RunRow {
  id: string;
  workflow: string;
  state: string;
  current_step: number | string;
  current_job_id: string | null;
  attempts: number | string;
  input_hash: string;
  headers: string;
  priority: number | string;
  result: string | null;
  error: string | null;
  submitted_at: number | string;
  updated_at: number | string;
  finished_at: number | string | null;
  ending: number | string;
  schedule_id?: string | null;
  concurrency_key?: string | null;
  parent_run_id?: string | null;
  parent_step?: number | string | null;
  child_index?: number | string | null;
  job_children_open?: number | string | null;
  job_state?: number | string | null;
  job_attempts?: number | string | null;
  /** The current job's step: a step that continues leaves the run row's current_step behind. */
  job_step?: number | string | null;
  job_created_at?: number | string | null;
  job_run_at?: number | string | null;
  job_wait_for?: string | null;
}

export interface DeadRow {
  job_id: string;
  queue: string;
  kind: number | string;
  workflow: string;
  run_id: string;
  step_number: number | string;
  attempts: number | string;
  max_attempts: number | string;
  priority: number | string;
  payload: string;
  headers: string;
  last_error: string;
  dead_at: number | string;
}
