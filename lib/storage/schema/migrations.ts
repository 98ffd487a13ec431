import type { MigrationInterface, QueryRunner } from 'typeorm';

export interface WorkflowSchemaMigration {
  version: number;
  name: string;
  /** DDL statements, run one at a time (MySQL DDL is not transactional); each is idempotent or tolerated by `applyStatement`. */
  statements(prefix: string): string[];
}

const ASCII = 'CHARACTER SET ascii COLLATE ascii_bin';
const TABLE = 'ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin';

/**
 * Schema versions, oldest first. Never edit a published version: add a new one.
 *
 * - runs: one row per run, kept until retention removes it.
 * - jobs: the live queue (steps and terminal deliveries). A row leaves it when
 *   settled, so the claim index only ever holds work that is waiting or running.
 * - dead: dead letters, with what is needed to re-drive them.
 */
export const WORKFLOW_SCHEMA: readonly WorkflowSchemaMigration[] = [
  {
    version: 1,
    name: 'create runs, jobs, dead',
    statements: (p) => [
      `CREATE TABLE IF NOT EXISTS \`${p}runs\` (
        \`id\` VARCHAR(128) ${ASCII} NOT NULL,
        \`workflow\` VARCHAR(128) ${ASCII} NOT NULL,
        \`state\` VARCHAR(12) ${ASCII} NOT NULL,
        \`current_step\` INT UNSIGNED NOT NULL DEFAULT 0,
        \`current_job_id\` CHAR(26) ${ASCII} NULL,
        \`attempts\` INT UNSIGNED NOT NULL DEFAULT 0,
        \`input_hash\` CHAR(64) ${ASCII} NOT NULL,
        \`headers\` MEDIUMTEXT NOT NULL,
        \`priority\` INT NOT NULL DEFAULT 0,
        \`max_attempts\` INT UNSIGNED NULL,
        \`result\` LONGTEXT NULL,
        \`error\` MEDIUMTEXT NULL,
        \`submitted_at\` BIGINT NOT NULL,
        \`updated_at\` BIGINT NOT NULL,
        \`finished_at\` BIGINT NULL,
        PRIMARY KEY (\`id\`),
        KEY \`ix_finished\` (\`finished_at\`)
      ) ${TABLE}`,
      // ix_claim matches the claim exactly: equality on (queue, state), then ORDER BY
      // (priority, run_at, id), so a claim reads the first rows of one index range and
      // never sorts. Delayed steps sit in state 1 and are promoted when due, so they
      // never stand in front of due ones.
      `CREATE TABLE IF NOT EXISTS \`${p}jobs\` (
        \`id\` CHAR(26) ${ASCII} NOT NULL,
        \`queue\` VARCHAR(191) NOT NULL,
        \`kind\` TINYINT UNSIGNED NOT NULL,
        \`state\` TINYINT UNSIGNED NOT NULL,
        \`priority\` INT NOT NULL,
        \`run_at\` BIGINT NOT NULL,
        \`run_id\` VARCHAR(128) ${ASCII} NOT NULL,
        \`step_number\` INT UNSIGNED NOT NULL,
        \`attempts\` INT UNSIGNED NOT NULL DEFAULT 0,
        \`max_attempts\` INT UNSIGNED NULL,
        \`lease_token\` VARCHAR(64) ${ASCII} NULL,
        \`lease_until\` DATETIME(3) NULL,
        \`payload\` LONGTEXT NOT NULL,
        \`headers\` MEDIUMTEXT NOT NULL,
        \`last_error\` MEDIUMTEXT NULL,
        \`created_at\` BIGINT NOT NULL,
        PRIMARY KEY (\`id\`),
        KEY \`ix_claim\` (\`queue\`, \`state\`, \`priority\`, \`run_at\`, \`id\`),
        KEY \`ix_state\` (\`state\`, \`run_at\`)
      ) ${TABLE}`,
      `CREATE TABLE IF NOT EXISTS \`${p}dead\` (
        \`job_id\` CHAR(26) ${ASCII} NOT NULL,
        \`queue\` VARCHAR(191) NOT NULL,
        \`kind\` TINYINT UNSIGNED NOT NULL,
        \`workflow\` VARCHAR(128) ${ASCII} NOT NULL,
        \`run_id\` VARCHAR(128) ${ASCII} NOT NULL,
        \`step_number\` INT UNSIGNED NOT NULL,
        \`attempts\` INT UNSIGNED NOT NULL,
        \`max_attempts\` INT UNSIGNED NOT NULL,
        \`priority\` INT NOT NULL,
        \`payload\` LONGTEXT NOT NULL,
        \`headers\` MEDIUMTEXT NOT NULL,
        \`last_error\` MEDIUMTEXT NOT NULL,
        \`dead_at\` BIGINT NOT NULL,
        PRIMARY KEY (\`job_id\`),
        KEY \`ix_dead_at\` (\`dead_at\`),
        KEY \`ix_workflow_dead_at\` (\`workflow\`, \`dead_at\`)
      ) ${TABLE}`,
    ],
  },
  {
    // Databases created by pre-release builds of version 1: per-job lease tokens are
    // longer, and max_attempts may be left for the claiming worker to fill in.
    // MODIFY is idempotent, so this is a no-op on tables version 1 created already so.
    version: 2,
    name: 'lease_token VARCHAR(64), max_attempts nullable',
    statements: (p) => [
      `ALTER TABLE \`${p}jobs\` MODIFY \`lease_token\` VARCHAR(64) ${ASCII} NULL, MODIFY \`max_attempts\` INT UNSIGNED NULL`,
    ],
  },
  {
    // submit_key: the try of the submit call that created the run, so a try whose COMMIT
    // reply was lost recognizes its own rows. ending: how many times the run has ended
    // (retryDead re-opens it), so each outcome is told apart. handlers: the @OnTerminal
    // handlers live processes host, so deliveries do not depend on who ends a run.
    // jobs.handbacks: deliveries handed back at shutdown, counted in attempts (deliveries)
    // but not against maxAttempts. jobs.wait_for / received and signals: durable waits, a
    // mailbox per run (consumed rows stay, so a repeated signalId stays deduplicated).
    // runs.schedule_id and schedules: cron schedules, one row each; ix_due holds only
    // schedules that will fire (a paused one has next_run_at NULL), in firing order, so a
    // tick reads the due ones from the front of one index range.
    version: 3,
    name: 'runs.submit_key, runs.ending, runs.schedule_id, runs.parent_*, jobs.handbacks, jobs.wait_for, jobs.received, jobs.children_open, jobs.fail_fast, handlers, signals, schedules',
    statements: (p) => [
      `ALTER TABLE \`${p}runs\` ADD COLUMN \`submit_key\` CHAR(26) ${ASCII} NULL`,
      `ALTER TABLE \`${p}runs\` ADD COLUMN \`ending\` INT UNSIGNED NOT NULL DEFAULT 0`,
      `ALTER TABLE \`${p}runs\` ADD COLUMN \`schedule_id\` VARCHAR(100) ${ASCII} NULL`,
      `ALTER TABLE \`${p}runs\` ADD COLUMN \`parent_run_id\` VARCHAR(128) ${ASCII} NULL`,
      `ALTER TABLE \`${p}runs\` ADD COLUMN \`parent_step\` INT UNSIGNED NULL`,
      `ALTER TABLE \`${p}runs\` ADD COLUMN \`child_index\` INT UNSIGNED NULL`,
      `ALTER TABLE \`${p}runs\` ADD KEY \`ix_parent\` (\`parent_run_id\`, \`parent_step\`, \`child_index\`)`,
      `ALTER TABLE \`${p}jobs\` ADD COLUMN \`children_open\` INT UNSIGNED NULL`,
      `ALTER TABLE \`${p}jobs\` ADD COLUMN \`fail_fast\` TINYINT UNSIGNED NULL`,
      `ALTER TABLE \`${p}jobs\` ADD KEY \`ix_fail_fast\` (\`fail_fast\`)`,
      `ALTER TABLE \`${p}jobs\` ADD COLUMN \`handbacks\` INT UNSIGNED NOT NULL DEFAULT 0`,
      `ALTER TABLE \`${p}jobs\` ADD COLUMN \`wait_for\` VARCHAR(128) ${ASCII} NULL`,
      `ALTER TABLE \`${p}jobs\` ADD COLUMN \`received\` LONGTEXT NULL`,
      `CREATE TABLE IF NOT EXISTS \`${p}signals\` (
        \`run_id\` VARCHAR(128) ${ASCII} NOT NULL,
        \`signal_id\` VARCHAR(128) ${ASCII} NOT NULL,
        \`name\` VARCHAR(128) ${ASCII} NOT NULL,
        \`data\` LONGTEXT NOT NULL,
        \`sent_at\` BIGINT NOT NULL,
        \`send_key\` CHAR(26) ${ASCII} NOT NULL,
        \`consumed_at\` BIGINT NULL,
        PRIMARY KEY (\`run_id\`, \`signal_id\`),
        KEY \`ix_mailbox\` (\`run_id\`, \`name\`, \`consumed_at\`, \`sent_at\`)
      ) ${TABLE}`,
      `CREATE TABLE IF NOT EXISTS \`${p}handlers\` (
        \`queue\` VARCHAR(191) NOT NULL,
        \`workflow\` VARCHAR(128) ${ASCII} NOT NULL,
        \`seen_at\` BIGINT NOT NULL,
        PRIMARY KEY (\`queue\`, \`workflow\`),
        KEY \`ix_workflow\` (\`workflow\`)
      ) ${TABLE}`,
      `CREATE TABLE IF NOT EXISTS \`${p}schedules\` (
        \`id\` VARCHAR(100) ${ASCII} NOT NULL,
        \`workflow\` VARCHAR(128) ${ASCII} NOT NULL,
        \`cron\` VARCHAR(255) NOT NULL,
        \`time_zone\` VARCHAR(64) ${ASCII} NOT NULL,
        \`input\` LONGTEXT NOT NULL,
        \`input_hash\` CHAR(64) ${ASCII} NOT NULL,
        \`headers\` MEDIUMTEXT NOT NULL,
        \`overlap\` VARCHAR(8) ${ASCII} NOT NULL,
        \`paused\` TINYINT UNSIGNED NOT NULL DEFAULT 0,
        \`next_run_at\` BIGINT NULL,
        \`last_run_id\` VARCHAR(128) ${ASCII} NULL,
        \`created_at\` BIGINT NOT NULL,
        \`updated_at\` BIGINT NOT NULL,
        PRIMARY KEY (\`id\`),
        KEY \`ix_due\` (\`next_run_at\`)
      ) ${TABLE}`,
    ],
  },
  {
    // Flow control. runs/jobs/schedules.concurrency_key: the run's key, copied onto each of
    // its step jobs (ckey), so a claim counts a key's running steps and finds its held-back
    // ones (state 4) on ix_key, in claim order, without touching another key. flow: one row
    // per (workflow, bucket) that claims and settlements of that bucket lock, so limits hold
    // across processes while unrelated keys never share a row; a rate bucket's wake_at is
    // when its window next has room (ix_wake: one scan for all). flow_starts: a rate bucket's
    // last `limit` step starts, a ring whose slot ring_next is the oldest.
    version: 4,
    name: 'concurrency keys, flow, flow_starts, history, jobs.started_at, listing indexes, counts, locks',
    statements: (p) => [
      `ALTER TABLE \`${p}runs\` ADD COLUMN \`concurrency_key\` VARCHAR(128) NULL`,
      `ALTER TABLE \`${p}schedules\` ADD COLUMN \`concurrency_key\` VARCHAR(128) NULL`,
      `ALTER TABLE \`${p}jobs\` ADD COLUMN \`ckey\` VARCHAR(128) NULL`,
      `ALTER TABLE \`${p}jobs\` ADD KEY \`ix_key\` (\`queue\`, \`ckey\`, \`state\`, \`priority\`, \`run_at\`)`,
      `CREATE TABLE IF NOT EXISTS \`${p}flow\` (
        \`queue\` VARCHAR(191) NOT NULL,
        \`bucket\` VARCHAR(130) NOT NULL,
        \`climit\` INT UNSIGNED NULL,
        \`rlimit\` INT UNSIGNED NULL,
        \`period_ms\` INT UNSIGNED NULL,
        \`ring_next\` INT UNSIGNED NOT NULL DEFAULT 0,
        \`wake_at\` DATETIME(3) NULL,
        PRIMARY KEY (\`queue\`, \`bucket\`),
        KEY \`ix_wake\` (\`wake_at\`)
      ) ${TABLE}`,
      `CREATE TABLE IF NOT EXISTS \`${p}flow_starts\` (
        \`queue\` VARCHAR(191) NOT NULL,
        \`bucket\` VARCHAR(130) NOT NULL,
        \`slot\` INT UNSIGNED NOT NULL,
        \`started_at\` DATETIME(3) NOT NULL,
        PRIMARY KEY (\`queue\`, \`bucket\`, \`slot\`)
      ) ${TABLE}`,
      // history: one row per delivery of a step, written by the transaction that settles
      // it (or the reaper's, for an expired lease), clustered by run in the order written
      // (seq: finish time and a counter, see insertHistory), so a run's history is one
      // range and a write touches no second index; deleted with its run. jobs.started_at:
      // when the current delivery began, for the reaper's record of a delivery its worker
      // never settled.
      `CREATE TABLE IF NOT EXISTS \`${p}history\` (
        \`run_id\` VARCHAR(128) ${ASCII} NOT NULL,
        \`seq\` BIGINT UNSIGNED NOT NULL,
        \`step_number\` INT UNSIGNED NOT NULL,
        \`attempt\` INT UNSIGNED NOT NULL,
        \`started_at\` BIGINT NOT NULL,
        \`finished_at\` BIGINT NOT NULL,
        \`outcome\` VARCHAR(16) ${ASCII} NOT NULL,
        \`error\` MEDIUMTEXT NULL,
        \`worker\` VARCHAR(100) NOT NULL,
        PRIMARY KEY (\`run_id\`, \`seq\`)
      ) ${TABLE}`,
      `ALTER TABLE \`${p}jobs\` ADD COLUMN \`started_at\` BIGINT NULL`,
      // Listing: newest first within one row state (ix_list, ix_list_workflow: a listing of
      // several states merges one range per state), or within a key or a parent, so a page
      // reads only its own rows in index order; a run's dead letters by ix_run. counts: run totals kept as delta rows by
      // the transactions that move runs (counts.ts), seeded here from the runs already
      // there (deterministic ids: a re-run after a crash adds nothing).
      `ALTER TABLE \`${p}runs\` ADD KEY \`ix_list\` (\`state\`, \`submitted_at\`, \`id\`)`,
      `ALTER TABLE \`${p}runs\` ADD KEY \`ix_list_workflow\` (\`workflow\`, \`state\`, \`submitted_at\`, \`id\`)`,
      `ALTER TABLE \`${p}runs\` ADD KEY \`ix_list_key\` (\`concurrency_key\`, \`submitted_at\`, \`id\`)`,
      `ALTER TABLE \`${p}runs\` ADD KEY \`ix_list_parent\` (\`parent_run_id\`, \`submitted_at\`, \`id\`)`,
      `ALTER TABLE \`${p}dead\` ADD KEY \`ix_run\` (\`run_id\`, \`dead_at\`)`,
      `CREATE TABLE IF NOT EXISTS \`${p}counts\` (
        \`id\` VARCHAR(64) ${ASCII} NOT NULL,
        \`workflow\` VARCHAR(128) ${ASCII} NOT NULL,
        \`state\` VARCHAR(12) ${ASCII} NOT NULL,
        \`n\` BIGINT NOT NULL,
        PRIMARY KEY (\`id\`)
      ) ${TABLE}`,
      `INSERT IGNORE INTO \`${p}counts\` (\`id\`, \`workflow\`, \`state\`, \`n\`)
        SELECT CONCAT('seed:', SHA1(CONCAT(\`workflow\`, '/', \`state\`))), \`workflow\`, \`state\`, COUNT(*)
        FROM \`${p}runs\` GROUP BY \`workflow\`, \`state\``,
      // locks: the named locks (migrate, retention), see named-lock.ts. migrate() makes it
      // before this version runs, since it takes its lock from it; here for the apps that
      // run the TypeORM migrations instead.
      locksTableDdl(p),
    ],
  },
];

