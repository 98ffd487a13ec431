import { newRun } from './new-run.js';
import { type ResolvedSchedule, latestTick, nextTick, tickRunId } from '../utils/schedule-spec.js';
import { runBatch, type WriteResult } from './sql-client.js';
import { type NewRun, RunRowState } from './storage.types.js';
import { insertRunsIn } from './submit.js';
import type { StorageContext } from './tables.js';

export interface ScheduleRow {
  id: string;
  workflow: string;
  cron: string;
  time_zone: string;
  input: string;
  input_hash: string;
  headers: string;
  overlap: 'skip' | 'allow';
  paused: number | string;
  next_run_at: number | string | null;
  last_run_id: string | null;
  concurrency_key: string | null;
}

const COLUMNS =
  '`id`, `workflow`, `cron`, `time_zone`, `input`, `input_hash`, `headers`, `overlap`, `paused`, `next_run_at`, `last_run_id`, `concurrency_key`';

/**
 * Creates or replaces schedule definitions, every row in one statement.
 *
 * Commits: each row's definition. An existing row keeps its next_run_at (and last_run_id)
 *          unless its cron, time zone or paused flag changed; then the next tick is
 *          computed afresh from now (null while paused). So every process of an app may
 *          upsert the same declared schedules at startup, at the same moment, and the
 *          first tick after creation is neither moved nor fired twice.
 * Locks:   the schedule rows by primary key (the ON DUPLICATE KEY path), nothing else.
 * Crash:   before COMMIT nothing changed; the statement is idempotent, so upserting again is safe.
 */
export async function upsertSchedules(ctx: StorageContext, schedules: ResolvedSchedule[]): Promise<void> {
  if (schedules.length === 0) return;
  const now = ctx.now();
  const next = memo((cron: string, timeZone: string) => nextTick(cron, timeZone, now));
  await ctx.client.query(
    // next_run_at is assigned first: later assignments in the list would otherwise make
    // `cron` etc. read the new values, and the comparison would always be "unchanged".
    // VALUES() is the form MySQL 8 and MariaDB both accept (MySQL's row alias is not MariaDB's).
    `INSERT INTO ${ctx.t.schedules} (${COLUMNS}, \`created_at\`, \`updated_at\`) VALUES ?
      ON DUPLICATE KEY UPDATE
        \`next_run_at\` = IF(\`cron\` = VALUES(\`cron\`) AND \`time_zone\` = VALUES(\`time_zone\`) AND \`paused\` = VALUES(\`paused\`),
          \`next_run_at\`, VALUES(\`next_run_at\`)),
        \`workflow\` = VALUES(\`workflow\`), \`cron\` = VALUES(\`cron\`), \`time_zone\` = VALUES(\`time_zone\`),
        \`input\` = VALUES(\`input\`), \`input_hash\` = VALUES(\`input_hash\`), \`headers\` = VALUES(\`headers\`),
        \`overlap\` = VALUES(\`overlap\`), \`paused\` = VALUES(\`paused\`), \`concurrency_key\` = VALUES(\`concurrency_key\`),
        \`updated_at\` = VALUES(\`updated_at\`)`,
    [
      schedules.map((s) => [
        s.id,
        s.workflow,
        s.cron,
        s.timeZone,
        s.input,
        s.inputHash,
        s.headers,
        s.overlap,
        s.paused ? 1 : 0,
        s.paused ? null : next(s.cron, s.timeZone),
        null,
        s.concurrencyKey,
        now,
        now,
      ]),
    ],
  );
}

/** Deletes one schedule (its runs stay). One statement by primary key. */
export async function deleteSchedule(ctx: StorageContext, id: string): Promise<boolean> {
  const r = await ctx.client.query<WriteResult>(`DELETE FROM ${ctx.t.schedules} WHERE \`id\` = ?`, [id]);
  return r.affectedRows > 0;
}

export async function listSchedules(ctx: StorageContext): Promise<ScheduleRow[]> {
  return ctx.client.query<ScheduleRow[]>(`SELECT ${COLUMNS} FROM ${ctx.t.schedules} ORDER BY \`id\``);
}

/** How many schedules have a tick due by `now` (for drainWorkflows): one range of ix_due. */
export async function dueSchedules(ctx: StorageContext, now: number): Promise<number> {
  const rows = await ctx.client.query<Array<{ n: number | string }>>(
    `SELECT COUNT(*) AS n FROM ${ctx.t.schedules} FORCE INDEX (\`ix_due\`) WHERE \`next_run_at\` <= ?`,
    [now],
  );
  return Number(rows[0]?.n ?? 0);
}

/** How long one call of fireDueSchedules goes on firing full batches (wall time, not the app's clock). */
const FIRE_BUDGET_MS = 1_000;

/**
 * Fires the schedules whose tick has come, batch after batch (one transaction each) until
 * fewer than `limit` are due or about a second has passed; the rest are due still and the
 * next promotion goes on. So ten thousand schedules on one cron fire at their tick, not
 * `limit` per poll interval (which with the default 250 ms would take 50 s, and past the
 * next tick for more than twelve thousand). Returns how many runs it started.
 */
