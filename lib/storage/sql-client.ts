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
/** MariaDB 11.6+ innodb_snapshot_isolation: a locking read in REPEATABLE READ met a row changed since the snapshot. */
const RECORD_CHANGED = 1020;
/** Group Replication: ER_RUN_HOOK_ERROR, e.g. before_commit on a member that lost its group. */
const GR_HOOK_ERROR = 3100;
/** Group Replication: ER_TRANSACTION_ROLLBACK_DURING_COMMIT, a certification failure at COMMIT. */
const GR_CERTIFICATION = 3101;
/** MySQL 8.0.24+: ER_CLIENT_INTERACTION_TIMEOUT, sent on an idle connection just before closing it. */
const IDLE_DISCONNECT = 4031;
/** MariaDB: ER_CONNECTION_KILLED (KILL CONNECTION, or the server shutting the session). */
const CONNECTION_KILLED = 1927;
/**
 * Galera: ER_UNKNOWN_COM_ERROR, "WSREP has not yet prepared node for application use": the
 * node is joining, donating or cut off from the primary component. Another node can serve.
 */
const WSREP_NOT_READY = 1047;

/**
 * The transaction was rolled back as a whole and may simply run again: a deadlock, a
 * lock-wait timeout, a cluster's certification failure (Galera reports it as a deadlock,
 * at COMMIT or at the next statement after a replicated write aborted ours; Group
 * Replication as 3101, or 3100 when its commit hook refused), or a snapshot-isolation
 * conflict (1020; our transactions are READ COMMITTED, so only a caller's can meet it).
 */
export function isRetryableConflict(err: unknown): boolean {
  const errno = (err as { errno?: number })?.errno;
  return (
    errno === DEADLOCK ||
    errno === LOCK_WAIT_TIMEOUT ||
    errno === GR_CERTIFICATION ||
    errno === GR_HOOK_ERROR ||
    errno === RECORD_CHANGED
  );
}

/**
 * A conflict that says nothing against the connection but that the same member will
 * likely repeat: its connection is dropped so the retry goes through a fresh one (which
 * a router or proxy may send to another member).
 */
function wantsFreshConnection(err: unknown): boolean {
  return (err as { errno?: number })?.errno === GR_HOOK_ERROR;
}

/** The connection, not the statement, failed: the server is unreachable or went away. */
export function isConnectionError(err: unknown): boolean {
  const e = err as { fatal?: boolean; code?: string; errno?: number };
  if (!e || typeof e !== 'object') return false;
  if (e.fatal) return true;
  return (
    (typeof e.code === 'string' &&
      /^(ECONNREFUSED|ECONNRESET|EPIPE|ETIMEDOUT|ENOTFOUND|EHOSTUNREACH|PROTOCOL_CONNECTION_LOST|PROTOCOL_SEQUENCE_TIMEOUT|ER_SERVER_SHUTDOWN|ER_CON_COUNT_ERROR|ER_CLIENT_INTERACTION_TIMEOUT|ER_CONNECTION_KILLED|POOL_CLOSED)$/.test(
        e.code,
      )) ||
    e.errno === 1053 /* server shutdown in progress */ ||
    e.errno === 2013 ||
    e.errno === 2006 ||
    e.errno === IDLE_DISCONNECT ||
    e.errno === CONNECTION_KILLED ||
    e.errno === WSREP_NOT_READY
  );
}

/**
 * A conflict inside the caller's own transaction (the `manager` option): we cannot run it
 * again, since the caller's earlier statements are gone with it. Said in words, keeping the
 * driver's errno, code and sqlState so that a caller who retries on them still does.
 */
