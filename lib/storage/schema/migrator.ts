import { Logger } from '@nestjs/common';
import { createHash } from 'node:crypto';
import type { SqlClient } from '../sql-client.js';
import { migrationsTableDdl, WORKFLOW_SCHEMA } from './migrations.js';

/**
 * Brings the schema up to date. Runs under GET_LOCK on one connection, so N processes
 * starting at once apply each version exactly once: the others wait, then find it done.
 */
export async function migrate(client: SqlClient, prefix: string, now: () => number): Promise<number[]> {
  const logger = new Logger('WorkflowMigrator');
  return client.withConnection(async (sql) => {
    const [{ db }] = await sql.query<Array<{ db: string }>>('SELECT DATABASE() AS db');
    // GET_LOCK names are server-wide and at most 64 characters.
    const lockName = `wf:${createHash('sha1').update(`${db}.${prefix}`).digest('hex').slice(0, 40)}`;
    const [{ got }] = await sql.query<Array<{ got: number | null }>>('SELECT GET_LOCK(?, 120) AS got', [lockName]);
    if (Number(got) !== 1) throw new Error(`Timed out waiting for the migration lock ${lockName}`);
    try {
      await sql.query(migrationsTableDdl(prefix));
      const rows = await sql.query<Array<{ version: number }>>(`SELECT \`version\` FROM \`${prefix}migrations\``);
      const applied = new Set(rows.map((r) => Number(r.version)));
      const done: number[] = [];
      for (const m of WORKFLOW_SCHEMA) {
        if (applied.has(m.version)) continue;
        for (const statement of m.statements(prefix)) await sql.query(statement);
        await sql.query(
          `INSERT INTO \`${prefix}migrations\` (\`version\`, \`name\`, \`applied_at\`) VALUES (?, ?, ?)`,
          [m.version, m.name, now()],
        );
        logger.log(`Applied schema version ${m.version} (${m.name}) with prefix "${prefix}"`);
        done.push(m.version);
      }
      return done;
    } finally {
      await sql.query('SELECT RELEASE_LOCK(?)', [lockName]).catch(() => undefined);
    }
  });
}
