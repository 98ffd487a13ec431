import { JobState, type RunRow } from './storage.types.js';
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

const BUSY = ['ready', 'due (scheduled)', 'running', 'timed out (waiting)'];

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
      WHERE \`queue\` IN (?) AND (\`state\` IN (${JobState.Ready}, ${JobState.Leased})
        OR (\`state\` IN (${JobState.Scheduled}, ${JobState.Waiting}) AND \`run_at\` <= ?))
      GROUP BY \`queue\`, \`state\``,
    [queues, now],
  );
  return rows.map((r) => ({ queue: r.queue, state: BUSY[Number(r.state)] ?? String(r.state), count: Number(r.n) }));
}
