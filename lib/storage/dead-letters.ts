import { ulid } from '../utils/ulid.js';
import { CommitUnknownError } from './sql-client.js';
import { type DeadRow, JobKind, type NewJob, RunRowState } from './storage.types.js';
import type { StorageContext } from './tables.js';
import { insertJobs } from './transitions.js';
import { recordChanges } from './counts.js';

/** Dead letters, newest first, without their payloads. */
export async function deadSteps(
  ctx: StorageContext,
  filter: { workflow?: string; runId?: string; limit: number; before?: number },
): Promise<DeadRow[]> {
  const where: string[] = [];
  const params: unknown[] = [];
  if (filter.runId !== undefined) {
    where.push('`run_id` = ?');
    params.push(filter.runId);
  }
  if (filter.workflow !== undefined) {
    where.push('`workflow` = ?');
    params.push(filter.workflow);
  }
  if (filter.before !== undefined) {
    where.push('`dead_at` < ?');
    params.push(filter.before);
  }
  params.push(filter.limit);
  return ctx.client.query<DeadRow[]>(
    `SELECT \`job_id\`, \`queue\`, \`kind\`, \`workflow\`, \`run_id\`, \`step_number\`, \`attempts\`, \`max_attempts\`, \`priority\`,
      '' AS \`payload\`, '' AS \`headers\`, \`last_error\`, \`dead_at\`
      FROM ${ctx.t.dead}${filter.runId !== undefined ? ' FORCE INDEX (`ix_run`)' : ''} ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY \`dead_at\` DESC, \`job_id\` DESC LIMIT ?`,
    params,
  );
}

/**
 * Re-drives a dead letter.
 *
 * Commits: the job back in the queue (attempts from zero) and, for a step, its failed
 *          run active again at that step; the dead letter removed.
 * Locks:   the dead row, then the run row. (No job row exists yet: the new one is
 *          inserted.)
 * Crash:   before COMMIT, nothing changes; after, the run resumes from that step. A
 *          COMMIT whose reply is lost is judged by whether the dead letter is still there.
 * False when the dead letter is gone or its run has moved on since.
 */
export async function retryDead(ctx: StorageContext, jobId: string, stepNumber?: number): Promise<boolean> {
  for (let lost = 0; ; lost++) {
    const seen = { wrote: false };
    try {
      return await redriveOnce(ctx, jobId, stepNumber, () => (seen.wrote = true));
    } catch (err) {
      if (!(err instanceof CommitUnknownError) || lost >= 3) throw err;
      // The dead letter is gone only if the unanswered COMMIT landed; if not, try again.
      const [left] = await ctx.client.query<unknown[]>(`SELECT 1 FROM ${ctx.t.dead} WHERE \`job_id\` = ?`, [jobId]);
      if (seen.wrote && !left) return true;
    }
  }
}

async function redriveOnce(
  ctx: StorageContext,
  jobId: string,
  stepNumber: number | undefined,
  writing: () => void,
): Promise<boolean> {
  const { t } = ctx;
  return ctx.client.transaction(async (sql) => {
    const [dead] = await sql.query<DeadRow[]>(`SELECT * FROM ${t.dead} WHERE \`job_id\` = ? FOR UPDATE`, [jobId]);
    if (!dead) return false;
    if (stepNumber !== undefined && (Number(dead.kind) !== JobKind.Step || Number(dead.step_number) !== stepNumber))
      return false;
    const now = ctx.now();
    const job: NewJob = {
      id: ulid(now),
      queue: dead.queue,
      kind: Number(dead.kind) as JobKind,
      runId: dead.run_id,
      stepNumber: Number(dead.step_number),
      priority: Number(dead.priority),
      runAt: now,
      scheduled: false,
      maxAttempts: Number(dead.max_attempts),
      payload: dead.payload,
      headers: dead.headers,
    };
    writing();
    if (job.kind === JobKind.Step) {
      const [run] = await sql.query<
        Array<{ workflow: string; state: string; current_step: number | string; concurrency_key: string | null }>
      >(
        `SELECT \`workflow\`, \`state\`, \`current_step\`, \`concurrency_key\` FROM ${t.runs} WHERE \`id\` = ? FOR UPDATE`,
        [dead.run_id],
      );
      if (!run || run.state !== 'failed' || Number(run.current_step) !== job.stepNumber) return false;
      job.ckey = run.concurrency_key;
      await sql.query(
        `UPDATE ${t.runs} SET \`state\` = '${RunRowState.Active}', \`current_job_id\` = ?, \`attempts\` = 0, \`result\` = NULL, \`error\` = NULL,
          \`finished_at\` = NULL, \`updated_at\` = ? WHERE \`id\` = ?`,
        [job.id, now, dead.run_id],
      );
      await recordChanges(ctx, sql, [{ workflow: run.workflow, from: run.state, to: RunRowState.Active }]);
    }
    await sql.query(...insertJobs(t, [job], now));
    await sql.query(`DELETE FROM ${t.dead} WHERE \`job_id\` = ?`, [jobId]);
    return true;
  });
}
