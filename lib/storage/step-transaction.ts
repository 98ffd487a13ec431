import type { EntityManager } from 'typeorm';
import { LeaseLostError } from '../errors/lease-lost.error.js';
import { settleOne } from './settle.js';
import type { Settlement } from './settlements.js';
import { sqlOf } from './sql-client.js';
import { type ClaimedJob, type DeliveryRecord, JobState, publicJobId } from './storage.types.js';
import type { StorageContext } from './tables.js';

/** Thrown inside the transaction to roll the runner's writes back: the run was cancelled meanwhile. */
const CANCELLED = Symbol('cancelled during the step');

/**
 * `step.transaction(work)`: the runner's writes and the step's settlement, one commit.
 *
 * Commits: whatever `work` wrote through its manager, and the settlement `work` decided
 *          (settleOne, the careful path), together; nothing of either if the run turned
 *          out to be cancelling (the cancel is settled afterwards, on its own).
 * Locks:   this step's job row first, by id and lease token: while it is held no other
 *          delivery can settle the step and the reaper passes it by (SKIP LOCKED), so the
 *          lease cannot be lost halfway. Then what `work` locks (application rows, which
 *          no queue transaction touches), then the run row and the rest of the settlement
 *          in the global order. Every statement of ours goes by primary key: no gap locks.
 * Crash:   before COMMIT, neither the writes nor the settlement exist and the step runs
 *          again when its lease expires; after, both. A COMMIT whose reply is lost is
 *          thrown to the runner; the failure it then settles is fenced by the old token,
 *          so if the COMMIT did apply, that later settlement finds the lease gone.
 */
export async function settleWithin<T>(
  ctx: StorageContext,
  job: ClaimedJob,
  work: (manager: EntityManager) => Promise<{ value: T; settlement: Settlement; record?: DeliveryRecord }>,
): Promise<{ value: T; settlement: Settlement; cancelled: boolean }> {
  let decided: { value: T; settlement: Settlement; record?: DeliveryRecord } | undefined;
  try {
    return await ctx.client.dataSource.transaction('READ COMMITTED', async (manager) => {
      const sql = sqlOf(manager);
      const held = await sql.query<Array<{ id: string }>>(
        `SELECT \`id\` FROM ${ctx.t.jobs} FORCE INDEX (PRIMARY) WHERE \`id\` = ? AND \`lease_token\` = ? AND \`state\` = ${JobState.Leased} FOR UPDATE`,
        [job.id, job.token],
      );
      if (held.length === 0) {
        throw new LeaseLostError(
          publicJobId(job.id, job.kind, job.stepNumber),
          'its lease expired and another delivery took it',
        );
      }
      decided = await work(manager);
      const result = await settleOne(ctx, sql, { job, settlement: decided.settlement, record: decided.record });
      // 'lost' cannot happen under the row lock; 'cancelled': the step's writes go with the outcome it no longer has.
      if (result !== 'settled') throw CANCELLED;
      return { ...decided, cancelled: false };
    });
  } catch (err) {
    if (err === CANCELLED && decided) return { ...decided, cancelled: true };
    throw err;
  }
}
