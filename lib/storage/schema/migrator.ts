import { Logger } from '@nestjs/common';
import { WorkflowConfigError } from '../../errors/workflow-config.error.js';
import { MESSAGES } from '../../workflow.messages.js';
import { withNamedLock } from '../named-lock.js';
import type { SqlClient } from '../sql-client.js';
import { applyStatement, locksTableDdl, migrationsTableDdl, WORKFLOW_SCHEMA } from './migrations.js';

/**
 * Brings the schema up to date. Runs under the named lock "migrate", so N processes
 * starting at once (on one server or on any nodes of a cluster) apply each version
 * exactly once: the others wait, then find it done.
 */
export async function migrate(client: SqlClient, prefix: string, now: () => number): Promise<number[]> {
  const logger = new Logger('WorkflowMigrator');
  // The lock lives in this table, so it cannot wait for a migration; IF NOT EXISTS makes
  // N processes creating it at once harmless.
  await client.query(locksTableDdl(prefix));
  const applied = await withNamedLock(client, 'migrate', prefix, 120, async (sql) => {
    await sql.query(migrationsTableDdl(prefix));
    const rows = await sql.query<Array<{ version: number }>>(`SELECT \`version\` FROM \`${prefix}migrations\``);
    const seen = new Set(rows.map((r) => Number(r.version)));
    const done: number[] = [];
    for (const m of WORKFLOW_SCHEMA) {
      if (seen.has(m.version)) continue;
      for (const statement of m.statements(prefix)) await applyStatement((q) => sql.query(q), statement);
      await sql.query(`INSERT INTO \`${prefix}migrations\` (\`version\`, \`name\`, \`applied_at\`) VALUES (?, ?, ?)`, [
        m.version,
        m.name,
        now(),
      ]);
      logger.log(`Applied schema version ${m.version} (${m.name}) with prefix "${prefix}"`);
      done.push(m.version);
    }
    return done;
  });
  if (!applied) throw new WorkflowConfigError(MESSAGES.migrationLockTimeout(120));
  return applied;
}
