import type { Sql } from './sql-client.js';
import { handlerOf, JobKind, JobState, TERMINAL_QUEUE_PREFIX } from './storage.types.js';
import { CLAIM_COLUMNS, type JobRow, type StorageContext, toClaimed } from './tables.js';
import { insertDead, type Statement } from './transitions.js';

/** A process's @OnTerminal handler: its delivery queue and the workflows it wants (undefined: every one). */
export interface HostedHandler {
  queue: string;
  workflows?: readonly string[];
}

/** The handlers table's word for "every workflow". */
const EVERY = '*';
/** A handler no live process has re-registered for this long is gone (renamed or removed). */
export const HANDLER_TTL_MS = 10 * 60_000;

/**
 * Which @OnTerminal handlers the live processes of this application host, kept in the
 * database so that a run's deliveries never depend on the process that ends it. Each
 * worker process registers its handlers at start and re-registers them every
 * heartbeat; settlements read the table in their own transaction. A small cache says
 * which workflows have handlers, only so that runs without any can settle in one round
 * trip; a guard in that trip checks the table, so the cache is never trusted blindly.
 */
export class HandlerDirectory {
  private rows: Array<{ workflow: string; queue: string }> = [];

  /** Handlers the cache knows for `workflow`; a hint, checked in every transaction that relies on it. */
  cachedFor(workflow: string): number {
    return this.rows.filter((r) => r.workflow === workflow || r.workflow === EVERY).length;
  }

  remember(rows: Array<{ workflow: string; queue: string }>, workflows?: readonly string[]): void {
    // `rows` is everything the table holds for `workflows` and for every-workflow handlers.
    if (!workflows) this.rows = rows;
    else this.rows = [...this.rows.filter((r) => r.workflow !== EVERY && !workflows.includes(r.workflow)), ...rows];
  }
}

/** The statement that reads the handlers of these workflows. */
export function readHandlers(ctx: StorageContext, workflows: string[]): Statement {
  return [
    `SELECT \`workflow\`, \`queue\` FROM ${ctx.t.handlers} WHERE \`workflow\` IN (?)`,
    [[...new Set(workflows), EVERY]],
  ];
}

/** A guard (see countIs) that trips when any of these workflows has a handler after all. */
export function noHandlersGuard(ctx: StorageContext, workflows: string[]): Statement {
  return [
    `SET @wf_guard = ~0 + ((SELECT COUNT(*) FROM ${ctx.t.handlers} WHERE \`workflow\` IN (?)) <> 0)`,
    [[...new Set(workflows), EVERY]],
  ];
}

/** Delivery queues per workflow, from rows `readHandlers` returned (also refreshing the cache). */
export function queuesByWorkflow(
  ctx: StorageContext,
  rows: Array<{ workflow: string; queue: string }>,
  workflows: string[],
): (workflow: string) => string[] {
  ctx.handlers.remember(rows, workflows);
  return (workflow) =>
    [...new Set(rows.filter((r) => r.workflow === workflow || r.workflow === EVERY).map((r) => r.queue))].sort();
}

/** Reads the delivery queues of these workflows inside a transaction. */
export async function handlerQueues(
  ctx: StorageContext,
  sql: Sql,
  workflows: string[],
): Promise<(workflow: string) => string[]> {
  const rows = await sql.query<Array<{ workflow: string; queue: string }>>(...readHandlers(ctx, workflows));
  return queuesByWorkflow(ctx, rows, workflows);
}

/**
 * Registers (or re-registers: a heartbeat) the handlers this process hosts.
 *
 * Commits: one row per (handler, workflow) with this process's `seen_at`; rows of these
 *          handlers for workflows they no longer want are removed (a process still
 *          running older code puts them back at its next heartbeat, until it is gone).
 * Locks:   those handler rows only. Crash: idempotent; the next heartbeat writes again.
 */
export async function registerHandlers(ctx: StorageContext, hosted: HostedHandler[]): Promise<void> {
  if (hosted.length === 0) return;
  const now = ctx.now();
  const rows = hosted.flatMap((h) => (h.workflows ? [...new Set(h.workflows)] : [EVERY]).map((w) => [h.queue, w, now]));
  await ctx.client.transaction(async (sql) => {
    for (const h of hosted) {
      await sql.query(`DELETE FROM ${ctx.t.handlers} WHERE \`queue\` = ? AND \`workflow\` NOT IN (?)`, [
        h.queue,
        h.workflows ? [...new Set(h.workflows)] : [EVERY],
      ]);
    }
    await sql.query(
      `INSERT INTO ${ctx.t.handlers} (\`queue\`, \`workflow\`, \`seen_at\`) VALUES ? ON DUPLICATE KEY UPDATE \`seen_at\` = GREATEST(\`seen_at\`, ?)`,
      [rows, now],
    );
  });
}

/**
 * Dead-letters the deliveries of handlers that no live process hosts any more.
 *
 * Commits: handler rows not re-registered for HANDLER_TTL_MS removed; each waiting
 *          delivery of a queue without a live handler, older than that, moved to the
 *          dead letters with a message naming the handler (so `deadSteps()` shows it and
 *          `retryDead()` re-drives it once the handler is back).
 * Locks:   those job rows (SKIP LOCKED), then dead rows. Crash: the next sweep goes on.
 */
export async function expireHandlers(ctx: StorageContext, limit = 200): Promise<number> {
  const now = ctx.now();
  const cutoff = now - HANDLER_TTL_MS;
  return ctx.client.transaction(async (sql) => {
    await sql.query(`DELETE FROM ${ctx.t.handlers} WHERE \`seen_at\` < ?`, [cutoff]);
    const queues = (
      await sql.query<Array<{ queue: string }>>(
        `SELECT \`queue\` FROM ${ctx.t.jobs} FORCE INDEX (\`ix_claim\`) WHERE \`queue\` LIKE '${TERMINAL_QUEUE_PREFIX}%' GROUP BY \`queue\``,
      )
    ).map((r) => r.queue);
    if (queues.length === 0) return 0;
    const live = new Set(
      (
        await sql.query<Array<{ queue: string }>>(
          `SELECT DISTINCT \`queue\` FROM ${ctx.t.handlers} WHERE \`queue\` IN (?)`,
          [queues],
        )
      ).map((r) => r.queue),
    );
    const orphaned = queues.filter((q) => !live.has(q));
    if (orphaned.length === 0) return 0;
    const rows = await sql.query<JobRow[]>(
      `SELECT ${CLAIM_COLUMNS} FROM ${ctx.t.jobs} FORCE INDEX (\`ix_claim\`)
        WHERE \`queue\` IN (?) AND \`state\` IN (${JobState.Ready}, ${JobState.Scheduled}) AND \`kind\` = ${JobKind.Terminal} AND \`created_at\` < ?
        LIMIT ? FOR UPDATE SKIP LOCKED`,
      [orphaned, cutoff, limit],
    );
    for (const row of rows) {
      const job = toClaimed(row, '', Number(row.attempts));
      const handler = handlerOf(job.queue);
      const error =
        `no running process hosts the @OnTerminal handler ${handler} (renamed or removed?): ` +
        `not seen for ${Math.round(HANDLER_TTL_MS / 60_000)} minutes. retryDead() re-drives this delivery once a process hosts it again.`;
      await sql.query(...insertDead(ctx.t, job, error, now));
    }
    if (rows.length) await sql.query(`DELETE FROM ${ctx.t.jobs} WHERE \`id\` IN (?)`, [rows.map((r) => r.id)]);
    return rows.length;
  });
}
