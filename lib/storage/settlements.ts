import type { TerminalStatus } from '../interfaces/run.interface.js';
import type { NewJob, NewRun } from './storage.types.js';

/**
 * How a leased job ends, as data. The executor only names a settlement through these
 * constructors; storage applies it, in the fast path (a batch, counts checked by the
 * server) or the careful path (one item at a time), both derived from `SETTLEMENT_KINDS`.
 * Exactly one settlement is applied to a job, in one transaction, and only while its
 * lease holds.
 */
export type Settlement =
  /** The step is done and the run goes on: the job row becomes the successor `next` (same id). */
  | { type: 'continue'; next: NewJob }
  /** The step is done and the run waits for a signal: the successor `next` is parked (`next.waitFor`). */
  | { type: 'wait'; next: NewJob }
  /** The step is done, `children` start, and the successor `next` is parked until they have all ended. */
  | { type: 'spawn'; next: NewJob; children: NewRun[] }
  /** The runner's verdict ends the run. */
  | { type: 'finish'; status: TerminalStatus; result?: string; error?: string }
  /** `error`: the full text kept on the dead letter; `reason`: the run's error (default `error`). */
  | { type: 'deadLetter'; error: string; reason?: string }
  /** A failed delivery, tried again at `runAt`. */
  | { type: 'retry'; runAt: number; error: string }
  /** Handed back at shutdown: claimable at once, the delivery not counted against maxAttempts. */
  | { type: 'release' }
  /** The worker saw the run's cancel: the run ends cancelled, whatever the runner returns. */
  | { type: 'observeCancel' }
  /** A terminal delivery the handler took. */
  | { type: 'acknowledge' };

export type SettlementType = Settlement['type'];

export const Settle = {
  continueWith: (next: NewJob): Settlement => ({ type: 'continue', next }),
  waitFor: (next: NewJob): Settlement => ({ type: 'wait', next }),
  spawn: (next: NewJob, children: NewRun[]): Settlement => ({ type: 'spawn', next, children }),
  finish: (status: TerminalStatus, fields: { result?: string; error?: string } = {}): Settlement => ({
    type: 'finish',
    status,
    ...fields,
  }),
  deadLetter: (error: string, reason?: string): Settlement =>
    reason === undefined ? { type: 'deadLetter', error } : { type: 'deadLetter', error, reason },
  retryAt: (runAt: number, error: string): Settlement => ({ type: 'retry', runAt, error }),
  release: (): Settlement => ({ type: 'release' }),
  observeCancel: (): Settlement => ({ type: 'observeCancel' }),
  acknowledge: (): Settlement => ({ type: 'acknowledge' }),
};

/** What a settlement does to its job row. Every one of these is fenced by the lease token. */
export type JobEffect = 'successor' | 'delete' | 'reschedule' | 'release';
/** What it does to a step's run while the run is active. A cancelling run ends cancelled instead, whatever the kind. */
export type RunEffect = 'advance' | 'end' | 'keep';

export interface RunEnding {
  status: TerminalStatus;
  result?: string;
  error?: string;
}

export interface SettlementKind<S extends Settlement = Settlement> {
  job: JobEffect;
  run: RunEffect;
  /** How the run ends, for `run: 'end'`. */
  ending?(s: S): RunEnding;
  /** The text of the dead letter this settlement leaves, if any. */
  deadLetter?(s: S): string;
  /** Batches made only of fast kinds settle in a few multi-row statements whose row counts the server checks. */
  fast: boolean;
  /** After the run moved on, a signal already in the run's mailbox may wake the parked successor at once. */
  mailbox?: boolean;
  /** After the run moved on, its children are inserted (runs and their step 0), in the same transaction. */
  spawn?: boolean;
}

type Kinds = { [K in SettlementType]: SettlementKind<Extract<Settlement, { type: K }>> };

/** Every settlement kind, defined once. A new outcome is one entry here (and, if it needs one, one effect in transitions.ts). */
export const SETTLEMENT_KINDS: Kinds = {
  continue: { job: 'successor', run: 'advance', fast: true },
  wait: { job: 'successor', run: 'advance', fast: false, mailbox: true },
  spawn: { job: 'successor', run: 'advance', fast: false, spawn: true },
  finish: {
    job: 'delete',
    run: 'end',
    ending: (s) => ({ status: s.status, result: s.result, error: s.error }),
    fast: true,
  },
  deadLetter: {
    job: 'delete',
    run: 'end',
    ending: (s) => ({ status: 'failed', error: s.reason ?? s.error }),
    deadLetter: (s) => s.error,
    fast: false,
  },
  retry: { job: 'reschedule', run: 'keep', fast: false },
  release: { job: 'release', run: 'keep', fast: false },
  observeCancel: { job: 'delete', run: 'end', ending: () => ({ status: 'cancelled' }), fast: false },
  acknowledge: { job: 'delete', run: 'keep', fast: true },
};

export function kindOf<S extends Settlement>(s: S): SettlementKind<S> {
  return SETTLEMENT_KINDS[s.type] as unknown as SettlementKind<S>;
}

/** Whether this settlement ends the run of a step (when the run is active). */
export function endsRun(s: Settlement): boolean {
  return kindOf(s).run === 'end';
}
