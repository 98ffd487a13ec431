import { JobState } from './storage.types.js';
import type { StorageContext, Tables } from './tables.js';

/**
 * How long the oldest due job has waited: the health check's lag, and the
 * `workflow.queue.lag` gauge. Reads only, no lock, autocommit; both stay index reads
 * whatever the queue holds.
 *
 * Reads:   `oldestDue`: the first entry of ix_state's Ready range (state, run_at), one
 *          index dive (the optimizer answers MIN from the index: "Select tables
 *          optimized away"); it is also the health check's proof that the database
 *          answers. `oldestDueByQueue`: per queue, a loose scan of ix_claim (queue,
 *          state, priority, run_at) that reads the first run_at of each (queue, Ready,
 *          priority) group ("Using index for group-by"): one entry per priority in use,
 *          never the ready rows themselves.
 * Clock:   run_at is the runtime clock (ms), so the wait is `ctx.now()` minus it. A
 *          ready job's run_at is when it became due (a promoted delay keeps its due
 *          time), so the wait counts from then. Held-back (keyConcurrency, rateLimit),
 *          delayed, waiting and leased jobs are not due work nobody took: not counted.
 */
export async function oldestDue(ctx: StorageContext): Promise<number | null> {
  const rows = await ctx.client.query<Array<{ oldest: number | string | null }>>(oldestDueSql(ctx.t));
  const oldest = rows[0]?.oldest;
  return oldest === null || oldest === undefined ? null : Number(oldest);
}

/** The due time of the oldest ready job of each of `queues` that has one. */
export async function oldestDueByQueue(ctx: StorageContext, queues: readonly string[]): Promise<Map<string, number>> {
  const oldest = new Map<string, number>();
  if (queues.length === 0) return oldest;
  const rows = await ctx.client.query<Array<{ queue: string; oldest: number | string }>>(oldestDueByQueueSql(ctx.t), [
    queues,
  ]);
  for (const r of rows) {
    const at = Number(r.oldest);
    const seen = oldest.get(r.queue);
    if (seen === undefined || at < seen) oldest.set(r.queue, at);
  }
  return oldest;
}

/** The statements, for the tests that EXPLAIN them. */
export const oldestDueSql = (t: Tables): string =>
  `SELECT MIN(\`run_at\`) AS oldest FROM ${t.jobs} FORCE INDEX (\`ix_state\`) WHERE \`state\` = ${JobState.Ready}`;

export const oldestDueByQueueSql = (t: Tables): string =>
  `SELECT \`queue\`, \`state\`, \`priority\`, MIN(\`run_at\`) AS oldest FROM ${t.jobs} FORCE INDEX (\`ix_claim\`)
    WHERE \`queue\` IN (?) AND \`state\` = ${JobState.Ready} GROUP BY \`queue\`, \`state\`, \`priority\``;
