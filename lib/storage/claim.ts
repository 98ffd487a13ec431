import { admit, type FlowLimits } from './flow.js';
import { CommitUnknownError, runBatch } from './sql-client.js';
import type { Statement } from './transitions.js';
import { type ClaimedJob, JobState } from './storage.types.js';
import { CLAIM_COLUMNS, type JobRow, type StorageContext, toClaimed } from './tables.js';

/**
 * Leases up to `limit` ready jobs of one queue to `token`; `more` says whether another
 * ready one was left behind (the SELECT reads one row past the limit and leaves it to
 * the next claimer), and `next` where it is in claim order.
 *
 * `from` (a previous claim's `next`) starts the scan there instead of at the head of the
 * queue. In a deep drain the head of the claim index is a run of entries that earlier
 * claims moved out and the server has not purged yet: every claim from the head walks
 * them all (a third of the server's CPU on the single-step drain). A step that becomes
 * ready ahead of `from` is not seen by such a claim; the worker claims from the head at
 * least once per poll interval (bench/RESULTS.md, 2026-12-02 13:00 UTC).
 *
 * Commits: the rows leased, attempts + 1, one token per job, the lease end in the
 *          database clock (host clock skew cannot make two workers hold one job).
 * Locks:   the claimed job rows, FOR UPDATE SKIP LOCKED in claim-index order, so
 *          claimers pass each other.
 * Crash:   before COMMIT, nothing is claimed; after, a claim that loses its worker
 *          leaves leased rows the reaper returns when the lease expires, counting that
 *          delivery as an attempt. A COMMIT whose reply is lost: the rows leased to this
 *          claim's token are read back and run (were they left, each would spend an
 *          attempt without running).
 */
export async function claimBatch(
  ctx: StorageContext,
  queue: string,
  limit: number,
  token: string,
  leaseMs: number,
  maxAttempts: number,
  limits?: FlowLimits,
  from?: ClaimCursor,
): Promise<ClaimResult> {
  let tried: string[] = [];
  try {
    return await leaseReady(ctx, queue, limit, token, leaseMs, maxAttempts, limits, from, (ids) => (tried = ids));
  } catch (err) {
    if (!(err instanceof CommitUnknownError) || tried.length === 0) throw err;
    // A locking read: the server may still be applying that COMMIT, and a plain read
    // would see the rows as they were before it (still ready), leaving leases to expire.
    const rows = await ctx.client.query<JobRow[]>(
      `SELECT ${CLAIM_COLUMNS} FROM ${ctx.t.jobs} FORCE INDEX (PRIMARY)
        WHERE \`id\` IN (?) AND \`state\` = ${JobState.Leased} AND \`lease_token\` = CONCAT(?, '/', \`id\`) FOR UPDATE`,
      [tried, token],
    );
    return {
      jobs: rows.map((r) => withKeySlot(toClaimed(r, `${token}/${r.id}`, Number(r.attempts)), r, limits)),
      more: true,
    };
  }
}

/** A position in a queue's claim order (priority, run_at, id). */
export interface ClaimCursor {
  priority: number;
  runAt: number;
  id: string;
}

export interface ClaimResult {
  jobs: ClaimedJob[];
  /** A ready job was left behind. */
  more: boolean;
  /** The first ready job left behind, when the claim saw one. */
  next?: ClaimCursor;
  /** Steps were throttled by a rate limit whose window has room again in this many ms. */
  wakeInMs?: number;
}

/** A step counted against keyConcurrency carries its key, so its settlement frees the slot. */
function withKeySlot(job: ClaimedJob, row: JobRow, limits: FlowLimits | undefined): ClaimedJob {
  if (limits?.keyConcurrency && row.ckey != null) job.keySlot = row.ckey;
  return job;
}

