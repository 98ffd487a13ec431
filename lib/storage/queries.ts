import { JobState, type RunRow } from './storage.types.js';
import type { StorageContext } from './tables.js';

/** One run with its current job's state, attempts and due time. */
export async function getRun(ctx: StorageContext, runId: string): Promise<RunRow | null> {
  const rows = await ctx.client.query<RunRow[]>(
    `SELECT r.*, j.\`state\` AS job_state, j.\`attempts\` AS job_attempts, j.\`run_at\` AS job_run_at, j.\`wait_for\` AS job_wait_for, j.\`children_open\` AS job_children_open
      FROM ${ctx.t.runs} r LEFT JOIN ${ctx.t.jobs} j ON j.\`id\` = r.\`current_job_id\` WHERE r.\`id\` = ?`,
    [runId],
  );
  return rows[0] ?? null;
}

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
