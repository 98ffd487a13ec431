import { CommitUnknownError } from './sql-client.js';
import { JobState, RunRowState } from './storage.types.js';
import { CLAIM_COLUMNS, type JobRow, type StorageContext, toClaimed } from './tables.js';
import { deleteJobs, endRun, isLive, type LockedRun } from './transitions.js';

export type CancelResult = 'cancelled' | 'cancelling' | 'already-cancelling' | false;

/**
 * Cancels a run from any process.
 *
 * Commits: a waiting step deleted and the run cancelled with its terminal deliveries;
 *          or, for a step that is running, the run marked `cancelling` for its worker
 *          to abort and settle.
 * Locks:   the run's current job row, then the run row (the global order), re-checking
 *          that the run did not move to another step in between.
 * Crash:   before COMMIT, nothing changes; after, the worker sees `cancelling` (at once
 *          in-process, within about a second by polling) and settles `cancelled`. A COMMIT
 *          whose reply is lost is judged by the run's state, and the cancel tried again if
 *          it did not land, so the answer is true whenever the run is being cancelled.
 */
export async function cancelRun(ctx: StorageContext, runId: string): Promise<CancelResult> {
  for (let lost = 0; ; lost++) {
    const seen: { intended: CancelResult } = { intended: false };
    try {
      return await cancelOnce(ctx, runId, (r) => (seen.intended = r));
    } catch (err) {
      if (!(err instanceof CommitUnknownError) || lost >= 3) throw err;
      // Whether the unanswered COMMIT landed shows in the run's state; if not, cancel again.
      const [run] = await ctx.client.query<Array<{ state: string }>>(
        `SELECT \`state\` FROM ${ctx.t.runs} WHERE \`id\` = ?`,
        [runId],
      );
      if (seen.intended === 'cancelled' && run?.state === 'cancelled') return 'cancelled';
      if (seen.intended === 'cancelling' && (run?.state === RunRowState.Cancelling || run?.state === 'cancelled'))
        return 'cancelling';
    }
  }
}

async function cancelOnce(
  ctx: StorageContext,
  runId: string,
  writing: (r: CancelResult) => void,
): Promise<CancelResult> {
  const { t } = ctx;
  return ctx.client.transaction(async (sql) => {
    for (;;) {
      const [peek] = await sql.query<Array<{ state: string; current_job_id: string | null }>>(
        `SELECT \`state\`, \`current_job_id\` FROM ${t.runs} WHERE \`id\` = ?`,
        [runId],
      );
      if (!peek || !isLive(peek.state)) return false;
      if (peek.state === RunRowState.Cancelling) return 'already-cancelling';
      const jobs = peek.current_job_id
        ? await sql.query<Array<JobRow & { state: number | string }>>(
            `SELECT ${CLAIM_COLUMNS}, \`state\` FROM ${t.jobs} WHERE \`id\` = ? FOR UPDATE`,
            [peek.current_job_id],
          )
        : [];
      const [run] = await sql.query<Array<LockedRun & { current_job_id: string | null }>>(
        `SELECT \`id\`, \`workflow\`, \`state\`, \`submitted_at\`, \`ending\`, \`parent_run_id\`, \`current_job_id\` FROM ${t.runs} WHERE \`id\` = ? FOR UPDATE`,
        [runId],
      );
      if (!run || !isLive(run.state)) return false;
      if (run.state === RunRowState.Cancelling) return 'already-cancelling';
      if (run.current_job_id !== peek.current_job_id) continue; // moved on meanwhile
      const job = jobs[0];
      const now = ctx.now();
      if (job && Number(job.state) === JobState.Leased) {
        writing('cancelling');
        await sql.query(
          `UPDATE ${t.runs} SET \`state\` = '${RunRowState.Cancelling}', \`updated_at\` = ? WHERE \`id\` = ?`,
          [now, runId],
        );
        return 'cancelling';
      }
      writing('cancelled');
      if (job) await sql.query(...deleteJobs(t, [job.id]));
      const at = job
        ? toClaimed(job, '', Number(job.attempts))
        : { runId, stepNumber: 0, attempts: 0, priority: 0, headers: '{}' };
      await endRun(
        sql,
        ctx,
        run,
        {
          runId,
          stepNumber: at.stepNumber,
          attempts: at.attempts,
          priority: at.priority,
          headers: at.headers,
          status: 'cancelled',
        },
        now,
      );
      return 'cancelled';
    }
  });
}