export async function fireDueSchedules(
  ctx: StorageContext,
  priorityOf: (workflow: string) => number,
  maxAllowedPacket: number,
  limit = 50,
): Promise<{ created: number; more: boolean }> {
  const started = performance.now();
  let created = 0;
  for (;;) {
    const batch = await fireBatch(ctx, priorityOf, maxAllowedPacket, limit);
    created += batch.created;
    if (batch.due < limit) return { created, more: false };
    // Out of time with schedules still due: the caller goes on at once, after its other upkeep.
    if (performance.now() - started >= FIRE_BUDGET_MS) return { created, more: true };
  }
}

/**
 * One batch of due schedules: one run per tick, whichever process gets there.
 *
 * Commits: for each due schedule, the run of its latest tick at or before now (run id
 *          derived from schedule and tick, written by submit's own statements; ticks
 *          missed in between are not replayed), unless overlap is 'skip' and its previous
 *          run has not ended (the tick is dropped); then next_run_at moves to the first
 *          tick after now and last_run_id to the run this tick started.
 * Locks:   due schedule rows, in ix_due order, SKIP LOCKED (another process firing them
 *          holds them; it advances them, so they are not due any more when it commits);
 *          then, like submit, the new run rows and their step 0 jobs. Previous runs are
 *          read without a lock. No transaction locks a schedule row after a job or run
 *          row, so this cannot deadlock with the queue's transactions.
 * Crash:   before COMMIT nothing changed and the next tick fires the same run ids again;
 *          after, the ticks' runs exist once and the schedules point past now. A tick
 *          fired again (a lost COMMIT reply) finds its run id taken and creates nothing.
 */
async function fireBatch(
  ctx: StorageContext,
  priorityOf: (workflow: string) => number,
  maxAllowedPacket: number,
  limit: number,
): Promise<{ due: number; created: number }> {
  const { t } = ctx;
  return ctx.client.transaction(async (sql) => {
    const now = ctx.now();
    const rows = await sql.query<ScheduleRow[]>(
      `SELECT ${COLUMNS} FROM ${t.schedules} FORCE INDEX (\`ix_due\`)
        WHERE \`next_run_at\` <= ? AND \`paused\` = 0 ORDER BY \`next_run_at\` LIMIT ? FOR UPDATE SKIP LOCKED`,
      [now, limit],
    );
    if (rows.length === 0) return { due: 0, created: 0 };
    const previous = rows.filter((r) => r.overlap === 'skip' && r.last_run_id).map((r) => r.last_run_id!);
    const live = new Set(
      previous.length
        ? (
            await sql.query<Array<{ id: string }>>(
              `SELECT \`id\` FROM ${t.runs} WHERE \`id\` IN (?) AND \`state\` IN ('${RunRowState.Active}', '${RunRowState.Cancelling}')`,
              [previous],
            )
          ).map((r) => r.id)
        : [],
    );
    const runs: NewRun[] = [];
    const moves: Array<[string, unknown[]]> = [];
    // Schedules on one cron and zone share their ticks: computed once per batch, not per row.
    const latest = memo((cron: string, timeZone: string, due: number) => latestTick(cron, timeZone, due, now));
    const next = memo((cron: string, timeZone: string) => nextTick(cron, timeZone, now));
    for (const row of rows) {
      const tick = latest(row.cron, row.time_zone, Number(row.next_run_at));
      let lastRunId = row.last_run_id;
      if (!(row.overlap === 'skip' && lastRunId && live.has(lastRunId))) {
        lastRunId = tickRunId(row.id, tick);
        runs.push(tickRun(row, lastRunId, priorityOf(row.workflow), now));
      }
      moves.push([
        `UPDATE ${t.schedules} SET \`next_run_at\` = ?, \`last_run_id\` = ?, \`updated_at\` = ? WHERE \`id\` = ?`,
        [next(row.cron, row.time_zone), lastRunId, now, row.id],
      ]);
    }
    // An id already taken is this very tick fired before (a schedule deleted and declared
    // again with the same cron): that run stands, nothing more to create.
    const created = runs.length ? await insertRunsIn(ctx, sql, runs, () => undefined, maxAllowedPacket) : new Set();
    // One round trip on our own pool (one statement each on a shared DataSource).
    await runBatch(sql, moves);
    return { due: rows.length, created: created.size };
  });
}

/** `fn` remembered by its arguments (strings and numbers), for one statement's or batch's rows. */
function memo<A extends Array<string | number>, R>(fn: (...args: A) => R): (...args: A) => R {
  const seen = new Map<string, R>();
  return (...args: A) => {
    const key = args.join('\u0000');
    if (!seen.has(key)) seen.set(key, fn(...args));
    return seen.get(key)!;
  };
}

function tickRun(row: ScheduleRow, runId: string, priority: number, now: number): NewRun {
  return newRun({
    id: runId,
    workflow: row.workflow,
    input: row.input,
    inputHash: row.input_hash,
    headers: row.headers,
    priority,
    maxAttempts: null,
    now,
    scheduleId: row.id,
    concurrencyKey: row.concurrency_key ?? undefined,
  });
}
