/** listRuns and countRuns: their input checked, their pages and counts shaped. */
import { InvalidRunIdError } from './errors/invalid-run-id.error.js';
import { InvalidRunSpecError } from './errors/invalid-run-spec.error.js';
import type { RunCounts, RunFilter, RunPage, RunState } from './interfaces/run.interface.js';
import type { LivePhase, ListQuery } from './storage/queries.js';
import { RunRowState } from './storage/storage.types.js';
import type { WorkflowStorage } from './storage/workflow.storage.js';
import { RUN_STATES as STATES, toStatus } from './run-views.js';
import { concurrencyKeyProblem, RUN_ID_PATTERN, WORKFLOW_NAME_PATTERN } from './workflow.constants.js';

const PHASES: readonly string[] = ['pending', 'running', 'waiting'];
const LIMIT = { default: 50, max: 500 };

export async function listRuns(storage: WorkflowStorage, filter: RunFilter = {}): Promise<RunPage> {
  const limit = filter.limit ?? LIMIT.default;
  if (typeof limit !== 'number' || !Number.isSafeInteger(limit) || limit < 1 || limit > LIMIT.max)
    throw new InvalidRunSpecError(`listRuns: limit must be an integer from 1 to ${LIMIT.max}, got ${String(limit)}.`);
  const states = filter.state === undefined ? STATES : [filter.state].flat();
  const unknown = states.filter((s) => !STATES.includes(s));
  if (states.length === 0 || unknown.length)
    throw new InvalidRunSpecError(
      `listRuns: state must be one of ${STATES.join(', ')} (or a non-empty array of them), got ${JSON.stringify(filter.state)}.`,
    );
  if (filter.workflow !== undefined && typeof filter.workflow !== 'string')
    throw new InvalidRunSpecError(`listRuns: workflow must be a string, got ${typeof filter.workflow}.`);
  if (filter.concurrencyKey !== undefined) {
    const problem = concurrencyKeyProblem(filter.concurrencyKey);
    if (problem) throw new InvalidRunSpecError(`listRuns: concurrencyKey ${problem}.`);
  }
  if (
    filter.parentRunId !== undefined &&
    (typeof filter.parentRunId !== 'string' || !RUN_ID_PATTERN.test(filter.parentRunId))
  )
    throw new InvalidRunIdError(filter.parentRunId);
  // No workflow can have that name: nothing to read.
  if (filter.workflow !== undefined && !WORKFLOW_NAME_PATTERN.test(filter.workflow)) return { runs: [] };

  const phases = states.filter((s) => PHASES.includes(s)) as LivePhase[];
  const rowStates = states.filter((s) => !PHASES.includes(s)) as string[];
  if (phases.length) rowStates.unshift(RunRowState.Active);
  const query: ListQuery = {
    rowStates,
    phases: phases.length && phases.length < PHASES.length ? phases : undefined,
    workflow: filter.workflow,
    concurrencyKey: filter.concurrencyKey,
    parentRunId: filter.parentRunId,
    limit: limit + 1,
    after: filter.cursor === undefined ? undefined : decodeCursor(filter.cursor),
  };
  const rows = await storage.listRuns(query);
  const page: RunPage = { runs: rows.slice(0, limit).map(toStatus) };
  if (rows.length > limit) {
    const last = rows[limit - 1];
    page.nextCursor = encodeCursor(Number(last.submitted_at), last.id);
  }
  return page;
}

/** The position after a run, opaque to callers: it names no page, so runs added meanwhile never shift one. */
function encodeCursor(submittedAt: number, id: string): string {
  return Buffer.from(JSON.stringify([submittedAt, id])).toString('base64url');
}

function decodeCursor(cursor: unknown): { submittedAt: number; id: string } {
  try {
    if (typeof cursor !== 'string') throw new Error();
    const [submittedAt, id] = JSON.parse(Buffer.from(cursor, 'base64url').toString()) as unknown[];
    if (!Number.isSafeInteger(submittedAt) || typeof id !== 'string' || !RUN_ID_PATTERN.test(id)) throw new Error();
    return { submittedAt: submittedAt as number, id };
  } catch {
    throw new InvalidRunSpecError(`listRuns: cursor ${JSON.stringify(cursor)} is not one that listRuns returned.`);
  }
}

/** Counts per workflow, for every workflow that has runs or is known to this process. */
export async function countRuns(storage: WorkflowStorage, known: Iterable<string>): Promise<RunCounts[]> {
  const { totals, live } = await storage.readCounts();
  const byWorkflow = new Map<string, RunCounts>();
  const entry = (workflow: string) => {
    let c = byWorkflow.get(workflow);
    if (!c) {
      c = { workflow, states: Object.fromEntries(STATES.map((s) => [s, 0])) as Record<RunState, number>, total: 0 };
      byWorkflow.set(workflow, c);
    }
    return c;
  };
  for (const name of known) entry(name);
  for (const { workflow, state, n } of totals) {
    if (n === 0) continue;
    const c = entry(workflow);
    if (state === RunRowState.Active) {
      // The split is read just after the totals: clamp what moved in between.
      const split = live.get(workflow) ?? { running: 0, waiting: 0 };
      c.states.running = Math.min(split.running, n);
      c.states.waiting = Math.min(split.waiting, n - c.states.running);
      c.states.pending = n - c.states.running - c.states.waiting;
    } else if ((STATES as readonly string[]).includes(state)) {
      c.states[state as RunState] = n;
    }
    c.total += n;
  }
  return [...byWorkflow.values()].sort((a, b) => (a.workflow < b.workflow ? -1 : a.workflow > b.workflow ? 1 : 0));
}
