/** Raw MySQL access for set-up, verification and server counters; never on the measured path of our module. */
import mysql from 'mysql2/promise';
import { WORKFLOW_TABLES } from 'nestjs-durable-workflow';

export async function mysqlConnection(url: string): Promise<mysql.Connection> {
  return mysql.createConnection({
    uri: url,
    supportBigNumbers: true,
    bigNumberStrings: false,
    multipleStatements: false,
  });
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
    for (const t of WORKFLOW_TABLES) await c.query(`DROP TABLE IF EXISTS \`${prefix}${t}\``);
  });
}

export async function scalar(c: mysql.Connection, sql: string, params: unknown[] = []): Promise<number> {
  const [rows] = await c.query(sql, params);
  const row = (rows as Array<Record<string, unknown>>)[0];
  return Number(row ? Object.values(row)[0] : NaN);
}

/**
 * Waits (up to `maxMs`) until InnoDB has written back what a bulk insert left dirty in
 * the buffer pool (as far as its page cleaner goes at rest) and purged its undo history, so the measurement after it is not also
 * measuring that background I/O. Returns how long it waited and what it saw last.
 */
export async function waitForQuietInnodb(
  url: string,
  maxMs = 120_000,
): Promise<{ waitedMs: number; dirtyPages: number; history: number }> {
  const started = Date.now();
  return withMysql(url, async (c) => {
    // Dirty pages a server keeps at rest vary; "done" is: few left, or no fewer than 3 s ago.
    const recent: number[] = [];
    for (;;) {
      const [rows] = await c.query(
        "SELECT NAME, `COUNT` FROM information_schema.INNODB_METRICS WHERE NAME IN ('buffer_pool_pages_dirty', 'trx_rseg_history_len')",
      );
      const m = new Map(
        (rows as Array<{ NAME: string; COUNT: number | string }>).map((r) => [r.NAME, Number(r.COUNT)]),
      );
      const seen = { dirtyPages: m.get('buffer_pool_pages_dirty') ?? 0, history: m.get('trx_rseg_history_len') ?? 0 };
      const waitedMs = Date.now() - started;
      recent.push(seen.dirtyPages);
      const settled = seen.dirtyPages < 1000 || (recent.length > 12 && seen.dirtyPages >= recent[recent.length - 13]);
      if ((settled && seen.history < 1000) || waitedMs > maxMs) return { waitedMs, ...seen };
      await new Promise((r) => setTimeout(r, 250));
    }
  });
}

/** Server-wide InnoDB deadlock and row-lock-wait counters (include any other load on the server). */
export async function innodbCounters(url: string): Promise<{ deadlocks: number; rowLockWaits: number } | null> {
  try {
    return await withMysql(url, async (c) => {
      const [rows] = await c.query(
        "SHOW GLOBAL STATUS WHERE Variable_name IN ('Innodb_deadlocks', 'Innodb_row_lock_waits')",
      );
      const m = new Map(
        (rows as Array<{ Variable_name: string; Value: string }>).map((r) => [r.Variable_name, Number(r.Value)]),
      );
      return { deadlocks: m.get('Innodb_deadlocks') ?? NaN, rowLockWaits: m.get('Innodb_row_lock_waits') ?? NaN };
    });
  } catch {
    return null;
  }
}

const STATEMENT_COUNTERS = [
  'Questions',
  'Com_set_option',
  'Com_begin',
  'Com_select',
  'Com_insert',
  'Com_update',
  'Com_delete',
  'Com_commit',
];

/** Statement counters of the whole server; diff two readings to see what a run sent. */
export async function statementCounters(url: string): Promise<Record<string, number> | null> {
  try {
    return await withMysql(url, async (c) => {
      const [rows] = await c.query(
        `SHOW GLOBAL STATUS WHERE Variable_name IN (${STATEMENT_COUNTERS.map(() => '?').join(', ')})`,
        STATEMENT_COUNTERS,
      );
      return Object.fromEntries(
        (rows as Array<{ Variable_name: string; Value: string }>).map((r) => [r.Variable_name, Number(r.Value)]),
      );
    });
  } catch {
    return null;
  }
}

/** Per-step statement counts between two readings (the readings' own statements are negligible). */
export function perStep(
  before: Record<string, number> | null,
  after: Record<string, number> | null,
  steps: number,
): Record<string, number> | undefined {
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
