import { ulid } from '../utils/ulid.js';
import { JobKind, type NewRun } from './storage.types.js';

/**
 * A run about to be created with its step 0 job (whose payload is the input), as submit,
 * a schedule tick and a spawn all create them. `delayMs` > 0 makes step 0 scheduled.
 */
export function newRun(r: {
  id: string;
  workflow: string;
  /** JSON text of the input, and its hash (hashJson). */
  input: string;
  inputHash: string;
  /** JSON text. */
  headers: string;
  priority: number;
  maxAttempts: number | null;
  now: number;
  delayMs?: number;
  scheduleId?: string;
  concurrencyKey?: string;
  parent?: NewRun['parent'];
}): NewRun {
  const delayMs = r.delayMs ?? 0;
  return {
    id: r.id,
    workflow: r.workflow,
    inputHash: r.inputHash,
    headers: r.headers,
    priority: r.priority,
    maxAttempts: r.maxAttempts,
    submittedAt: r.now,
    ...(r.scheduleId !== undefined ? { scheduleId: r.scheduleId } : {}),
    ...(r.parent !== undefined ? { parent: r.parent } : {}),
    ...(r.concurrencyKey !== undefined ? { concurrencyKey: r.concurrencyKey } : {}),
    firstJob: {
      id: ulid(r.now),
      queue: r.workflow,
      kind: JobKind.Step,
      runId: r.id,
      stepNumber: 0,
      priority: r.priority,
      runAt: r.now + delayMs,
      scheduled: delayMs > 0,
      maxAttempts: r.maxAttempts,
      payload: r.input,
      headers: r.headers,
      ckey: r.concurrencyKey ?? null,
    },
  };
}
