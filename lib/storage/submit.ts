import type { EntityManager } from 'typeorm';
import { WorkflowConfigError } from '../errors/workflow-config.error.js';
import { runBatch, type Sql } from './sql-client.js';
import type { NewRun } from './storage.types.js';
import type { StorageContext } from './tables.js';
import { insertJobs } from './transitions.js';

export interface ExistingRun {
  id: string;
  workflow: string;
  inputHash: string;
}

/**
 * Creates runs with their step 0, all or nothing, in a transaction of our own or, with
 * `manager`, in the caller's (joined if open, else begun on it), so the runs exist if
 * and only if that transaction commits.
 *
 * Commits: the run rows and their step 0 jobs. Existing ids are handed to `check`
 *          first (it compares input hashes and throws to refuse the whole call).
 * Locks:   existing run rows, shared; the new rows.
 * Crash:   before COMMIT, nothing exists and submitting again is safe; after, exactly
 *          one run per id.
 *
 * A duplicate key means another submitter committed one of these ids since the read:
 * everything since the savepoint is undone and the loop reads again.
 */
export async function submitRuns(
  ctx: StorageContext,
  runs: NewRun[],
  check: (existing: Map<string, ExistingRun>) => void,
  manager?: EntityManager,
): Promise<Set<string>> {
  if (manager) {
    if (manager.dataSource !== ctx.client.dataSource) {
      throw new WorkflowConfigError(
        'submit({ manager }) needs an EntityManager of the DataSource WorkflowModule uses. Configure ' +
          'WorkflowModule.forRoot({ dataSource }) with that DataSource (or its @nestjs/typeorm name).',
      );
    }
    return ctx.client.inManager(manager, (sql) => insertRuns(ctx, sql, runs, check, false));
  }
  return ctx.client.transaction((sql) => insertRuns(ctx, sql, runs, check, true));
}

async function insertRuns(
  ctx: StorageContext,
  sql: Sql,
  runs: NewRun[],
  check: (existing: Map<string, ExistingRun>) => void,
  commit: boolean,
): Promise<Set<string>> {
  for (let attempt = 0; ; attempt++) {
    const existing = new Map<string, ExistingRun>();
    const rows = await sql.query<Array<{ id: string; workflow: string; input_hash: string }>>(
      `SELECT \`id\`, \`workflow\`, \`input_hash\` FROM ${ctx.t.runs} FORCE INDEX (PRIMARY) WHERE \`id\` IN (?) LOCK IN SHARE MODE`,
      [runs.map((r) => r.id)],
    );
    for (const r of rows) existing.set(r.id, { id: r.id, workflow: r.workflow, inputHash: r.input_hash });
    check(existing);
    const fresh = runs.filter((r) => !existing.has(r.id));
    if (fresh.length === 0) return new Set();
    try {
      await runBatch(
        sql,
        [
          ['SAVEPOINT wf_submit', []],
          [
            `INSERT INTO ${ctx.t.runs} (\`id\`, \`workflow\`, \`state\`, \`current_step\`, \`current_job_id\`, \`input_hash\`, \`headers\`, \`priority\`, \`max_attempts\`, \`submitted_at\`, \`updated_at\`) VALUES ?`,
            [
              fresh.map((r) => [
                r.id, r.workflow, 'active', 0, r.firstJob.id, r.inputHash, r.headers, r.priority, r.maxAttempts,
                r.submittedAt, r.submittedAt,
              ]),
            ],
          ],
          insertJobs(ctx.t, fresh.map((r) => r.firstJob), ctx.now()),
        ],
        commit,
      );
    } catch (err) {
      if ((err as { errno?: number }).errno === 1062 && attempt < 5) {
        await sql.query('ROLLBACK TO SAVEPOINT wf_submit');
        continue;
      }
      throw err;
    }
    return new Set(fresh.map((r) => r.id));
  }
}
