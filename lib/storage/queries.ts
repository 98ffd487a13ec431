import { JobKind, JobState, type RunRow, RunRowState } from './storage.types.js';
import type { StorageContext, Tables } from './tables.js';

/** A run row with what RunStatus needs of its current job. */
const RUN_FIELDS =
  'r.*, j.`state` AS job_state, j.`attempts` AS job_attempts, j.`run_at` AS job_run_at, j.`wait_for` AS job_wait_for, j.`children_open` AS job_children_open, j.`step_number` AS job_step, j.`created_at` AS job_created_at';
const RUN_WITH_JOB = (t: Tables, index = '') =>
  `SELECT ${RUN_FIELDS} FROM ${t.runs} AS r ${index} LEFT JOIN ${t.jobs} AS j ON j.\`id\` = r.\`current_job_id\``;

/** One run with its current job's state, attempts and due time. */
export async function getRun(ctx: StorageContext, runId: string): Promise<RunRow | null> {
  const rows = await ctx.client.query<RunRow[]>(`${RUN_WITH_JOB(ctx.t)} WHERE r.\`id\` = ?`, [runId]);
  return rows[0] ?? null;
}

/** Several runs as getRun reads one (those that exist, in no order). */
export async function getRuns(ctx: StorageContext, runIds: readonly string[]): Promise<RunRow[]> {
  if (runIds.length === 0) return [];
  return ctx.client.query<RunRow[]>(`${RUN_WITH_JOB(ctx.t)} WHERE r.\`id\` IN (?)`, [runIds]);
}

/** What a live run's step is doing, as RunStatus derives `pending` / `running` / `waiting` from it. */
export type LivePhase = 'pending' | 'running' | 'waiting';

export interface ListQuery {
  /** Row states to list (the active one narrowed by `phases` when given). */
  rowStates: string[];
  phases?: LivePhase[];
  workflow?: string;
  concurrencyKey?: string;
  parentRunId?: string;
  /** Rows to return at most. */
  limit: number;
  /** Only runs after this one in the order (submitted_at, id) descending. */
  after?: { submittedAt: number; id: string };
}

const PHASE_SQL: Record<LivePhase, string> = {
  running: `j.\`state\` = ${JobState.Leased}`,
  waiting: `j.\`state\` = ${JobState.Waiting}`,
  pending: `(j.\`state\` IS NULL OR j.\`state\` NOT IN (${JobState.Leased}, ${JobState.Waiting}))`,
};

/**
 * Runs newest first (submitted_at, then id, descending), read in index order: by a
 * parent's or a key's runs (ix_list_parent, ix_list_key) when one is asked for, the other
 * filters applied to those rows; otherwise one range of ix_list_workflow or ix_list per
 * row state, each read only as far as the page needs and merged here. No range reads a
 * run of a state that was not asked for, so live runs are found without passing finished
 * ones.
 */