async function leaseReady(
  ctx: StorageContext,
  queue: string,
  limit: number,
  token: string,
  leaseMs: number,
  maxAttempts: number,
  limits: FlowLimits | undefined,
  from: ClaimCursor | undefined,
  trying: (ids: string[]) => void,
): Promise<ClaimResult> {
  return ctx.client.transaction(async (sql) => {
    // Spelled out rather than a row comparison, which MariaDB's range optimizer does not use.
    const after = from
      ? 'AND (`priority` > ? OR (`priority` = ? AND (`run_at` > ? OR (`run_at` = ? AND `id` >= ?))))'
      : '';
    const found = await sql.query<JobRow[]>(
      `SELECT ${CLAIM_COLUMNS}, \`run_at\` FROM ${ctx.t.jobs} FORCE INDEX (\`ix_claim\`)
        WHERE \`queue\` = ? AND \`state\` = ${JobState.Ready} ${after}
        ORDER BY \`priority\`, \`run_at\`, \`id\` LIMIT ? FOR UPDATE SKIP LOCKED`,
      from ? [queue, from.priority, from.priority, from.runAt, from.runAt, from.id, limit + 1] : [queue, limit + 1],
    );
    let rows = found.slice(0, limit);
    if (rows.length === 0) return { jobs: [], more: false };
    const more = found.length > limit;
    const left = found[limit] as (JobRow & { run_at: number | string }) | undefined;
    const next = left && { priority: Number(left.priority), runAt: Number(left.run_at), id: left.id };
    // A runner without limits pays nothing here: the same two round trips as ever.
    let parked: Statement[] = [];
    let wakeInMs: number | undefined;
    if (limits) ({ admitted: rows, writes: parked, wakeInMs } = await admit(ctx, sql, queue, rows, limits));
    if (rows.length === 0) {
      await runBatch(sql, parked, true);
      return { jobs: [], more, next, wakeInMs };
    }
    trying(rows.map((r) => r.id));
    // The rows are locked by the SELECT, so the lease is right whatever the UPDATE
    // reports: it goes with the COMMIT in one round trip.
    await runBatch(
      sql,
      [
        ...parked,
        [
          // One token per job (claim token + job id), so a token never fences another job's row.
          `UPDATE ${ctx.t.jobs} FORCE INDEX (PRIMARY) SET \`state\` = ${JobState.Leased}, \`attempts\` = \`attempts\` + 1, \`lease_token\` = CONCAT(?, '/', \`id\`),
            \`lease_until\` = DATE_ADD(UTC_TIMESTAMP(3), INTERVAL ? MICROSECOND), \`max_attempts\` = COALESCE(\`max_attempts\`, ?),
            \`started_at\` = ? WHERE \`id\` IN (?)`,
          [token, leaseMs * 1000, maxAttempts, ctx.now(), rows.map((r) => r.id)],
        ],
      ],
      true,
    );
    const jobs = rows.map((r) =>
      withKeySlot(
        {
          ...toClaimed(r, `${token}/${r.id}`, Number(r.attempts) + 1),
          maxAttempts: Number(r.max_attempts ?? maxAttempts),
        },
        r,
        limits,
      ),
    );
    return { jobs, more, next, wakeInMs };
  });
}

/**
 * Which of these queues have a ready job waiting (no locks). A GROUP BY on the claim
 * index's leading column, with `state` fixed, is a loose index scan: a few index reads
 * per queue however deep its backlog.
 */
export async function readyQueues(ctx: StorageContext, queues: readonly string[]): Promise<Set<string>> {
  if (queues.length === 0) return new Set();
  const rows = await ctx.client.query<Array<{ queue: string }>>(
    `SELECT \`queue\` FROM ${ctx.t.jobs} FORCE INDEX (\`ix_claim\`)
      WHERE \`queue\` IN (?) AND \`state\` = ${JobState.Ready} GROUP BY \`queue\``,
    [queues],
  );
  return new Set(rows.map((r) => r.queue));
}

/**
 * Moves scheduled jobs whose time has come to ready.
 *
 * Commits: the due rows' state. Locks: those rows, SKIP LOCKED, so promoters never
 * queue behind each other. Crash: idempotent; the next tick promotes what is left.
 */
export async function promoteDue(ctx: StorageContext, limit = 500): Promise<number> {
  return ctx.client.transaction(async (sql) => {
    const rows = await sql.query<Array<{ id: string }>>(
      `SELECT \`id\` FROM ${ctx.t.jobs} FORCE INDEX (\`ix_state\`)
        WHERE \`state\` = ${JobState.Scheduled} AND \`run_at\` <= ? ORDER BY \`run_at\` LIMIT ? FOR UPDATE SKIP LOCKED`,
      [ctx.now(), limit],
    );
    if (rows.length === 0) return 0;
    await sql.query(
      `UPDATE ${ctx.t.jobs} FORCE INDEX (PRIMARY) SET \`state\` = ${JobState.Ready} WHERE \`id\` IN (?)`,
      [rows.map((r) => r.id)],
    );
    return rows.length;
  });
}
