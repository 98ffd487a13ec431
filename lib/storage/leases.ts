import type { WriteResult } from './sql-client.js';
import { JobState, RunRowState } from './storage.types.js';
import type { StorageContext } from './tables.js';

/**
 * Pushes the leases of jobs this process holds to at least `ms` from now (database
 * clock). Returns the ids whose lease is no longer ours. Two autocommit statements:
 * the renewal is fenced by the tokens, the read tells which ones held.
 */
export async function renewLeases(
  ctx: StorageContext,
  jobs: Array<{ id: string; token: string }>,
  ms: number,
): Promise<string[]> {
  if (jobs.length === 0) return [];
  const ids = jobs.map((j) => j.id);
  const tokens = [...new Set(jobs.map((j) => j.token))];
  await ctx.client.query<WriteResult>(
    `UPDATE ${ctx.t.jobs} FORCE INDEX (PRIMARY) SET \`lease_until\` = GREATEST(\`lease_until\`, DATE_ADD(UTC_TIMESTAMP(3), INTERVAL ? MICROSECOND))
      WHERE \`id\` IN (?) AND \`lease_token\` IN (?) AND \`state\` = ${JobState.Leased}`,
    [ms * 1000, ids, tokens],
  );
  const held = await ctx.client.query<Array<{ id: string; lease_token: string }>>(
    `SELECT \`id\`, \`lease_token\` FROM ${ctx.t.jobs} WHERE \`id\` IN (?) AND \`state\` = ${JobState.Leased}`,
    [ids],
  );
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
