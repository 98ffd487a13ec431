import { Logger } from '@nestjs/common';
import type { DataSource, EntityManager } from 'typeorm';

/** Something that runs one parameterized statement: a pooled connection or the caller's transaction. */
export interface Sql {
  query<T = any>(sql: string, params?: readonly unknown[]): Promise<T>;
  /** Several statements in one round trip where the connection allows it; results in order. */
  batch?(statements: Array<[string, readonly unknown[]]>): Promise<any[]>;
  /** Inside a transaction of our own pool: the statements and COMMIT in one round trip. */
  batchAndCommit?(statements: Array<[string, readonly unknown[]]>): Promise<any[]>;
}

/**
 * Runs statements in order, in one round trip when `sql` can. With `commit`, the
 * transaction's COMMIT rides along where the connection allows it (otherwise the
 * transaction commits as usual when its function returns), so the statements must
 * check their own preconditions: a failing statement stops the trip before COMMIT.
 */
export async function runBatch(
  sql: Sql,
  statements: Array<[string, readonly unknown[]]>,
  commit = false,
): Promise<any[]> {
  if (commit && sql.batchAndCommit) return sql.batchAndCommit(statements);
  if (sql.batch) return sql.batch(statements);
  const results: any[] = [];
  for (const [text, params] of statements) results.push(await sql.query(text, params));
  return results;
}

export interface WriteResult {
  affectedRows: number;
  insertId?: number;
}

/**
 * The connection broke after COMMIT was sent: the transaction may or may not have
 * committed, and only the database can say which. Never retried blindly; each operation
 * that can meet it looks for its own traces (a lease token, a submit key) and answers
 * from what it finds. Counts as a connection error.
 */
export class CommitUnknownError extends Error {
  readonly fatal = true;
  constructor(cause: unknown) {
    super(
      `the connection was lost while COMMIT was in flight (${(cause as Error)?.message ?? cause}); the outcome is unknown`,
      { cause },
    );
    this.name = 'CommitUnknownError';
  }
}

const DEADLOCK = 1213;
const LOCK_WAIT_TIMEOUT = 1205;

/** Deadlock or lock-wait timeout: the transaction was rolled back and may simply run again. */
export function isRetryableConflict(err: unknown): boolean {
  const errno = (err as { errno?: number })?.errno;
  return errno === DEADLOCK || errno === LOCK_WAIT_TIMEOUT;
}

/** The connection, not the statement, failed: the server is unreachable or went away. */
export function isConnectionError(err: unknown): boolean {
  const e = err as { fatal?: boolean; code?: string; errno?: number };
  if (!e || typeof e !== 'object') return false;
  if (e.fatal) return true;
  return (
    (typeof e.code === 'string' &&
      /^(ECONNREFUSED|ECONNRESET|EPIPE|ETIMEDOUT|ENOTFOUND|EHOSTUNREACH|PROTOCOL_CONNECTION_LOST|PROTOCOL_SEQUENCE_TIMEOUT|ER_SERVER_SHUTDOWN|ER_CON_COUNT_ERROR|POOL_CLOSED)$/.test(
        e.code,
      )) ||
    e.errno === 1053 /* server shutdown in progress */ ||
    e.errno === 2013 ||
    e.errno === 2006
  );
}

interface RawConnection {
  query(sql: string, params: unknown[] | undefined, cb: (err: Error | null, rows: unknown) => void): void;
  release(): void;
  destroy(): void;
}

/**
 * mysql2's callback API in a promise. Its own promise wrapper captures a stack trace
 * for every statement, which is a measurable share of a step transition.
 */
function run<T>(conn: RawConnection, sql: string, params?: readonly unknown[]): Promise<T> {
  return new Promise((resolve, reject) => {
    conn.query(sql, params as unknown[] | undefined, (err, rows) => (err ? reject(err) : resolve(rows as T)));
  });
}

/**
 * Connections and transactions over a TypeORM MySQL DataSource's own mysql2 pool.
 * Goes under TypeORM's QueryRunner on purpose: a step transition is a handful of
 * statements and the runner's per-query bookkeeping would dominate it.
 */
export class SqlClient {
  private readonly logger = new Logger(SqlClient.name);
  conflictRetries = 0;
  /** Connections of our own pool already switched to READ COMMITTED for their whole session. */
  private readonly readCommitted = new WeakSet<RawConnection>();

  /**
   * @param ownPool the module created this DataSource: its sessions are ours to set to
   *   READ COMMITTED once, instead of once per transaction (a shared pool's sessions are
   *   the application's and are left alone).
   */
  constructor(
    readonly dataSource: DataSource,
    private readonly ownPool = false,
  ) {}

  private async acquire(): Promise<RawConnection> {
    const driver = this.dataSource.driver as unknown as { obtainMasterConnection(): Promise<RawConnection> };
    return driver.obtainMasterConnection();
  }

  /** One statement on a pooled connection, outside any transaction. */
  async query<T = any>(sql: string, params?: readonly unknown[]): Promise<T> {
    return this.retryingStaleConnections(() => this.queryOnce<T>(sql, params));
  }

