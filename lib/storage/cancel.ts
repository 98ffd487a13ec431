import { createHash } from 'node:crypto';
import { liveChildren } from './queries.js';
import { CommitUnknownError, type Sql, type WriteResult } from './sql-client.js';
import { JobKind, JobState, RunRowState } from './storage.types.js';
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
 *          Either way, if the run has children that have not ended, a cascade mark
 *          (see finishCascade) that says they are still to be cancelled.
 * Locks:   the run's current job row, then the run row (the global order), re-checking
 *          that the run did not move to another step in between. Never a child's rows: a
 *          child's ending locks its own rows and then its parent's job row, so the two
 *          orders never cross. The children are read without locks, after the run's job
 *          row is held: a spawn that was settling has committed by then, and none can
 *          follow, as a cancelled or cancelling run spawns nothing more.
 * Crash:   before COMMIT, nothing changes; after, the worker sees `cancelling` (at once
 *          in-process, within about a second by polling) and settles `cancelled`, and
 *          the cascade mark stays until some process has cancelled the children. A COMMIT
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
      // Whether the unanswered COMMIT landed shows in the run's state (a locking read waits
      // for a COMMIT still being applied); if not, cancel again.
      const [run] = await ctx.client.query<Array<{ state: string }>>(
        `SELECT \`state\` FROM ${ctx.t.runs} WHERE \`id\` = ? FOR UPDATE`,
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
      await markCascade(ctx, sql, runId, now);
      return 'cancelling';
    }
    writing('cancelled');
    if (job) await sql.query(...deleteJobs(t, [job.id]));
    const at = job
      ? toClaimed(job, '', Number(job.attempts))
      : { stepNumber: 0, attempts: 0, priority: 0, headers: '{}' };
    const end = { runId, stepNumber: at.stepNumber, attempts: at.attempts, priority: at.priority, headers: at.headers };
    await endRun(sql, ctx, run, { ...end, status: 'cancelled' }, now);
    await markCascade(ctx, sql, runId, now);
    return 'cancelled';
  });
}

// ---------------------------------------------------------------- the cascade to children

/** The queue of cascade marks: no workflow or handler can be named so. */
const CASCADE_QUEUE = '~cascade';

/**
 * How long a process that walks a cascade holds its mark (renewing it as it goes) before
 * another process's maintenance takes it over: the delay after which a canceller that
 * died mid-walk has its walk finished.
 */
export const CASCADE_LEASE_MS = 3_000;

/**
 * A run has at most one pending cascade, so its mark's id is derived from the run id: the
 * walker deletes it by primary key, and a second cancel of a re-opened run before the
 * first walk ended adds nothing. '~' is outside ULIDs' alphabet, so no job id can clash.
 */
export function cascadeId(runId: string): string {
  return `~${createHash('sha256').update(runId).digest('base64url').slice(0, 25)}`;
}

/** In the cancel's transaction: a mark that the run's live children are still to be cancelled, if it has any. */
async function markCascade(ctx: StorageContext, sql: Sql, runId: string, now: number): Promise<void> {
  const [child] = await sql.query<Array<{ id: string }>>(
    `SELECT \`id\` FROM ${ctx.t.runs} FORCE INDEX (\`ix_parent\`) WHERE \`parent_run_id\` = ? AND \`finished_at\` IS NULL LIMIT 1`,
    [runId],
  );
  if (!child) return;
  // Due a lease from now: the canceller walks it at once, maintenance only if it does not finish.
  await sql.query(
    `INSERT INTO ${ctx.t.jobs} (\`id\`, \`queue\`, \`kind\`, \`state\`, \`priority\`, \`run_at\`, \`run_id\`, \`step_number\`,
      \`payload\`, \`headers\`, \`created_at\`) VALUES (?, '${CASCADE_QUEUE}', ${JobKind.Cascade}, ${JobState.Cascade}, 0, ?, ?, 0, '', '{}', ?)
      ON DUPLICATE KEY UPDATE \`run_at\` = VALUES(\`run_at\`)`,
    [cascadeId(runId), now + CASCADE_LEASE_MS, runId, now],
  );
}

/** Holds a run's cascade mark for another lease; false if there is none (finished, or never needed). */
async function holdCascade(ctx: StorageContext, runId: string, onlyIfDue: boolean): Promise<boolean> {
  const now = ctx.now();
  const r = await ctx.client.query<WriteResult>(
    `UPDATE ${ctx.t.jobs} FORCE INDEX (PRIMARY) SET \`run_at\` = ? WHERE \`id\` = ? AND \`state\` = ${JobState.Cascade}${onlyIfDue ? ' AND `run_at` <= ?' : ''}`,
    onlyIfDue ? [now + CASCADE_LEASE_MS, cascadeId(runId), now] : [now + CASCADE_LEASE_MS, cascadeId(runId)],
  );
  return r.affectedRows > 0;
}

/**
 * Cancels the live children of a cancelled run, and theirs, each in a transaction of its
 * own (cancelRun), and then deletes the run's cascade mark; a child's cancel leaves a mark
 * of its own when it has live children, which is walked next. Idempotent: a mark is
 * deleted only once every child below it is cancelled or cancelling, so a walk cut off
 * by a crash is taken up from the marks left, by this or any process
 * (takeDueCascades). Two walkers of one mark do the same work twice, and no harm.
 * `seen` hears of each run this walk cancelled or asked to cancel.
 */
export async function finishCascade(
  ctx: StorageContext,
  runId: string,
  seen?: (runId: string, result: CancelResult) => void,
): Promise<number> {
  let cancelled = 0;
  const stack = [runId];
  while (stack.length > 0) {
    const at = stack.pop()!;
    if (!(await holdCascade(ctx, at, false))) continue;
    let heldAt = Date.now();
    const below: string[] = [];
    for (const child of await liveChildren(ctx, at)) {
      const result = await cancelRun(ctx, child);
      if (result) {
        below.push(child);
        if (result !== 'already-cancelling') cancelled++;
        seen?.(child, result);
      }
      if (Date.now() - heldAt > CASCADE_LEASE_MS / 3) {
        await holdCascade(ctx, at, false);
        heldAt = Date.now();
      }
    }
    await ctx.client.query(`DELETE FROM ${ctx.t.jobs} WHERE \`id\` = ? AND \`state\` = ${JobState.Cascade}`, [
      cascadeId(at),
    ]);
    stack.push(...below.reverse());
  }
  return cancelled;
}

/**
 * Cascades whose walker stopped holding them (it died, or stalled past the lease), taken
 * for this process: the runs whose children are still to be cancelled, for finishCascade.
 */
export async function takeDueCascades(ctx: StorageContext, limit = 20): Promise<string[]> {
  const rows = await ctx.client.query<Array<{ run_id: string }>>(
    `SELECT \`run_id\` FROM ${ctx.t.jobs} FORCE INDEX (\`ix_state\`)
      WHERE \`state\` = ${JobState.Cascade} AND \`run_at\` <= ? ORDER BY \`run_at\` LIMIT ?`,
    [ctx.now(), limit],
  );
  const taken: string[] = [];
  for (const r of rows) if (await holdCascade(ctx, r.run_id, true)) taken.push(r.run_id);
  return taken;
}
