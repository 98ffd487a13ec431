import type { EntityManager } from 'typeorm';
import { ForeignEntityManagerError } from '../errors/foreign-entity-manager.error.js';
import { MESSAGES } from '../workflow.messages.js';
import { CommitUnknownError, runBatch, type Sql } from './sql-client.js';
import { ulid } from '../utils/ulid.js';
import { type NewRun, RunRowState } from './storage.types.js';
import type { StorageContext } from './tables.js';
import { insertJobs } from './transitions.js';
import { countChanges } from './counts.js';
import { escapedBytes, packetBudget } from './packet.js';

export interface ExistingRun {
  id: string;
  workflow: string;
  inputHash: string;
}

/**
 * Creates runs with their step 0, all or nothing, in a transaction of our own or, with
 * `manager`, in the caller's (joined if open, else begun on it), so the runs exist if
 * and only if that transaction commits. Returns the ids this call created.
 *
 * Commits: the run rows and their step 0 jobs. Every id is written first (an existing
 *          one is left as it is), then all of them are read back under lock and handed
 *          to `check`, which compares input hashes and throws to refuse the whole call.
 * Locks:   run rows by primary key only, whatever the caller's isolation level: the
 *          insert locks the new rows, a duplicate key locks that one existing row, and
 *          the locking read finds every row present. No gap or next-key lock, so callers
 *          with increasing ids never block or deadlock each other, and a plain submit
 *          never waits on another caller's open transaction (unless it submits the same
 *          id). Then the new step 0 job rows.
 * Crash:   before COMMIT, nothing exists and submitting again is safe; after, exactly
 *          one run per id. A call whose COMMIT reply was lost and that runs again finds
 *          its own rows by `submit_key` and still reports them as newly submitted.
 */
export async function submitRuns(
  ctx: StorageContext,
  runs: NewRun[],
  check: (existing: Map<string, ExistingRun>) => void,
  manager?: EntityManager,
  maxAllowedPacket = Number.POSITIVE_INFINITY,
): Promise<Set<string>> {
  // Keys of this call's earlier tries: a try whose COMMIT reply was lost may have committed.
  const tries: string[] = [];
  if (manager) {
    if (manager.dataSource !== ctx.client.dataSource) {
      throw new ForeignEntityManagerError(MESSAGES.foreignEntityManager('submit'));
    }
    return ctx.client.inManager(manager, (sql) => insertRuns(ctx, sql, runs, check, false, tries, maxAllowedPacket));
  }
  for (let lost = 0; ; lost++) {
    try {
      return await ctx.client.transaction((sql) => insertRuns(ctx, sql, runs, check, true, tries, maxAllowedPacket));
    } catch (err) {
      // The next try finds what an unanswered COMMIT did by its submit key.
      if (!(err instanceof CommitUnknownError) || lost >= 3) throw err;
    }
  }
}

/**
 * submitRuns' writes inside a transaction someone else opened and commits (a schedule's
 * tick): the same statements, the same row locks, no COMMIT of its own.
 */
export function insertRunsIn(
  ctx: StorageContext,
  sql: Sql,
  runs: NewRun[],
  check: (existing: Map<string, ExistingRun>) => void,
  maxAllowedPacket = Number.POSITIVE_INFINITY,
): Promise<Set<string>> {
  return insertRuns(ctx, sql, runs, check, false, [], maxAllowedPacket);
}

async function insertRuns(
  ctx: StorageContext,
  sql: Sql,
  runs: NewRun[],
  check: (existing: Map<string, ExistingRun>) => void,
  commit: boolean,
  tries: string[],
  maxAllowedPacket: number,
): Promise<Set<string>> {
  const { t } = ctx;
  const now = ctx.now();
  const key = ulid(now);
  const earlier = new Set(tries);
  tries.push(key);
  const [, , rows] = await runBatch(sql, [
    ['SAVEPOINT wf_submit', []],
    [
      `INSERT INTO ${t.runs} (\`id\`, \`workflow\`, \`state\`, \`current_step\`, \`current_job_id\`, \`input_hash\`, \`headers\`, \`priority\`,
        \`max_attempts\`, \`submitted_at\`, \`updated_at\`, \`submit_key\`, \`schedule_id\`, \`parent_run_id\`, \`parent_step\`, \`child_index\`, \`concurrency_key\`) VALUES ? ON DUPLICATE KEY UPDATE \`id\` = \`id\``,
      [
        runs.map((r) => [
          r.id,
          r.workflow,
          RunRowState.Active,
          0,
          r.firstJob.id,
          r.inputHash,
          r.headers,
          r.priority,
          r.maxAttempts,
          r.submittedAt,
          r.submittedAt,
          key,
          r.scheduleId ?? null,
          r.parent?.runId ?? null,
          r.parent?.step ?? null,
          r.parent?.index ?? null,
          r.concurrencyKey ?? null,
        ]),
      ],
    ],
    [
      // Only the rows this INSERT did not write come back (those it wrote it holds locked
      // already): a submit of new runs reads nothing back.
      `SELECT \`id\`, \`workflow\`, \`input_hash\`, \`submit_key\` FROM ${t.runs} FORCE INDEX (PRIMARY)
        WHERE \`id\` IN (?) AND NOT (\`submit_key\` <=> ?) LOCK IN SHARE MODE`,
      [runs.map((r) => r.id), key],
    ],
  ]);
  const existing = new Map<string, ExistingRun>();
  const created = new Set<string>();
  const others = new Set<string>();
  for (const r of rows as Array<{ id: string; workflow: string; input_hash: string; submit_key: string | null }>) {
    others.add(r.id);
    // Committed by an earlier try of this very call, with its step 0: ours, nothing left to write.
    if (r.submit_key !== null && earlier.has(r.submit_key)) created.add(r.id);
    else existing.set(r.id, { id: r.id, workflow: r.workflow, inputHash: r.input_hash });
  }
  // Written by this INSERT (an id given twice was inserted once).
  const fresh: NewRun[] = [];
  for (const r of runs) {
    if (others.has(r.id) || created.has(r.id)) continue;
    fresh.push(r);
    created.add(r.id);
  }
  try {
    check(existing);
  } catch (err) {
    await sql.query('ROLLBACK TO SAVEPOINT wf_submit');
    throw err;
  }
  // Inputs that fit one by one may not fit together: one INSERT per packet's worth.
  const chunks = packetChunks(fresh, packetBudget(maxAllowedPacket));
  const counted = countChanges(
    t,
    fresh.map((r) => ({ workflow: r.workflow, to: RunRowState.Active })),
    now,
  );
  for (let i = 0; i < chunks.length; i++) {
    const jobs = insertJobs(
      t,
      chunks[i].map((r) => r.firstJob),
      now,
    );
    await runBatch(sql, i === 0 && counted ? [jobs, counted] : [jobs], commit && i === chunks.length - 1);
  }
  return created;
}

function packetChunks(runs: NewRun[], budget: number): NewRun[][] {
  if (budget === Number.POSITIVE_INFINITY) return runs.length ? [runs] : [];
  const chunks: NewRun[][] = [];
  let total = Number.POSITIVE_INFINITY;
  for (const r of runs) {
    const size = (exact: boolean) =>
      512 + escapedBytes(r.firstJob.payload, exact) + escapedBytes(r.firstJob.headers, exact);
    // Measured only when it could matter.
    let bytes = size(false);
    if (bytes * 64 > budget) bytes = size(true);
    if (total + bytes > budget) {
      chunks.push([]);
      total = 0;
    }
    chunks[chunks.length - 1].push(r);
    total += bytes;
  }
  return chunks;
}
