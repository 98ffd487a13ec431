import { runBatch, type WriteResult } from './sql-client.js';
import { JobState, RunRowState } from './storage.types.js';
import type { StorageContext } from './tables.js';

/**
 * Pushes the leases of jobs this process holds to at least `ms` from now (database
 * clock). Returns the ids whose lease is no longer ours. The renewal is fenced by the
 * tokens, the read tells which ones held.
 *
 * With `skipLocked` (the lease keeper's round over every job in flight), rows another
 * transaction holds are left for the next round instead of waited for: most often it is
 * this process's own settlement of that job, and one settlement waiting on a lock or a
 * slow commit would otherwise hold up the renewal of every other lease the process has,
 * until they ran out under live steps. A row so held cannot be reaped meanwhile (the
 * reaper skips locked rows too). Two round trips on the own pool, as without.
 */
export async function renewLeases(
  ctx: StorageContext,
  jobs: Array<{ id: string; token: string }>,
  ms: number,
  options: { skipLocked?: boolean } = {},
): Promise<string[]> {
  if (jobs.length === 0) return [];
  const ids = jobs.map((j) => j.id);
  const tokens = [...new Set(jobs.map((j) => j.token))];
  const renew = (which: string[]): [string, unknown[]] => [
    `UPDATE ${ctx.t.jobs} FORCE INDEX (PRIMARY) SET \`lease_until\` = GREATEST(\`lease_until\`, DATE_ADD(UTC_TIMESTAMP(3), INTERVAL ? MICROSECOND))
      WHERE \`id\` IN (?) AND \`lease_token\` IN (?) AND \`state\` = ${JobState.Leased}`,
    [ms * 1000, which, tokens],
  ];
  const read: [string, unknown[]] = [
    `SELECT \`id\`, \`lease_token\` FROM ${ctx.t.jobs} WHERE \`id\` IN (?) AND \`state\` = ${JobState.Leased}`,
    [ids],
  ];
  let held: Array<{ id: string; lease_token: string }>;
  if (options.skipLocked) {
    held = await ctx.client.transaction(async (sql) => {
      const free = await sql.query<Array<{ id: string }>>(
        `SELECT \`id\` FROM ${ctx.t.jobs} FORCE INDEX (PRIMARY) WHERE \`id\` IN (?) AND \`lease_token\` IN (?)
          AND \`state\` = ${JobState.Leased} FOR UPDATE SKIP LOCKED`,
        [ids, tokens],
      );
      const statements = free.length ? [renew(free.map((f) => f.id)), read] : [read];
      const results = await runBatch(sql, statements, true);
      return results[results.length - 1];
    });
  } else {
    await ctx.client.query<WriteResult>(...renew(ids));
    held = await ctx.client.query(...read);
  }
  const ours = new Set(held.map((h) => `${h.id}/${h.lease_token}`));
  return jobs.filter((j) => !ours.has(`${j.id}/${j.token}`)).map((j) => j.id);
}

/** Runs among these that a `cancel()` from any process has marked cancelling. */
export async function cancellingAmong(ctx: StorageContext, runIds: string[]): Promise<string[]> {
  if (runIds.length === 0) return [];
  const rows = await ctx.client.query<Array<{ id: string }>>(
    `SELECT \`id\` FROM ${ctx.t.runs} WHERE \`id\` IN (?) AND \`state\` = '${RunRowState.Cancelling}'`,
    [runIds],
  );
  return rows.map((r) => r.id);
}
