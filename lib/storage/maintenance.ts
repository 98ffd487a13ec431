import { withNamedLock } from './named-lock.js';
import type { WriteResult } from './sql-client.js';
import { releaseKeySlot } from './flow.js';
import { settleOne } from './settle.js';
import { Settle } from './settlements.js';
import {
  type ClaimedJob,
  countedAttempts,
  type DeliveryRecord,
  JobKind,
  JobState,
  RunRowState,
} from './storage.types.js';
import { insertHistory } from './transitions.js';
import { recordChanges } from './counts.js';
import { CLAIM_COLUMNS, type JobRow, type StorageContext, toClaimed } from './tables.js';

/** What a promotion pass has to do: a flag per kind of due work. */
export interface DueWork {
  promote: boolean;
  timeouts: boolean;
  schedules: boolean;
}

/**
 * Whether anything is due: scheduled steps, timed-out waits, schedule ticks. One plain
 * read (one index probe each, no transaction, no locks), so an idle poll costs a round
 * trip instead of a locking transaction per kind; the passes that find work lock what
 * they change as before. A row committed after this read is seen by the next poll, as
 * it would have been by the locking reads.
 */
export async function dueWork(ctx: StorageContext): Promise<DueWork> {
  const now = ctx.now();
  const [row] = await ctx.client.query<Array<Record<keyof DueWork, number | string>>>(
    `SELECT EXISTS(SELECT 1 FROM ${ctx.t.jobs} FORCE INDEX (\`ix_state\`) WHERE \`state\` = ${JobState.Scheduled} AND \`run_at\` <= ?) AS \`promote\`,
      EXISTS(SELECT 1 FROM ${ctx.t.jobs} FORCE INDEX (\`ix_state\`) WHERE \`state\` = ${JobState.Waiting} AND \`run_at\` <= ?) AS \`timeouts\`,
      EXISTS(SELECT 1 FROM ${ctx.t.schedules} FORCE INDEX (\`ix_due\`) WHERE \`next_run_at\` <= ?) AS \`schedules\``,
    [now, now, now],
  );
  return {
    promote: Number(row.promote) === 1,
    timeouts: Number(row.timeouts) === 1,
    schedules: Number(row.schedules) === 1,
  };
}

/**
 * Returns jobs whose lease expired (their worker died or stalled) to the queue.
 *
 * Commits: each expired job requeued; or dead-lettered with its run failed when its
 *          attempts are spent (the cut-off delivery counts, so a step that kills its
 *          process every time does not loop forever); or, when its run is cancelling,
 *          the run cancelled.
 * Locks:   expired job rows, SKIP LOCKED, then their run rows, then dead rows.
 * Crash:   before COMMIT, nothing changes and the next tick reaps again.
 */
export async function reapExpired(
  ctx: StorageContext,
  limit = 100,
): Promise<{ requeued: number; dead: number; cancelled: number }> {
  const { t } = ctx;
  return ctx.client.transaction(async (sql) => {
    const rows = await sql.query<Array<JobRow & { lease_token: string }>>(
      `SELECT ${CLAIM_COLUMNS}, \`lease_token\` FROM ${t.jobs} FORCE INDEX (\`ix_state\`)
        WHERE \`state\` = ${JobState.Leased} AND \`lease_until\` < UTC_TIMESTAMP(3) LIMIT ? FOR UPDATE SKIP LOCKED`,
      [limit],
    );
    const counts = { requeued: 0, dead: 0, cancelled: 0 };
    if (rows.length === 0) return counts;
    const stepRunIds = rows.filter((r) => Number(r.kind) === JobKind.Step).map((r) => r.run_id);
    const cancelling = new Set(
      stepRunIds.length
        ? (
            await sql.query<Array<{ id: string }>>(
              `SELECT \`id\` FROM ${t.runs} WHERE \`id\` IN (?) AND \`state\` = '${RunRowState.Cancelling}'`,
              [stepRunIds],
            )
          ).map((r) => r.id)
        : [],
    );
    const requeue: string[] = [];
    const freed = new Map<string, { queue: string; key: string }>();
    const cutOff: Array<{ job: ClaimedJob; record: DeliveryRecord }> = [];
    for (const row of rows) {
      const job = toClaimed(row, row.lease_token, Number(row.attempts));
      // The delivery its worker never settled; its history row says so (the worker is known by its lease token's tag).
      const record: DeliveryRecord | undefined =
        job.kind === JobKind.Step && ctx.history
          ? {
              startedAt: Number(row.started_at ?? ctx.now()),
              outcome: 'lease-expired',
              error: 'lease expired: the worker running it died or stalled',
              worker: `lease ${row.lease_token.split('.')[0]}`,
            }
          : undefined;
      // Whatever claimed it counted it against its key: settled or requeued, the slot is free again.
      if (row.ckey != null) job.keySlot = row.ckey;
      if (job.kind === JobKind.Step && cancelling.has(job.runId)) {
        await settleOne(ctx, sql, { job, settlement: Settle.observeCancel(), record });
        counts.cancelled++;
      } else if (countedAttempts(job) >= job.maxAttempts) {
        const error = `lease expired ${countedAttempts(job)} times: the worker running it died or stalled (last delivery cut off)`;
        await settleOne(ctx, sql, { job, settlement: Settle.deadLetter(error), record });
        counts.dead++;
      } else {
        requeue.push(job.id);
        if (record) cutOff.push({ job, record });
        if (job.keySlot !== undefined)
          freed.set(`${job.queue}\n${job.keySlot}`, { queue: job.queue, key: job.keySlot });
      }
    }
    if (requeue.length) {
      await sql.query(
        `UPDATE ${t.jobs} FORCE INDEX (PRIMARY) SET \`state\` = ${JobState.Ready}, \`lease_token\` = NULL, \`lease_until\` = NULL,
          \`last_error\` = 'lease expired: the worker running it died or stalled' WHERE \`id\` IN (?)`,
        [requeue],
      );
      counts.requeued = requeue.length;
      if (cutOff.length) await sql.query(...insertHistory(t, cutOff, ctx.now()));
      for (const f of freed.values()) await releaseKeySlot(ctx, sql, f.queue, f.key);
    }
    return counts;
  });
}

