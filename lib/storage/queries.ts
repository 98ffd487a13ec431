import type { RunRow } from './storage.types.js';
import type { StorageContext } from './tables.js';

/** One run with its current job's state, attempts and due time. */
export async function getRun(ctx: StorageContext, runId: string): Promise<RunRow | null> {
  const rows = await ctx.client.query<RunRow[]>(
    `SELECT r.*, j.\`state\` AS job_state, j.\`attempts\` AS job_attempts, j.\`run_at\` AS job_run_at, j.\`wait_for\` AS job_wait_for
      FROM ${ctx.t.runs} r LEFT JOIN ${ctx.t.jobs} j ON j.\`id\` = r.\`current_job_id\` WHERE r.\`id\` = ?`,
    [runId],
  );
  return rows[0] ?? null;
}