export function callerTransactionConflict(err: unknown): unknown {
  if (!isRetryableConflict(err)) return err;
  const e = err as { errno?: number; code?: string; sqlState?: string; sqlMessage?: string; message?: string };
  const why =
    e.errno === RECORD_CHANGED
      ? "a row it reads changed after the transaction's snapshot (MariaDB 11.6+ innodb_snapshot_isolation under REPEATABLE READ; READ COMMITTED avoids it)"
      : 'a deadlock, lock-wait timeout or cluster certification failure';
  const wrapped = new Error(
    `the workflow statements ran in your transaction, which the database rolled back: ${why}. Run the whole transaction again. (${e.message})`,
    { cause: err },
  );
  return Object.assign(wrapped, { errno: e.errno, code: e.code, sqlState: e.sqlState, sqlMessage: e.sqlMessage });
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
  /** Whether the server is a Galera node (wsrep_on), found on the first transaction; see startingWithFirst. */
  private galera?: Promise<boolean>;

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

  /**
   * One statement on a pooled connection, outside any transaction. A conflict rolled the
   * statement back (on a cluster, once the server's own wsrep_retry_autocommit is spent),
   * so running it again is running it once. Not a lock-wait timeout: that statement has
   * waited innodb_lock_wait_timeout already, and its caller decides whether to wait again.
   */
  async query<T = any>(sql: string, params?: readonly unknown[]): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.retryingStaleConnections(() => this.queryOnce<T>(sql, params));
      } catch (err) {
        const errno = (err as { errno?: number })?.errno;
        if (!isRetryableConflict(err) || errno === LOCK_WAIT_TIMEOUT || attempt >= 8) throw err;
        this.conflictRetries++;
        await new Promise((r) => setTimeout(r, Math.random() * 5 * (attempt + 1)));
      }
    }
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

  /** Runs `fn` on one connection (statements that must share a session, such as DDL runs). */
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
      broken = isConnectionError(err) || wantsFreshConnection(err);
      throw err;
    } finally {
      if (broken) conn.destroy();
      else conn.release();
    }
  }

  /**
   * Runs `fn` in a READ COMMITTED transaction (no gap locks, so inserts never wait on a
   * claimer's range scan). Conflicts (deadlocks, lock-wait timeouts, certification
   * failures) roll back and run again, so `fn` must hold no state across tries: what it
   * returns is what the try that committed saw. A try that fails, COMMIT included, has
   * changed nothing, so a claim that lost certification hands no job to anyone.
   */
  async transaction<T>(fn: (sql: Sql) => Promise<T>, maxRetries = 8): Promise<T> {
    const commitApart = this.ownPool && (await this.isGalera());
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
            const tx = this.ownPool ? this.startingWithFirst(sql, commitApart) : sql;
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
  private startingWithFirst(
    sql: Sql,
    commitApart: boolean,
  ): Sql & { started: boolean; committed: boolean; commitSent: boolean } {
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
        // On Galera a COMMIT at the end of a multi-statement trip can answer OK for a
        // transaction that lost certification and was rolled back (MariaDB 10.11.19 with
        // galera-4 26.4.23: 1 to 4 of every 1,000 contended claims across nodes, so two
        // workers ran one step; with COMMIT in a trip of its own, none in 3,000; see
        // test/cluster/galera.spec.ts). One more round trip, on Galera only.
        if (commitApart) {
          const results = await tx.batch(statements);
          tx.commitSent = true;
          await sql.query('COMMIT');
          tx.committed = true;
          return results;
        }
        tx.commitSent = true;
        let results: any[];
        try {
          results = await tx.batch([...statements, ['COMMIT', []]]);
        } catch (err) {
          // A statement the server refused stopped the trip before COMMIT: the transaction is open, and may go on.
          if (!isConnectionError(err)) tx.commitSent = false;
          throw err;
        }
        tx.committed = true;
        return results.slice(0, -1);
      },
      query: async (text: string, params?: readonly unknown[]) => (await tx.batch([[text, params ?? []]]))[0],
    };
    return tx;
  }

  /** Whether the server is a Galera node. SHOW VARIABLES, not @@wsrep_on: MySQL has no such variable and would refuse the statement. */
  isGalera(): Promise<boolean> {
    this.galera ??= this.query<Array<{ Value: string }>>("SHOW VARIABLES LIKE 'wsrep_on'").then(
      (rows) => String(rows[0]?.Value ?? '').toUpperCase() === 'ON',
      (err) => {
        this.galera = undefined;
        throw err;
      },
    );
    return this.galera;
  }

  /**
   * Runs `fn` inside the caller's EntityManager: joins its open transaction, or opens
   * one when the manager has none, so our rows commit or vanish with the caller's.
   */
  async inManager<T>(manager: EntityManager, fn: (sql: Sql) => Promise<T>): Promise<T> {
    if (manager.queryRunner?.isTransactionActive) {
      try {
        return await fn(sqlOf(manager));
      } catch (err) {
        throw callerTransactionConflict(err);
      }
    }
    // Ours alone: a conflict rolled back nothing but our statements, so they run again.
    for (let attempt = 0; ; attempt++) {
      try {
        return await manager.transaction('READ COMMITTED', (m) => fn(sqlOf(m)));
      } catch (err) {
        if (!isRetryableConflict(err) || attempt >= 8) throw err;
        this.conflictRetries++;
        await new Promise((r) => setTimeout(r, Math.random() * 5 * (attempt + 1)));
      }
    }
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
