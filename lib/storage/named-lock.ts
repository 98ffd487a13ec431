import { createHash } from 'node:crypto';
import type { Sql, SqlClient } from './sql-client.js';

/** What a named lock guards; each name is fixed, since processes of two versions must agree on it. */
export type LockPurpose = 'migrate' | 'retention';

/** The server-wide GET_LOCK name (at most 64 characters) for one purpose on one database and prefix. */
export function lockName(purpose: LockPurpose, database: string, prefix: string): string {
  return purpose === 'migrate'
    ? `wf:${createHash('sha1').update(`${database}.${prefix}`).digest('hex').slice(0, 40)}`
    : `wfret:${database}.\`${prefix}runs\``.slice(0, 64);
}

/**
 * Runs `fn` on one connection while holding a named lock, or returns null when the lock
 * is not had within `timeoutS` seconds (0: try once). The lock is the session's, so it
 * ends with the connection if the process dies.
 */
export async function withNamedLock<T>(
  client: SqlClient,
  purpose: LockPurpose,
  prefix: string,
  timeoutS: number,
  fn: (sql: Sql) => Promise<T>,
): Promise<T | null> {
  return client.withConnection(async (sql) => {
    const [{ db }] = await sql.query<Array<{ db: string }>>('SELECT DATABASE() AS db');
    const name = lockName(purpose, db, prefix);
    const [{ got }] = await sql.query<Array<{ got: number | null }>>('SELECT GET_LOCK(?, ?) AS got', [name, timeoutS]);
    if (Number(got) !== 1) return null;
    try {
      return await fn(sql);
    } finally {
      await sql.query('SELECT RELEASE_LOCK(?)', [name]).catch(() => undefined);
    }
  });
}
