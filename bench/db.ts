/** Raw MySQL access for set-up, verification and server counters; never on the measured path of our module. */
import mysql from 'mysql2/promise';

export async function mysqlConnection(url: string): Promise<mysql.Connection> {
  return mysql.createConnection({ uri: url, supportBigNumbers: true, bigNumberStrings: false, multipleStatements: false });
}

export async function withMysql<T>(url: string, fn: (c: mysql.Connection) => Promise<T>): Promise<T> {
  const c = await mysqlConnection(url);
  try {
    return await fn(c);
  } finally {
    await c.end().catch(() => undefined);
  }
}

/** Drops the module's tables for `prefix` so every measurement starts from an empty schema. */
export async function dropWorkflowTables(url: string, prefix: string): Promise<void> {
  await withMysql(url, async (c) => {
    for (const t of ['dead', 'jobs', 'runs', 'migrations']) await c.query(`DROP TABLE IF EXISTS \`${prefix}${t}\``);
  });
}

export async function scalar(c: mysql.Connection, sql: string, params: unknown[] = []): Promise<number> {
  const [rows] = await c.query(sql, params);
  const row = (rows as Array<Record<string, unknown>>)[0];
  return Number(row ? Object.values(row)[0] : NaN);
}

/** Server-wide InnoDB deadlock and row-lock-wait counters (include any other load on the server). */
export async function innodbCounters(url: string): Promise<{ deadlocks: number; rowLockWaits: number } | null> {
  try {
    return await withMysql(url, async (c) => {
      const [rows] = await c.query(
        "SHOW GLOBAL STATUS WHERE Variable_name IN ('Innodb_deadlocks', 'Innodb_row_lock_waits')",
      );
      const m = new Map((rows as Array<{ Variable_name: string; Value: string }>).map((r) => [r.Variable_name, Number(r.Value)]));
      return { deadlocks: m.get('Innodb_deadlocks') ?? NaN, rowLockWaits: m.get('Innodb_row_lock_waits') ?? NaN };
    });
  } catch {
    return null;
  }
}

const STATEMENT_COUNTERS = ['Questions', 'Com_set_option', 'Com_begin', 'Com_select', 'Com_insert', 'Com_update', 'Com_delete', 'Com_commit'];

/** Statement counters of the whole server; diff two readings to see what a run sent. */
export async function statementCounters(url: string): Promise<Record<string, number> | null> {
  try {
    return await withMysql(url, async (c) => {
      const [rows] = await c.query(
        `SHOW GLOBAL STATUS WHERE Variable_name IN (${STATEMENT_COUNTERS.map(() => '?').join(', ')})`,
        STATEMENT_COUNTERS,
      );
      return Object.fromEntries((rows as Array<{ Variable_name: string; Value: string }>).map((r) => [r.Variable_name, Number(r.Value)]));
    });
  } catch {
    return null;
  }
}

/** Per-step statement counts between two readings (the readings' own statements are negligible). */
export function perStep(before: Record<string, number> | null, after: Record<string, number> | null, steps: number): Record<string, number> | undefined {
  if (!before || !after || steps <= 0) return undefined;
  const out: Record<string, number> = {};
  for (const k of Object.keys(after)) {
    const name = k === 'Questions' ? 'statements' : k.replace(/^Com_/, '').replace('set_option', 'set');
    out[name] = (after[k] - (before[k] ?? 0)) / steps;
  }
  return out;
}

export function describePerStep(p: Record<string, number> | undefined): string | undefined {
  if (!p) return undefined;
  const parts = Object.entries(p)
    .filter(([k, v]) => k !== 'statements' && v >= 0.05)
    .map(([k, v]) => `${k} ${v.toFixed(1)}`);
  return `server: ${p.statements.toFixed(1)} statements/step (${parts.join(', ')}; server-wide counters)`;
}