/**
 * DDL is not transactional: a process that dies between a statement and the record of
 * its version runs the statement again. These errors mean it had already been applied.
 */
export function alreadyApplied(err: unknown): boolean {
  const errno = (err as { errno?: number })?.errno;
  return (
    errno === 1060 /* duplicate column */ || errno === 1061 /* duplicate key name */ || errno === 1050
  ); /* table exists */
}

/** Runs one migration statement, tolerating a re-run after a crash. */
export async function applyStatement(run: (sql: string) => Promise<unknown>, statement: string): Promise<void> {
  try {
    await run(statement);
  } catch (err) {
    if (!alreadyApplied(err)) throw err;
  }
}

/** The table that records applied schema versions. */
export function migrationsTableDdl(prefix: string): string {
  return `CREATE TABLE IF NOT EXISTS \`${prefix}migrations\` (
    \`version\` INT UNSIGNED NOT NULL,
    \`name\` VARCHAR(191) NOT NULL,
    \`applied_at\` BIGINT NOT NULL,
    PRIMARY KEY (\`version\`)
  ) ${TABLE}`;
}

/**
 * The module's table names without their prefix, in an order they can be dropped in
 * (for an app's own teardown, say between test suites).
 */
export const WORKFLOW_TABLES: readonly string[] = [
  'counts',
  'history',
  'flow_starts',
  'flow',
  'schedules',
  'signals',
  'handlers',
  'dead',
  'jobs',
  'runs',
  'locks',
  'migrations',
];

