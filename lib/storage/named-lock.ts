import { Logger } from '@nestjs/common';
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { locksTableDdl } from './schema/migrations.js';
import { isRetryableConflict, type Sql, type SqlClient, type WriteResult } from './sql-client.js';

/** What a named lock guards; each name is fixed, since processes of two versions must agree on it. */
export type LockPurpose = 'migrate' | 'retention';

/** How long a lock outlives a holder that stopped renewing it (a crash, a frozen process). */
export const LOCK_LEASE_MS = 30_000;

const NO_SUCH_TABLE = 1146;

/**
 * Runs `fn` on one connection while holding a named lock, or returns null when the lock
 * is not had within `timeoutS` seconds (0: try once).
 *
 * The lock is a committed lease on one row of the prefix's `locks` table (holder, expiry on
 * the database clock), renewed while `fn` runs. GET_LOCK would be simpler but no cluster
 * shares it: Galera refuses it (10.6.13, 10.11.3) or keeps it on one node (later releases),
 * and Group Replication keeps it per member. Row locks are no better there, since they too
 * stay on the node that took them. A committed write is what every engine orders: on one
 * server the row lock serialises two takers, on a cluster certification lets one commit
 * and fails the other. A holder that dies frees the lock when its lease runs out.
 */
export async function withNamedLock<T>(
  client: SqlClient,
  purpose: LockPurpose,
  prefix: string,
  timeoutS: number,
  fn: (sql: Sql) => Promise<T>,
  leaseMs = LOCK_LEASE_MS,
): Promise<T | null> {
  const lock = new LeaseLock(client, prefix, purpose, leaseMs);
  if (!(await lock.acquire(timeoutS * 1000))) return null;
  try {
    return await client.withConnection(fn);
  } finally {
    await lock.release();
  }
}

class LeaseLock {
  private readonly logger = new Logger('WorkflowLock');
  private readonly table: string;
  /** This taking of the lock: a renewal or release by anyone else's token changes nothing. */
  private readonly holder = `${hostname().slice(0, 48)}:${process.pid}:${randomBytes(8).toString('hex')}`;
  private renewal?: NodeJS.Timeout;

  constructor(
    private readonly client: SqlClient,
    private readonly prefix: string,
    private readonly name: LockPurpose,
    private readonly leaseMs: number,
  ) {
    this.table = `\`${prefix}locks\``;
  }

  async acquire(waitMs: number): Promise<boolean> {
    const deadline = Date.now() + waitMs;
    await this.ensureRow();
    for (let attempt = 0; ; attempt++) {
      if (await this.tryTake()) {
        this.renewal = setInterval(() => void this.renew(), Math.max(100, Math.floor(this.leaseMs / 3)));
        this.renewal.unref();
        return true;
      }
      const left = deadline - Date.now();
      if (left <= 0) return false;
      await new Promise((r) => setTimeout(r, Math.min(left, 50 * 2 ** Math.min(attempt, 4) * (0.5 + Math.random()))));
    }
  }

  async release(): Promise<void> {
    clearInterval(this.renewal);
    await this.client
      .query(
        `UPDATE ${this.table} SET \`holder\` = NULL, \`lease_until\` = NULL WHERE \`name\` = ? AND \`holder\` = ?`,
        [this.name, this.holder],
      )
      .catch((err: Error) =>
        this.logger.warn(`Could not release lock "${this.name}" (${err.message}); its lease will run out`),
      );
  }

  /** The lock's row, made on first use; the table too, for a schema that predates it. */
  private async ensureRow(): Promise<void> {
    const insert = () =>
      this.client.query(`INSERT IGNORE INTO ${this.table} (\`name\`) VALUES (?)`, [this.name]).catch((err) => {
        // Two nodes inserting the row at once: one insert wins certification, which is all we need.
        if (!isRetryableConflict(err)) throw err;
      });
    try {
      await insert();
    } catch (err) {
      if ((err as { errno?: number })?.errno !== NO_SUCH_TABLE) throw err;
      await this.client.query(locksTableDdl(this.prefix));
      await insert();
    }
  }

  /**
   * One committed attempt. Our own token counts as free, so a retry after a reply lost
   * on the way back finds the lock it already took.
   */
  private async tryTake(): Promise<boolean> {
    try {
      const r = await this.client.query<WriteResult>(
        `UPDATE ${this.table} SET \`holder\` = ?, \`lease_until\` = DATE_ADD(UTC_TIMESTAMP(3), INTERVAL ? MICROSECOND)
          WHERE \`name\` = ? AND (\`holder\` IS NULL OR \`holder\` = ? OR \`lease_until\` < UTC_TIMESTAMP(3))`,
        [this.holder, this.leaseMs * 1000, this.name, this.holder],
      );
      return r.affectedRows === 1;
    } catch (err) {
      // Lost the race on another node: someone else holds it now.
      if (isRetryableConflict(err)) return false;
      throw err;
    }
  }

  private async renew(): Promise<void> {
    try {
      const r = await this.client.query<WriteResult>(
        `UPDATE ${this.table} SET \`lease_until\` = DATE_ADD(UTC_TIMESTAMP(3), INTERVAL ? MICROSECOND)
          WHERE \`name\` = ? AND \`holder\` = ?`,
        [this.leaseMs * 1000, this.name, this.holder],
      );
      if (r.affectedRows === 0) {
        clearInterval(this.renewal);
        this.logger.warn(
          `Lost lock "${this.name}": its lease ran out before it was renewed (the process stalled or the database was unreachable); another process may take it`,
        );
      }
    } catch (err) {
      this.logger.warn(`Could not renew lock "${this.name}" (${(err as Error).message}); will try again`);
    }
  }
}