export async function listRuns(ctx: StorageContext, q: ListQuery): Promise<RunRow[]> {
  const { t } = ctx;
  // After the cursor's run, in the order (submitted_at, id) descending.
  const afterCursor = (where: string[], params: unknown[]) => {
    if (!q.after) return;
    where.push('(r.`submitted_at` < ? OR (r.`submitted_at` = ? AND r.`id` < ?))');
    params.push(q.after.submittedAt, q.after.submittedAt, q.after.id);
  };
  const page = (index: string, where: string[], params: unknown[]) => {
    afterCursor(where, params);
    return ctx.client.query<RunRow[]>(
      `${RUN_WITH_JOB(t, `FORCE INDEX (\`${index}\`)`)} WHERE ${where.join(' AND ')}
        ORDER BY r.\`submitted_at\` DESC, r.\`id\` DESC LIMIT ?`,
      [...params, q.limit],
    );
  };
  // Running runs are as many as the leased steps, however many runs wait: found from the
  // leased jobs (ix_claim for a workflow, ix_state otherwise), ordered here.
  const running = async () => {
    const { where, params } = filters(false);
    afterCursor(where, params);
    const byQueue = q.workflow !== undefined;
    const rows = await ctx.client.query<RunRow[]>(
      `SELECT ${RUN_FIELDS} FROM ${t.jobs} AS j FORCE INDEX (\`${byQueue ? 'ix_claim' : 'ix_state'}\`)
        JOIN ${t.runs} AS r FORCE INDEX (PRIMARY) ON r.\`id\` = j.\`run_id\` AND r.\`current_job_id\` = j.\`id\`
        WHERE ${byQueue ? 'j.`queue` = ? AND ' : ''}j.\`state\` = ${JobState.Leased} AND j.\`kind\` = ${JobKind.Step}
          AND r.\`state\` = '${RunRowState.Active}'${where.length ? ` AND ${where.join(' AND ')}` : ''}`,
      byQueue ? [q.workflow, ...params] : params,
    );
    return rows.sort(newestFirst).slice(0, q.limit);
  };
  const phases = q.phases?.length ? `(${q.phases.map((p) => PHASE_SQL[p]).join(' OR ')})` : undefined;
  const filters = (byState: boolean) => {
    const where: string[] = [];
    const params: unknown[] = [];
    const add = (column: string, value: string | undefined) => {
      if (value === undefined) return;
      where.push(`r.\`${column}\` = ?`);
      params.push(value);
    };
    add('parent_run_id', q.parentRunId);
    add('concurrency_key', q.concurrencyKey);
    add('workflow', q.workflow);
    if (byState) {
      where.push('r.`state` IN (?)');
      params.push(q.rowStates);
      if (phases) where.push(`(r.\`state\` <> '${RunRowState.Active}' OR ${phases})`);
    }
    return { where, params };
  };
  if (q.parentRunId !== undefined || q.concurrencyKey !== undefined) {
    const { where, params } = filters(true);
    return page(q.parentRunId !== undefined ? 'ix_list_parent' : 'ix_list_key', where, params);
  }
  const ranges = await Promise.all(
    q.rowStates.map((state) => {
      if (state === RunRowState.Active && q.phases?.length === 1 && q.phases[0] === 'running') return running();
      const { where, params } = filters(false);
      where.push('r.`state` = ?');
      params.push(state);
      if (state === RunRowState.Active && phases) where.push(phases);
      return page(q.workflow !== undefined ? 'ix_list_workflow' : 'ix_list', where, params);
    }),
  );
  return ranges.flat().sort(newestFirst).slice(0, q.limit);
}

const newestFirst = (a: RunRow, b: RunRow) =>
  Number(b.submitted_at) - Number(a.submitted_at) || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0);

const BUSY = [
  'ready',
  'due (scheduled)',
  'running',
  'timed out (waiting)',
  'held back (keyConcurrency)',
  'held back (rateLimit)',
];

/**
 * Jobs of these queues that are due or running now: ready, leased, or scheduled/waiting
 * with a due time that has come (by the runtime clock). For drainWorkflows.
 */
export async function busyJobs(
  ctx: StorageContext,
  queues: string[],
  now: number,
): Promise<Array<{ queue: string; state: string; count: number }>> {
  if (queues.length === 0) return [];
  const rows = await ctx.client.query<Array<{ queue: string; state: number | string; n: number | string }>>(
    `SELECT \`queue\`, \`state\`, COUNT(*) AS n FROM ${ctx.t.jobs} FORCE INDEX (\`ix_claim\`)
      WHERE \`queue\` IN (?) AND (\`state\` IN (${JobState.Ready}, ${JobState.Leased}, ${JobState.Blocked}, ${JobState.Throttled})
        OR (\`state\` IN (${JobState.Scheduled}, ${JobState.Waiting}) AND \`run_at\` <= ?))
      GROUP BY \`queue\`, \`state\``,
    [queues, now],
  );
  return rows.map((r) => ({ queue: r.queue, state: BUSY[Number(r.state)] ?? String(r.state), count: Number(r.n) }));
}

/** The children a parent's step spawned, in spawn order, as they are now. */
export async function childRuns(ctx: StorageContext, parentRunId: string, parentStep: number): Promise<RunRow[]> {
  return ctx.client.query<RunRow[]>(
    `SELECT * FROM ${ctx.t.runs} FORCE INDEX (\`ix_parent\`) WHERE \`parent_run_id\` = ? AND \`parent_step\` = ?
      ORDER BY \`child_index\``,
    [parentRunId, parentStep],
  );
}