/**
 * One row per named lock: who holds it and until when (the database's clock), so a lock
 * taken by a process that died frees itself. Made before any versioned migration, since
 * the migration lock lives here.
 */
export function locksTableDdl(prefix: string): string {
  return `CREATE TABLE IF NOT EXISTS \`${prefix}locks\` (
    \`name\` VARCHAR(64) ${ASCII} NOT NULL,
    \`holder\` VARCHAR(100) ${ASCII} NULL,
    \`lease_until\` DATETIME(3) NULL,
    PRIMARY KEY (\`name\`)
  ) ${TABLE}`;
}

/**
 * The schema as TypeORM migration classes, for apps that run their own migrations
 * (`autoMigrate: false`). Pass your `tablePrefix` if you changed it.
 */
export function createWorkflowMigrations(tablePrefix = 'workflow_'): Array<new () => MigrationInterface> {
  return WORKFLOW_SCHEMA.map((m) => {
    const className = `WorkflowSchema${m.version}${tablePrefix.replace(/[^A-Za-z0-9]/g, '')}`;
    const migration = class implements MigrationInterface {
      name = `${className}${1_700_000_000_000 + m.version}`;
      async up(queryRunner: QueryRunner): Promise<void> {
        for (const statement of [migrationsTableDdl(tablePrefix), ...m.statements(tablePrefix)]) {
          await applyStatement((q) => queryRunner.query(q), statement);
        }
        await queryRunner.query(
          `INSERT IGNORE INTO \`${tablePrefix}migrations\` (\`version\`, \`name\`, \`applied_at\`) VALUES (?, ?, ?)`,
          [m.version, m.name, Date.now()],
        );
      }
      async down(queryRunner: QueryRunner): Promise<void> {
        if (m.version === 1) {
          for (const t of WORKFLOW_TABLES) {
            await queryRunner.query(`DROP TABLE IF EXISTS \`${tablePrefix}${t}\``);
          }
        }
      }
    };
    Object.defineProperty(migration, 'name', { value: className });
    return migration;
  });
}

/** The schema's migration classes for the default `workflow_` prefix. */
export const WORKFLOW_MIGRATIONS = createWorkflowMigrations();
