import { CommitUnknownError } from './sql-client.js';
import { JobState, RunRowState } from './storage.types.js';
import { type StorageContext, toClaimed } from './tables.js';
import { deleteJobs, endRun, lockCurrent } from './transitions.js';
import { recordChanges } from './counts.js';

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
    const current = await lockCurrent(sql, t, runId);
    if (!current) return false;
    const { run, job } = current;
    if (run.state === RunRowState.Cancelling) return 'already-cancelling';
    const now = ctx.now();
    if (job && Number(job.state) === JobState.Leased) {
      writing('cancelling');
      await sql.query(
        `UPDATE ${t.runs} SET \`state\` = '${RunRowState.Cancelling}', \`updated_at\` = ? WHERE \`id\` = ?`,
        [now, runId],
      );
      await recordChanges(ctx, sql, [{ workflow: run.workflow, from: run.state, to: RunRowState.Cancelling }]);
      return 'cancelling';
    }
    writing('cancelled');
    if (job) await sql.query(...deleteJobs(t, [job.id]));
    const at = job
      ? toClaimed(job, '', Number(job.attempts))
      : { stepNumber: 0, attempts: 0, priority: 0, headers: '{}' };
    const end = { runId, stepNumber: at.stepNumber, attempts: at.attempts, priority: at.priority, headers: at.headers };
    await endRun(sql, ctx, run, { ...end, status: 'cancelled' }, now);
    return 'cancelled';
  });
}
