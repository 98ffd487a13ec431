/** The public views of a run row: RunStatus and RunOutcome. */
import type { RunOutcome, RunState, RunStatus, TerminalStatus } from './interfaces/run.interface.js';
import { JobState, NEVER, type RunRow, RunRowState } from './storage/storage.types.js';
import { parseJson } from './utils/json.js';
import { visibleHeaders } from './observability/trace-context.js';

/** Every RunState, in the order a run can pass through them. */
export const RUN_STATES: readonly RunState[] = [
  'pending',
  'running',
  'waiting',
  'cancelling',
  'succeeded',
  'failed',
  'cancelled',
];
/** The states a run ends in. */
export const TERMINAL_STATES: ReadonlySet<string> = new Set(['succeeded', 'failed', 'cancelled']);

export function toStatus(row: RunRow): RunStatus {
  let state: RunState;
  const jobState = Number(row.job_state);
  if (row.state === RunRowState.Active) {
    state = jobState === JobState.Leased ? 'running' : jobState === JobState.Waiting ? 'waiting' : 'pending';
  } else state = row.state as RunState;
  const active = row.state === RunRowState.Active || row.state === RunRowState.Cancelling;
  const status: RunStatus = {
    runId: row.id,
    workflow: row.workflow,
    state,
    // A step that continues moves the job row on, not the run's: while the run lives, its job says where it is.
    currentStep: Number(active && row.job_step != null ? row.job_step : row.current_step),
    attempts: Number(active ? (row.job_attempts ?? 0) : row.attempts),
    headers: visibleHeaders(row.headers),
    submittedAt: new Date(Number(row.submitted_at)),
    updatedAt: new Date(Math.max(Number(row.updated_at), active ? Number(row.job_created_at ?? 0) : 0)),
  };
  if (row.finished_at != null) status.finishedAt = new Date(Number(row.finished_at));
  if (row.result != null) status.result = parseJson(row.result);
  if (row.error != null) status.error = row.error;
  if (row.schedule_id != null) status.scheduleId = row.schedule_id;
  if (state === 'pending' && row.job_run_at != null) status.runAt = new Date(Number(row.job_run_at));
  if (state === 'waiting' && row.job_children_open != null) {
    status.waitingFor = { children: Number(row.job_children_open) };
  } else if (state === 'waiting') {
    const until = Number(row.job_run_at);
    status.waitingFor = { signal: row.job_wait_for ?? undefined, ...(until < NEVER ? { until: new Date(until) } : {}) };
  }
  if (row.parent_run_id) status.parentRunId = row.parent_run_id;
  if (row.concurrency_key != null) status.concurrencyKey = row.concurrency_key;
  return status;
}

export function toOutcome(s: RunStatus, ending: number): RunOutcome {
  const outcome: RunOutcome = {
    runId: s.runId,
    workflow: s.workflow,
    status: s.state as TerminalStatus,
    headers: s.headers,
    finalStep: s.currentStep,
    submittedAt: s.submittedAt,
    finishedAt: s.finishedAt ?? s.updatedAt,
    ending,
  };
  if ('result' in s) outcome.result = s.result;
  if (s.error !== undefined) outcome.error = s.error;
  return outcome;
}

/** The outcome of a run row that has ended. */
export function outcomeOfRow(row: RunRow): RunOutcome {
  return toOutcome(toStatus(row), Number(row.ending));
}