/**
 * Deletes finished runs (with their mailboxes) and dead letters older than the cut-offs.
 * A child run goes no sooner than its parent: the step after the parent's spawn reads
 * every child's outcome, however long the join took. A parent takes its finished children
 * with it (those that ended after it, say of a cancelled parent), so no run is left
 * naming a parent that is gone.
 *
 * Commits: small batches by index range, each its own transaction, so none holds many locks.
 * Locks:   a named lock for the whole sweep (one process sweeps at a time; the others
 *          skip and get null), then the rows of each batch.
 * Crash:   a partial sweep, which the next one continues.
 */
export async function sweepRetention(
  ctx: StorageContext,
  prefix: string,
  runsBefore: number,
  deadBefore: number,
  batch = 500,
): Promise<{ runs: number; dead: number } | null> {
  return withNamedLock(ctx.client, 'retention', prefix, 0, async (sql) => {
    let runs = 0;
    for (;;) {
      const ids = (
        await sql.query<Array<{ id: string }>>(
          `SELECT r.\`id\` FROM ${ctx.t.runs} AS r FORCE INDEX (\`ix_finished\`)
            LEFT JOIN ${ctx.t.runs} AS p ON p.\`id\` = r.\`parent_run_id\`
            WHERE r.\`finished_at\` < ? AND (r.\`parent_run_id\` IS NULL OR p.\`id\` IS NULL OR p.\`finished_at\` < ?)
            ORDER BY r.\`finished_at\` LIMIT ?`,
          [runsBefore, runsBefore, batch],
        )
      ).map((r) => r.id);
      if (ids.length === 0) break;
      const children = (
        await sql.query<Array<{ id: string }>>(
          `SELECT \`id\` FROM ${ctx.t.runs} FORCE INDEX (\`ix_parent\`) WHERE \`parent_run_id\` IN (?) AND \`finished_at\` >= ?`,
          [ids, runsBefore],
        )
      ).map((r) => r.id);
      runs += await deleteRuns(ctx, ids, children, runsBefore);
      if (ids.length < batch) break;
    }
    let dead = 0;
    for (;;) {
      const r = await sql.query<WriteResult>(
        `DELETE FROM ${ctx.t.dead} WHERE \`dead_at\` < ? ORDER BY \`dead_at\` LIMIT ?`,
        [deadBefore, batch],
      );
      dead += r.affectedRows;
      if (r.affectedRows < batch) break;
    }
    return { runs, dead };
  });
}

/**
 * One retention batch in one transaction: the runs (those still finished as the lock
 * finds them: a retried dead step may have re-opened one), their mailboxes and history,
 * and their share of the counts.
 */
async function deleteRuns(ctx: StorageContext, ids: string[], children: string[], before: number): Promise<number> {
  const { t } = ctx;
  return ctx.client.transaction(async (sql) => {
    const locked = await sql.query<Array<{ id: string; workflow: string; state: string; finished_at: number | null }>>(
      `SELECT \`id\`, \`workflow\`, \`state\`, \`finished_at\` FROM ${t.runs} FORCE INDEX (PRIMARY) WHERE \`id\` IN (?) FOR UPDATE`,
      [[...ids, ...children]],
    );
    const mine = new Set(ids);
    const gone = locked.filter((r) => r.finished_at !== null && (!mine.has(r.id) || Number(r.finished_at) < before));
    if (gone.length === 0) return 0;
    const goneIds = gone.map((r) => r.id);
    await sql.query(`DELETE FROM ${t.signals} WHERE \`run_id\` IN (?)`, [goneIds]);
    await sql.query(`DELETE FROM ${t.history} WHERE \`run_id\` IN (?)`, [goneIds]);
    await sql.query(`DELETE FROM ${t.runs} WHERE \`id\` IN (?)`, [goneIds]);
    await recordChanges(
      ctx,
      sql,
      gone.map((r) => ({ workflow: r.workflow, from: r.state })),
    );
    return gone.length;
  });
}
