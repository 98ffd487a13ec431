import { callerTransactionConflict, isConnectionError, isRetryableConflict } from '../../lib/storage/sql-client.js';

/** The shape mysql2 gives a server error: errno, code, sqlState, and fatal when the connection is gone. */
const serverError = (errno: number, code: string, message = code, fatal?: boolean) =>
  Object.assign(new Error(message), {
    errno,
    code,
    sqlState: 'HY000',
    sqlMessage: message,
    ...(fatal ? { fatal } : {}),
  });

describe('how database errors are classified', () => {
  it.each([
    [
      1213,
      'ER_LOCK_DEADLOCK',
      'a deadlock, and a Galera certification failure (at COMMIT, or after a brute-force abort)',
    ],
    [1205, 'ER_LOCK_WAIT_TIMEOUT', 'a lock-wait timeout'],
    [3101, 'ER_TRANSACTION_ROLLBACK_DURING_COMMIT', 'a Group Replication certification failure at COMMIT'],
    [3100, 'ER_RUN_HOOK_ERROR', "a Group Replication commit hook's refusal (rolled back)"],
    [1020, 'ER_CHECKREAD', 'a MariaDB 11.6 snapshot-isolation conflict'],
  ])('%i %s is a conflict to run again: %s', (errno, code) => {
    const err = serverError(errno, code);
    expect(isRetryableConflict(err)).toBe(true);
    // A conflict rolled the transaction back: its outcome is known, so it is never a lost connection.
    expect(isConnectionError(err)).toBe(false);
  });

  it.each([
    [
      4031,
      'ER_CLIENT_INTERACTION_TIMEOUT',
      'MySQL 8.0.24+ closing an idle connection (raced by a query, so not fatal)',
    ],
    [1927, 'ER_CONNECTION_KILLED', 'MariaDB: the session was killed'],
    [1047, 'ER_UNKNOWN_COM_ERROR', 'Galera: the node is not Synced in the primary component'],
    [2013, 'CR_SERVER_LOST', 'lost during a query'],
  ])('%i %s is a connection error (reconnect and retry): %s', (errno, code) => {
    const err = serverError(errno, code);
    expect(isConnectionError(err)).toBe(true);
    expect(isRetryableConflict(err)).toBe(false);
  });

  it.each([
    [1062, 'ER_DUP_ENTRY'],
    [1146, 'ER_NO_SUCH_TABLE'],
    [1290, 'ER_OPTION_PREVENTS_STATEMENT'],
    [1064, 'ER_PARSE_ERROR'],
  ])('%i %s is neither', (errno, code) => {
    expect(isRetryableConflict(serverError(errno, code))).toBe(false);
    expect(isConnectionError(serverError(errno, code))).toBe(false);
  });

  it("a conflict in the caller's transaction is said in words, keeping errno, code and sqlState", () => {
    const original = serverError(1020, 'ER_CHECKREAD', 'Record has changed since last read in table');
    const err = callerTransactionConflict(original) as Error & { errno: number; code: string; cause: unknown };
    expect(err.message).toMatch(
      /rolled back.*innodb_snapshot_isolation.*REPEATABLE READ.*Run the whole transaction again/,
    );
    expect(err).toMatchObject({ errno: 1020, code: 'ER_CHECKREAD', sqlState: 'HY000' });
    expect(err.cause).toBe(original);
    expect(isRetryableConflict(err)).toBe(true);
    const dup = serverError(1062, 'ER_DUP_ENTRY');
    expect(callerTransactionConflict(dup)).toBe(dup);
  });
});