  /**
   * After a server restart the pool may still hold connections to the old server: each
   * fails at once and is destroyed, so a few quick retries reach a fresh one. Safe for
   * our statements: reads, fenced writes and idempotent submits.
   */
  private async retryingStaleConnections<T>(fn: () => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await fn();
      } catch (err) {
        if (!isConnectionError(err) || err instanceof CommitUnknownError || attempt >= 3) throw err;
        await new Promise((r) => setTimeout(r, 50 * (attempt + 1)));
      }
    }
  }

  private queryOnce<T>(sql: string, params?: readonly unknown[]): Promise<T> {
    return this.withConnection((conn) => conn.query<T>(sql, params));
  }

  /** Runs `fn` on one connection (for session-scoped locks such as GET_LOCK). */
  async withConnection<T>(fn: (sql: Sql) => Promise<T>): Promise<T> {
    const conn = await this.acquire();
    let broken = false;
    const sql: Sql & { conn: RawConnection } = {
      conn,
      query: (text, params) => run(conn, text, params),
      batch: this.ownPool
        ? async (statements) => {
            if (statements.length === 0) return [];
            let text = '';
            const params: unknown[] = [];
            for (const [statement, values] of statements) {
              text = text ? `${text};\n${statement}` : statement;
              for (const v of values) params.push(v);
            }
            const rows = await run<any>(conn, text, params);
            return statements.length === 1 ? [rows] : rows;
          }
        : undefined,
    };
    try {
      return await fn(sql);
    } catch (err) {
      broken = isConnectionError(err);
      throw err;
    } finally {
      if (broken) conn.destroy();
      else conn.release();
    }
  }

  /**
   * Runs `fn` in a READ COMMITTED transaction (no gap locks, so inserts never wait on a
   * claimer's range scan). Deadlocks and lock-wait timeouts roll back and run again.
   */
  async transaction<T>(fn: (sql: Sql) => Promise<T>, maxRetries = 8): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.retryingStaleConnections(() =>
          this.withConnection(async (sql) => {
            const conn = (sql as Sql & { conn: RawConnection }).conn;
            if (!this.ownPool) {
              await sql.query('SET TRANSACTION ISOLATION LEVEL READ COMMITTED');
            } else if (!this.readCommitted.has(conn)) {
              await sql.query('SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED');
              this.readCommitted.add(conn);
            }
            if (!this.ownPool) {
              await sql.query('START TRANSACTION');
            }
            // Our own pool allows multiple statements: START rides with the first one.
            const tx = this.ownPool ? this.startingWithFirst(sql) : sql;
            let commitSent = false;
            try {
              const result = await fn(tx);
              const own = tx as { started?: boolean; committed?: boolean };
              if (!this.ownPool || (own.started && !own.committed)) {
                commitSent = true;
                await sql.query('COMMIT');
              }
              return result;
            } catch (err) {
              if (isConnectionError(err) && (commitSent || (tx as { commitSent?: boolean }).commitSent)) {
                throw new CommitUnknownError(err);
              }
              await sql.query('ROLLBACK').catch(() => undefined);
              throw err;
            }
          }),
        );
      } catch (err) {
        if (!isRetryableConflict(err) || attempt >= maxRetries) throw err;
        this.conflictRetries++;
        this.logger.debug(`Retrying after ${(err as Error).message}`);
        await new Promise((r) => setTimeout(r, Math.random() * 5 * (attempt + 1)));
      }
    }
  }

  /**
   * Wraps `sql` so that START TRANSACTION is sent with the first statement of the
   * transaction, and COMMIT with the last one when the caller asks. A failing statement
   * stops the rest of its round trip, COMMIT included; the transaction then rolls back.
   */
  private startingWithFirst(sql: Sql): Sql & { started: boolean; committed: boolean; commitSent: boolean } {
    const tx = {
      started: false,
      committed: false,
      commitSent: false,
      batch: async (statements: Array<[string, readonly unknown[]]>) => {
        const first = !tx.started;
        tx.started = true;
        const all: Array<[string, readonly unknown[]]> = first
          ? [['START TRANSACTION', []], ...statements]
          : statements;
        const results = await sql.batch!(all);
        return first ? results.slice(1) : results;
      },
      batchAndCommit: async (statements: Array<[string, readonly unknown[]]>) => {
        tx.commitSent = true;
        const results = await tx.batch([...statements, ['COMMIT', []]]);
        tx.committed = true;
        return results.slice(0, -1);
      },
      query: async (text: string, params?: readonly unknown[]) => (await tx.batch([[text, params ?? []]]))[0],
    };
    return tx;
  }

  /**
   * Runs `fn` inside the caller's EntityManager: joins its open transaction, or opens
   * one when the manager has none, so our rows commit or vanish with the caller's.
   */
  async inManager<T>(manager: EntityManager, fn: (sql: Sql) => Promise<T>): Promise<T> {
    if (manager.queryRunner?.isTransactionActive) return fn(sqlOf(manager));
    return manager.transaction('READ COMMITTED', (m) => fn(sqlOf(m)));
  }

  /** Whether this is the application's DataSource (not a pool the module made for itself). */
  get shared(): boolean {
    return !this.ownPool;
  }
}

/** Our statements on an EntityManager's connection (inside its transaction, if it has one). */
export function sqlOf(manager: EntityManager): Sql {
  return { query: (text, params) => manager.query(text, params as unknown[]) };
}
