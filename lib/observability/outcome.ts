import type { StepAbortReason } from '../errors/step-aborted.error.js';
import type { Settlement } from '../storage/settlements.js';
import type { SettleResult } from '../storage/storage.types.js';

/** How a delivery ended, in the words of StepRecord.outcome (spans and metrics use the same). */
export type DeliveryOutcome =
  | 'continue'
  | 'wait'
  | 'spawn'
  | 'succeed'
  | 'fail'
  | 'cancel'
  | 'retry'
  | 'dead'
  | 'timeout'
  | 'cancelled'
  | 'handed-back'
  | 'lease-expired';

/** Outcomes of a delivery that went wrong, or of a run that failed: their spans get an error status. */
export const FAILED_OUTCOMES: ReadonlySet<string> = new Set(['fail', 'dead', 'retry', 'timeout', 'lease-expired']);

/**
 * The word for a settlement that committed with `result`. A timed-out delivery that is
 * retried is 'timeout' (a thrown one 'retry'); any that gave up is 'dead'. A terminal
 * delivery its handler took is 'succeed'. A delivery that never settled (its lease was
 * lost, or the database stayed away longer than the lease) is 'lease-expired': another
 * delivery takes it over once the lease has run out.
 */
export function outcomeOf(s: Settlement, result: SettleResult, abort?: StepAbortReason): DeliveryOutcome {
  if (result === 'cancelled') return 'cancelled';
  switch (s.type) {
    case 'continue':
      return 'continue';
    case 'wait':
      return 'wait';
    case 'spawn':
      return 'spawn';
    case 'finish':
      return s.status === 'succeeded' ? 'succeed' : s.status === 'failed' ? 'fail' : 'cancel';
    case 'deadLetter':
      return 'dead';
    case 'retry':
      return abort === 'timeout' ? 'timeout' : 'retry';
    case 'release':
      return 'handed-back';
    case 'observeCancel':
      return 'cancelled';
    case 'acknowledge':
      return 'succeed';
  }
}

/** The error text a settlement carries, if any (a retry's or dead letter's stored error, a fail reason). */
export function errorOf(s: Settlement): string | undefined {
  if (s.type === 'retry') return s.error;
  if (s.type === 'deadLetter') return s.reason ?? s.error;
  if (s.type === 'finish' && s.status === 'failed') return s.error;
  return undefined;
}