/** Children of a run that have not ended (for a cancel's cascade). */
export async function liveChildren(ctx: StorageContext, parentRunId: string): Promise<string[]> {
  const rows = await ctx.client.query<Array<{ id: string }>>(
    `SELECT \`id\` FROM ${ctx.t.runs} FORCE INDEX (\`ix_parent\`) WHERE \`parent_run_id\` = ? AND \`finished_at\` IS NULL`,
    [parentRunId],
  );
  return rows.map((r) => r.id);
}

/** Every child of a run, whatever its state (a cancel's walk down a tree); of one step's spawn with `parentStep`. */
export async function childRunIds(ctx: StorageContext, parentRunId: string, parentStep?: number): Promise<string[]> {
  const rows = await ctx.client.query<Array<{ id: string }>>(
    `SELECT \`id\` FROM ${ctx.t.runs} FORCE INDEX (\`ix_parent\`) WHERE \`parent_run_id\` = ?${parentStep === undefined ? '' : ' AND `parent_step` = ?'}
      ORDER BY \`parent_step\`, \`child_index\``,
    parentStep === undefined ? [parentRunId] : [parentRunId, parentStep],
  );
  return rows.map((r) => r.id);
}

/**
 * Parents whose failFast join was tripped by a failed child: the other children of the spawn
 * before `stepNumber` are to be cancelled. The step says which spawn: by the time a pass
 * gets to a join it read, the parent may have resumed and spawned again.
 */
export async function trippedJoins(
  ctx: StorageContext,
  limit = 50,
): Promise<Array<{ jobId: string; runId: string; stepNumber: number }>> {
  const rows = await ctx.client.query<Array<{ id: string; run_id: string; step_number: number | string }>>(
    `SELECT \`id\`, \`run_id\`, \`step_number\` FROM ${ctx.t.jobs} FORCE INDEX (\`ix_fail_fast\`) WHERE \`fail_fast\` = 2 LIMIT ?`,
    [limit],
  );
  return rows.map((r) => ({ jobId: r.id, runId: r.run_id, stepNumber: Number(r.step_number) }));
}

/** A tripped join whose siblings have been cancelled: not looked at again (a later trip of the same row, at a later step, is another join). */
export async function joinHandled(ctx: StorageContext, jobId: string, stepNumber: number): Promise<void> {
  await ctx.client.query(
    `UPDATE ${ctx.t.jobs} SET \`fail_fast\` = 3 WHERE \`id\` = ? AND \`fail_fast\` = 2 AND \`step_number\` = ?`,
    [jobId, stepNumber],
  );
}

export interface HistoryRow {
  step_number: number | string;
  attempt: number | string;
  started_at: number | string;
  finished_at: number | string;
  outcome: string;
  error: string | null;
  worker: string;
}

/** A run's history, oldest first: one range of the primary key. */
export async function historyOf(ctx: StorageContext, runId: string): Promise<HistoryRow[]> {
  return ctx.client.query<HistoryRow[]>(
    `SELECT \`step_number\`, \`attempt\`, \`started_at\`, \`finished_at\`, \`outcome\`, \`error\`, \`worker\`
      FROM ${ctx.t.history} FORCE INDEX (PRIMARY) WHERE \`run_id\` = ? ORDER BY \`seq\``,
    [runId],
  );
}

/**
 * The payload of a run's current step (the input at step 0), for the dashboard; null once
 * the run has ended (its step row is gone) or for an unknown run. One read by primary keys.
 */
export async function currentPayload(ctx: StorageContext, runId: string): Promise<string | null> {
  const rows = await ctx.client.query<Array<{ payload: string }>>(
    `SELECT j.\`payload\` FROM ${ctx.t.runs} r JOIN ${ctx.t.jobs} j ON j.\`id\` = r.\`current_job_id\` WHERE r.\`id\` = ?`,
    [runId],
  );
  return rows[0]?.payload ?? null;
}
