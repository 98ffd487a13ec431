import { ulid } from '../utils/ulid.js';
import type { Sql, WriteResult } from './sql-client.js';
import { JobState, RunRowState } from './storage.types.js';
import type { StorageContext, Tables } from './tables.js';
import type { Statement } from './transitions.js';

/**
 * Runs per workflow and row state, for listings and the dashboard, without counting the
 * runs table. Every transaction that creates, moves or deletes runs appends delta rows
 * (a fresh primary key each, so writers never wait on one another, and a caller's
 * REPEATABLE READ submit takes no lock anyone else wants); the total is the sum of the
 * table. `foldCounts` keeps the table small by replacing old deltas with their sums.
 */
export interface CountChange {
  workflow: string;
  /** Row state before: none for a new run. */
  from?: string;
  /** Row state after: none for a deleted run. */
  to?: string;
}

interface Delta {
  workflow: string;
  state: string;
  n: number;
}

/** One INSERT of these deltas summed per (workflow, state), zeros left out; undefined if nothing is left. */
function insertSums(t: Tables, deltas: Iterable<Delta>, now: number): Statement | undefined {
  const sums = new Map<string, Delta>();
  for (const d of deltas) {
    const k = `${d.workflow}\u0000${d.state}`;
    const s = sums.get(k) ?? { workflow: d.workflow, state: d.state, n: 0 };
    s.n += d.n;
    sums.set(k, s);
  }
  const rows = [...sums.values()].filter((s) => s.n !== 0).map((s) => [ulid(now), s.workflow, s.state, s.n]);
  if (rows.length === 0) return undefined;
  return [`INSERT INTO ${t.counts} (\`id\`, \`workflow\`, \`state\`, \`n\`) VALUES ?`, [rows]];
}

/** The delta rows for these changes (undefined when they cancel out). */
export function countChanges(t: Tables, changes: readonly CountChange[], now: number): Statement | undefined {
  const deltas: Delta[] = [];
  for (const c of changes) {
    if (c.from === c.to) continue;
    if (c.from !== undefined) deltas.push({ workflow: c.workflow, state: c.from, n: -1 });
    if (c.to !== undefined) deltas.push({ workflow: c.workflow, state: c.to, n: 1 });
  }
  return insertSums(t, deltas, now);
}

/** Writes the delta rows for these changes in the caller's transaction. */
export async function recordChanges(ctx: StorageContext, sql: Sql, changes: readonly CountChange[]): Promise<void> {
  const statement = countChanges(ctx.t, changes, ctx.now());
  if (statement) await sql.query(...statement);
}

/**
 * Replaces up to `limit` delta rows by one row per (workflow, state) holding their sum.
 * Rows locked by another fold are skipped, so folds on several processes never count a
 * row twice; readers see the table before or after, the sum is the same. Returns the rows
 * folded.
 */
export async function foldCounts(ctx: StorageContext, limit = 5000): Promise<number> {
  const { t } = ctx;
  return ctx.client.transaction(async (sql) => {
    const rows = await sql.query<Array<{ id: string; workflow: string; state: string; n: number | string }>>(
      `SELECT \`id\`, \`workflow\`, \`state\`, \`n\` FROM ${t.counts} ORDER BY \`id\` LIMIT ? FOR UPDATE SKIP LOCKED`,
      [limit],
    );
    const groups = new Set(rows.map((r) => `${r.workflow}\u0000${r.state}`));
    if (rows.length <= groups.size) return 0; // already one row per group
    const deleted = await sql.query<WriteResult>(`DELETE FROM ${t.counts} WHERE \`id\` IN (?)`, [
      rows.map((r) => r.id),
    ]);
    if (deleted.affectedRows !== rows.length) throw new Error('count rows changed under their lock');
    const kept = insertSums(
      t,
      rows.map((r) => ({ workflow: r.workflow, state: r.state, n: Number(r.n) })),
      ctx.now(),
    );
    if (kept) await sql.query(...kept);
    return rows.length;
  });
}

/** Live runs split by what their current step is doing, for the active row state. */
export interface LiveSplit {
  running: number;
  waiting: number;
}

/**
 * Row-state totals per workflow, and how many active runs of each workflow have their
 * step leased (running) or parked (waiting). The totals read the small counts table; the
 * split reads ix_claim ranges of live jobs only (step jobs sit in their workflow's queue),
 * so neither grows with finished runs.
 */
export async function readCounts(
  ctx: StorageContext,
): Promise<{ totals: Array<{ workflow: string; state: string; n: number }>; live: Map<string, LiveSplit> }> {
  const { t } = ctx;
  const totals = await ctx.client.query<Array<{ workflow: string; state: string; n: number | string }>>(
    `SELECT \`workflow\`, \`state\`, SUM(\`n\`) AS n FROM ${t.counts} GROUP BY \`workflow\`, \`state\``,
  );
  const live = new Map<string, LiveSplit>();
  const workflows = [...new Set(totals.filter((r) => r.state === RunRowState.Active).map((r) => r.workflow))];
  if (workflows.length) {
    // A cancelling run's step may still be leased: only active runs' steps count as running.
    const rows = await ctx.client.query<Array<{ queue: string; state: number | string; n: number | string }>>(
      `SELECT j.\`queue\`, j.\`state\`, COUNT(*) AS n FROM ${t.jobs} AS j FORCE INDEX (\`ix_claim\`)
        WHERE j.\`queue\` IN (?) AND j.\`state\` = ${JobState.Waiting}
        GROUP BY j.\`queue\`, j.\`state\`
      UNION ALL
      SELECT j.\`queue\`, j.\`state\`, COUNT(*) AS n FROM ${t.jobs} AS j FORCE INDEX (\`ix_claim\`)
        JOIN ${t.runs} AS r ON r.\`id\` = j.\`run_id\` AND r.\`current_job_id\` = j.\`id\` AND r.\`state\` = '${RunRowState.Active}'
        WHERE j.\`queue\` IN (?) AND j.\`state\` = ${JobState.Leased}
        GROUP BY j.\`queue\`, j.\`state\``,
      [workflows, workflows],
    );
    for (const r of rows) {
      const split = live.get(r.queue) ?? { running: 0, waiting: 0 };
      if (Number(r.state) === JobState.Waiting) split.waiting = Number(r.n);
      else split.running = Number(r.n);
      live.set(r.queue, split);
    }
  }
  return { totals: totals.map((r) => ({ workflow: r.workflow, state: r.state, n: Number(r.n) })), live };
}
