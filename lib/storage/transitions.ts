/**
 * The statements every transaction that moves a run shares: job row effects, run
 * endings, terminal deliveries, dead letters. Each builder takes a list and makes one
 * statement, so the careful path (one item) and the fast path (a batch) write the
 * same SQL.
 *
 * Lock order, in every transaction of this folder: job row, then run row, then dead
 * row. That one order is why two of them can wait on each other but never deadlock.
 * A schedule tick (schedules.ts) locks its schedule rows before anything else, and then
 * only run and job rows it creates, as submit does; no transaction locks a schedule row
 * after another row, so the order stays acyclic.
 *
 * Statements that touch several rows by primary key say FORCE INDEX (PRIMARY): on a
 * small or freshly emptied table the optimizer otherwise picks a full scan, and a
 * locking scan waits on (and deadlocks with) rows other workers hold. Single-table
 * DELETE accepts no index hint, hence the multi-table form `DELETE j FROM t AS j`.
 */
import { ulid } from '../utils/ulid.js';
import { DEFAULTS } from '../workflow.constants.js';
import type { Sql } from './sql-client.js';
import type { RunEnding } from './settlements.js';
import { handlerQueues } from './handlers.js';
import { recordChanges } from './counts.js';
import { type ClaimedJob, type DeliveryRecord, JobKind, JobState, type NewJob, RunRowState } from './storage.types.js';
import { CLAIM_COLUMNS, JOB_COLUMNS, type JobRow, type StorageContext, type Tables } from './tables.js';

export type Statement = [string, unknown[]];

/**
 * The fast path checks each write's row count in the server, in the same round trip:
 * `~0 + 1` overflows BIGINT UNSIGNED, which MySQL and MariaDB both refuse with
 * ER_DATA_OUT_OF_RANGE whatever the sql_mode, so a count that is off stops the trip
 * before its COMMIT.
 */
export const countIs = (n: number): Statement => ['SET @wf_guard = ~0 + (ROW_COUNT() <> ?)', [n]];
export const GUARD_TRIPPED = 1690;

/**
 * `name = <then>` for the rows of `list`, `otherwise` for the statement's other rows, as
 * one expression. Rows that share a value share a branch (`WHEN id IN (...)`), and a value
 * all `of` rows of the statement share is written once, without CASE: a branch per row
 * costs the server a comparison per row and branch (the jobs UPDATE of a 32-step batch
 * took 1.25 ms with one per row, 0.80 ms without). Params are appended to `params`.
 */
function caseById<T>(
  params: unknown[],
  name: string,
  list: T[],
  idOf: (item: T) => string,
  then: string,
  value: (item: T) => unknown[],
  otherwise: string,
  of = Number.POSITIVE_INFINITY,
): string {
  if (list.length === 0) return `\`${name}\` = ${otherwise}`;
  const branches = new Map<unknown, { ids: string[]; values: unknown[] }>();
  for (const item of list) {
    const values = value(item);
    const key = groupKey(values) ?? {};
    const branch = branches.get(key);
    if (branch) branch.ids.push(idOf(item));
    else branches.set(key, { ids: [idOf(item)], values });
  }
  if (branches.size === 1 && list.length === of) {
    params.push(...branches.values().next().value!.values);
    return `\`${name}\` = ${then}`;
  }
  for (const { ids, values } of branches.values()) params.push(ids, ...values);
  return `\`${name}\` = CASE ${[...branches.values()].map(() => `WHEN \`id\` IN (?) THEN ${then}`).join(' ')} ELSE ${otherwise} END`;
}

/** Values worth sharing a branch (none, or one number, flag, null or short string); undefined for the rest (payloads). */
function groupKey(values: unknown[]): string | undefined {
  if (values.length === 0) return '';
  if (values.length > 1) return undefined;
  const v = values[0];
  if (v === null || v === undefined) return 'null';
  if (typeof v === 'number' || typeof v === 'boolean') return `${typeof v}:${v}`;
  if (typeof v === 'string' && v.length <= 64) return `s:${v}`;
  return undefined;
}

const leaseMicros = (ms: number | undefined) => (ms ?? DEFAULTS.leaseMs) * 1000;

// ---------------------------------------------------------------- job row effects

/**
 * Turns each held job row into its successor (same id). A successor leased to this
 * worker keeps state and run_at, so neither index entry moves; one that waits (a
 * delay, or the in-place bound reached) goes back to the queue like a fresh job.
 *
 * What a batch shares is one expression (caseById): the next step number, and for the
 * successors leased in place their lease, with tokens of one prefix (`prefix/id` as a
 * claim's, set by CONCAT). Only the payloads take a branch per row.
 */
export function rewriteAsSuccessors(
  t: Tables,
  moves: Array<{ job: ClaimedJob; next: NewJob }>,
  now: number,
): Statement {
  const params: unknown[] = [];
  const id = (m: (typeof moves)[number]) => m.job.id;
  const leased = moves.filter((m) => m.next.leaseToken);
  const waiting = moves.filter((m) => !m.next.leaseToken);
  const parked = moves.filter((m) => m.next.waitFor !== undefined);
  const joining = moves.filter((m) => m.next.childrenOpen !== undefined);
  const sets = [
    moves.every((m) => m.next.stepNumber === m.job.stepNumber + 1)
      ? '`step_number` = `step_number` + 1'
      : caseById(params, 'step_number', moves, id, '?', (m) => [m.next.stepNumber], '`step_number`'),
    caseById(params, 'payload', moves, id, '?', (m) => [m.next.payload], '`payload`', moves.length),
    ...leaseSets(params, leased, moves.length, now),
    `\`handbacks\` = 0`,
    caseById(params, 'state', waiting, id, '?', (m) => [stateOf(m.next)], '`state`', moves.length),
    caseById(params, 'run_at', waiting, id, '?', (m) => [m.next.runAt], '`run_at`', moves.length),
    caseById(params, 'wait_for', parked, id, '?', (m) => [m.next.waitFor], 'NULL', moves.length),
    caseById(params, 'children_open', joining, id, '?', (m) => [m.next.childrenOpen], 'NULL', moves.length),
    caseById(params, 'fail_fast', joining, id, '?', (m) => [m.next.failFast ? 1 : 0], 'NULL', moves.length),
    // What a wait received belongs to the one step after it.
    '`received` = NULL',
  ];
  params.push(
    now,
    moves.map((m) => m.job.id),
    moves.map((m) => m.job.token),
  );
  return [
    `UPDATE ${t.jobs} FORCE INDEX (PRIMARY) SET ${sets.join(', ')}, \`last_error\` = NULL, \`created_at\` = ?
      WHERE \`id\` IN (?) AND \`lease_token\` IN (?)`,
    params,
  ];
}

type Move = { job: ClaimedJob; next: NewJob };

/** The lease columns of successors: those in `leased` run in place, the statement's other rows are not leased. */
function leaseSets(params: unknown[], leased: Move[], of: number, now: number): string[] {
  const id = (m: Move) => m.job.id;
  const prefix = sharedPrefix(leased);
  return [
    prefix === undefined
      ? caseById(params, 'lease_token', leased, id, '?', (m) => [m.next.leaseToken], 'NULL')
      : caseById(params, 'lease_token', leased, id, "CONCAT(?, '/', `id`)", () => [prefix], 'NULL', of),
    caseById(
      params,
      'lease_until',
      leased,
      id,
      'DATE_ADD(UTC_TIMESTAMP(3), INTERVAL ? MICROSECOND)',
      (m) => [leaseMicros(m.next.leaseMs)],
      'NULL',
      of,
    ),
    caseById(params, 'attempts', leased, id, '1', () => [], '0', of),
    // When the delivery in place began, for the reaper's record should its worker die.
    caseById(params, 'started_at', leased, id, '?', () => [now], 'NULL', of),
  ];
}

/** The prefix every token of `leased` has before `/id`, if they share one (and there is any). */
function sharedPrefix(leased: Move[]): string | undefined {
  if (leased.length === 0) return undefined;
  const { job, next } = leased[0];
  const token = next.leaseToken!;
  if (!token.endsWith(`/${job.id}`)) return undefined;
  const prefix = token.slice(0, token.length - job.id.length - 1);
  return leased.every((m) => m.next.leaseToken === `${prefix}/${m.job.id}`) ? prefix : undefined;
}

/** The queue state a job that is not leased starts in. */
function stateOf(j: NewJob): number {
  if (j.waitFor !== undefined || j.childrenOpen !== undefined) return JobState.Waiting;
  return j.scheduled ? JobState.Scheduled : JobState.Ready;
}

/** Deletes held job rows. Tokens are unique per job, so the IN lists cannot match a row by another item's token. */
export function deleteHeld(t: Tables, jobs: ClaimedJob[]): Statement {
  return [
    `DELETE j FROM ${t.jobs} AS j FORCE INDEX (PRIMARY) WHERE j.\`id\` IN (?) AND j.\`lease_token\` IN (?)`,
    [jobs.map((j) => j.id), jobs.map((j) => j.token)],
  ];
}

/** Held jobs scheduled again at their `runAt`, with the failure that made them wait. */
export function rescheduleHeld(t: Tables, items: Array<{ job: ClaimedJob; runAt: number; error: string }>): Statement {
  const params: unknown[] = [];
  const id = (i: (typeof items)[number]) => i.job.id;
  const sets = [
    caseById(params, 'run_at', items, id, '?', (i) => [i.runAt], '`run_at`'),
    caseById(params, 'last_error', items, id, '?', (i) => [i.error], '`last_error`'),
  ];
  params.push(
    items.map((i) => i.job.id),
    items.map((i) => i.job.token),
  );
  return [
    `UPDATE ${t.jobs} FORCE INDEX (PRIMARY) SET \`state\` = ${JobState.Scheduled}, ${sets.join(', ')}, \`lease_token\` = NULL, \`lease_until\` = NULL
      WHERE \`id\` IN (?) AND \`lease_token\` IN (?)`,
    params,
  ];
}

/**
 * Held jobs handed back, claimable at once. The delivery counts in `attempts` (it
 * happened) and in `handbacks`, so it does not use up maxAttempts: not the step's fault.
 */
export function releaseHeld(t: Tables, jobs: ClaimedJob[]): Statement {
  return [
    `UPDATE ${t.jobs} FORCE INDEX (PRIMARY) SET \`state\` = ${JobState.Ready}, \`handbacks\` = \`handbacks\` + 1,
      \`lease_token\` = NULL, \`lease_until\` = NULL WHERE \`id\` IN (?) AND \`lease_token\` IN (?)`,
    [jobs.map((j) => j.id), jobs.map((j) => j.token)],
  ];
}

/** Deletes job rows whatever their lease (the run ends under the caller's run lock). */
export function deleteJobs(t: Tables, ids: string[]): Statement {
  return [`DELETE j FROM ${t.jobs} AS j FORCE INDEX (PRIMARY) WHERE j.\`id\` IN (?)`, [ids]];
}

// ---------------------------------------------------------------- run effects

/** Moves active runs to their next step. */
export function advanceRuns(t: Tables, moves: Array<{ runId: string; stepNumber: number }>, now: number): Statement {
  // One branch per step number, not per run: runs of a batch are mostly at a few steps.
  const byStep = new Map<number, string[]>();
  for (const m of moves) byStep.set(m.stepNumber, [...(byStep.get(m.stepNumber) ?? []), m.runId]);
  const when = [...byStep.keys()].map(() => 'WHEN `id` IN (?) THEN ?').join(' ');
  return [
    `UPDATE ${t.runs} FORCE INDEX (PRIMARY) SET \`current_step\` = CASE ${when} END, \`updated_at\` = ?
      WHERE \`id\` IN (?) AND \`state\` = '${RunRowState.Active}'`,
    [...[...byStep].flatMap(([step, ids]) => [ids, step]), now, moves.map((m) => m.runId)],
  ];
}

/**
 * The fast path's check that runs whose steps continue are still active, where it writes
 * nothing to them. A plain read is enough: a cancel locks the run's current job row,
 * which this transaction has just written, before it changes the run (lockCurrent), so
 * a cancel either committed before (and is seen) or waits for this COMMIT.
 */
export function allActive(t: Tables, runIds: string[]): Statement {
  return [
    `SET @wf_guard = ~0 + ((SELECT COUNT(*) FROM ${t.runs} FORCE INDEX (PRIMARY) WHERE \`id\` IN (?) AND \`state\` = '${RunRowState.Active}') <> ?)`,
    [runIds, runIds.length],
  ];
}

/** Where a run ends: its last step and that step's deliveries. */
export interface RunEnd extends RunEnding {
  runId: string;
  stepNumber: number;
  attempts: number;
}

/** Ends runs (only those still active and without a parent, if asked: the fast path counts what it changed). */
export function endRuns(t: Tables, ends: RunEnd[], now: number, onlyActiveTopLevel: boolean): Statement {
  const params: unknown[] = [];
  const id = (e: RunEnd) => e.runId;
  const of = ends.length;
  const sets = [
    caseById(params, 'state', ends, id, '?', (e) => [e.status], '`state`', of),
    caseById(params, 'result', ends, id, '?', (e) => [e.result ?? null], '`result`', of),
    caseById(params, 'error', ends, id, '?', (e) => [e.error ?? null], '`error`', of),
    caseById(params, 'current_step', ends, id, '?', (e) => [e.stepNumber], '`current_step`', of),
    caseById(params, 'attempts', ends, id, '?', (e) => [e.attempts], '`attempts`', of),
  ];
  params.push(now, now, ends.map(id));
  return [
    `UPDATE ${t.runs} FORCE INDEX (PRIMARY) SET ${sets.join(', ')},
      \`current_job_id\` = NULL, \`ending\` = \`ending\` + 1, \`finished_at\` = ?, \`updated_at\` = ? WHERE \`id\` IN (?)${onlyActiveTopLevel ? ` AND \`state\` = '${RunRowState.Active}' AND \`parent_run_id\` IS NULL` : ''}`,
    params,
  ];
}

/** A run's row as the transactions that end it lock it. */
export interface LockedRun {
  id: string;
  workflow: string;
  state: string;
  submitted_at: number | string;
  /** Endings so far; the one being written is this + 1. */
  ending: number | string;
  /** A child run's parent, whose join it counts toward when it ends. */
  parent_run_id?: string | null;
}

/** Locks run rows (after their job rows: the lock order). */
export function lockRuns(t: Tables, runIds: string[]): Statement {
  return [
    `SELECT \`id\`, \`workflow\`, \`state\`, \`submitted_at\`, \`ending\`, \`parent_run_id\` FROM ${t.runs} FORCE INDEX (PRIMARY) WHERE \`id\` IN (?) FOR UPDATE`,
    [runIds],
  ];
}

/** A run that a step may still move: anything else means a hand-edited table. */
export const isLive = (state: string | undefined) => state === RunRowState.Active || state === RunRowState.Cancelling;

/** A live run and its current job, both locked. */
export interface LockedCurrent {
  run: LockedRun & { current_job_id: string | null };
  job?: JobRow & { state: number | string; wait_for: string | null };
}

/**
 * Locks a run's current job row, then the run row (the global order), for the
 * transactions that start from a run id (cancel, signal). The job is found by a plain read
 * first and the run re-checked under lock: a run that moved on in between is read again.
 * Undefined for an unknown or finished run, which is then not locked at all (no gap lock
 * for a missing id).
 */
export async function lockCurrent(sql: Sql, t: Tables, runId: string): Promise<LockedCurrent | undefined> {
  for (;;) {
    const [peek] = await sql.query<Array<{ state: string; current_job_id: string | null }>>(
      `SELECT \`state\`, \`current_job_id\` FROM ${t.runs} WHERE \`id\` = ?`,
      [runId],
    );
    if (!peek || !isLive(peek.state)) return undefined;
    const [job] = peek.current_job_id
      ? await sql.query<Array<JobRow & { state: number | string; wait_for: string | null }>>(
          `SELECT ${CLAIM_COLUMNS}, \`state\`, \`wait_for\` FROM ${t.jobs} WHERE \`id\` = ? FOR UPDATE`,
          [peek.current_job_id],
        )
      : [];
    const [run] = await sql.query<Array<LockedRun & { current_job_id: string | null }>>(
      `SELECT \`id\`, \`workflow\`, \`state\`, \`submitted_at\`, \`ending\`, \`parent_run_id\`, \`current_job_id\`
        FROM ${t.runs} WHERE \`id\` = ? FOR UPDATE`,
      [runId],
    );
    if (!run || !isLive(run.state)) return undefined;
    if (run.current_job_id === peek.current_job_id) return { run, job };
  }
}

/** One delivery per handler queue in `queues`, carrying the whole outcome. */
export function deliveries(
  queues: readonly string[],
  maxAttempts: number,
  end: RunEnd & { priority: number; headers: string },
  run: LockedRun,
  now: number,
): NewJob[] {
  if (queues.length === 0) return [];
  const outcome =
    `{"runId":${JSON.stringify(end.runId)},"workflow":${JSON.stringify(run.workflow)},"status":"${end.status}"` +
    (end.result !== undefined ? `,"result":${end.result}` : '') +
    (end.error !== undefined ? `,"error":${JSON.stringify(end.error)}` : '') +
    `,"finalStep":${end.stepNumber},"submittedAt":${Number(run.submitted_at)},"finishedAt":${now},"ending":${Number(run.ending) + 1}}`;
  return queues.map((queue) => ({
    id: ulid(now),
    queue,
    kind: JobKind.Terminal,
    runId: end.runId,
    stepNumber: end.stepNumber,
    priority: end.priority,
    runAt: now,
    scheduled: false,
    maxAttempts,
    payload: outcome,
    headers: end.headers,
  }));
}

/**
 * Ends one locked, live run and writes its terminal deliveries: the careful path, a
 * cancel, the reaper. A run that is `cancelling` ends cancelled whatever was decided.
 * Returns how it ended.
 */
export async function endRun(
  sql: Sql,
  ctx: StorageContext,
  run: LockedRun,
  end: RunEnd & { priority: number; headers: string },
  now: number,
): Promise<RunEnding> {
  const d: RunEnd & { priority: number; headers: string } =
    run.state === RunRowState.Cancelling ? { ...end, status: 'cancelled', result: undefined, error: undefined } : end;
  await sql.query(...endRuns(ctx.t, [d], now, false));
  await recordChanges(ctx, sql, [{ workflow: run.workflow, from: run.state, to: d.status }]);
  const queuesFor = await handlerQueues(ctx, sql, [run.workflow]);
  const jobs = deliveries(queuesFor(run.workflow), ctx.deliveryAttempts, d, run, now);
  if (jobs.length) await sql.query(...insertJobs(ctx.t, jobs, now));
  if (run.parent_run_id) await countTowardParent(ctx, sql, run.parent_run_id, d.status, now);
  return d;
}

/**
 * A child's ending counts toward its parent's join: the last one makes the parent's next
 * step claimable, in this same transaction. Lock order: the child's own rows (already
 * held), then the parent's job row: a run's descendants before its ancestors. A parent's
 * own transactions never lock a child's rows (its cancel reaches the children in
 * transactions of their own), so the two orders never cross. With failFast, a failed or
 * cancelled child marks the join, and maintenance cancels the siblings.
 */
async function countTowardParent(
  ctx: StorageContext,
  sql: Sql,
  parentRunId: string,
  status: string,
  now: number,
): Promise<void> {
  const [parent] = await sql.query<Array<{ current_job_id: string | null }>>(
    `SELECT \`current_job_id\` FROM ${ctx.t.runs} WHERE \`id\` = ?`,
    [parentRunId],
  );
  if (!parent?.current_job_id) return; // the parent ended meanwhile (cancelled): nobody waits
  const failed = status !== 'succeeded';
  await sql.query(
    `UPDATE ${ctx.t.jobs} SET \`state\` = IF(\`children_open\` <= 1, ${JobState.Ready}, \`state\`),
      \`run_at\` = IF(\`children_open\` <= 1, ?, \`run_at\`),
      \`fail_fast\` = IF(\`fail_fast\` = 1 AND ?, 2, \`fail_fast\`),
      \`children_open\` = \`children_open\` - 1
      WHERE \`id\` = ? AND \`state\` = ${JobState.Waiting} AND \`children_open\` > 0`,
    [now, failed, parent.current_job_id],
  );
}

// ---------------------------------------------------------------- inserts

/** One multi-row INSERT; a job inserted already leased gets its lease in the database clock. */
export function insertJobs(t: Tables, jobs: NewJob[], now: number): Statement {
  const rows: string[] = [];
  const params: unknown[] = [];
  for (const j of jobs) {
    if (j.leaseToken) {
      rows.push(
        `(?, ?, ?, ${JobState.Leased}, ?, ?, ?, ?, 1, ?, ?, DATE_ADD(UTC_TIMESTAMP(3), INTERVAL ? MICROSECOND), ?, ?, ?, ?)`,
      );
      params.push(
        j.id,
        j.queue,
        j.kind,
        j.priority,
        j.runAt,
        j.runId,
        j.stepNumber,
        j.maxAttempts,
        j.leaseToken,
        leaseMicros(j.leaseMs),
        j.payload,
        j.headers,
        now,
        j.ckey ?? null,
      );
    } else {
      rows.push('(?, ?, ?, ?, ?, ?, ?, ?, 0, ?, NULL, NULL, ?, ?, ?, ?)');
      params.push(
        j.id,
        j.queue,
        j.kind,
        j.scheduled ? JobState.Scheduled : JobState.Ready,
        j.priority,
        j.runAt,
        j.runId,
        j.stepNumber,
        j.maxAttempts,
        j.payload,
        j.headers,
        now,
        j.ckey ?? null,
      );
    }
  }
  return [`INSERT INTO ${t.jobs} (${JOB_COLUMNS}) VALUES ${rows.join(', ')}`, params];
}

/**
 * A history row's place in its run: its finish time in ms, then a counter of this
 * process. A run's deliveries end one after another (a lease is held by one delivery at a
 * time), so this orders them and cannot repeat within a run.
 */
let historySeq = 0;
// 1,024 a millisecond: exact in a double until the year 2255.
const nextSeq = (now: number) => Math.max(0, Math.floor(now)) * 1024 + (historySeq++ & 1023);

/** One history row per settled delivery (the cancelling run's step is recorded 'cancelled'). */
export function insertHistory(
  t: Tables,
  entries: Array<{ job: ClaimedJob; record: DeliveryRecord }>,
  now: number,
): Statement {
  return [
    `INSERT INTO ${t.history} (\`run_id\`, \`seq\`, \`step_number\`, \`attempt\`, \`started_at\`, \`finished_at\`, \`outcome\`, \`error\`, \`worker\`) VALUES ?`,
    [
      entries.map(({ job, record }) => [
        job.runId,
        nextSeq(now),
        job.stepNumber,
        job.attempts,
        record.startedAt,
        now,
        record.outcome,
        record.error ?? null,
        record.worker.slice(0, 100),
      ]),
    ],
  ];
}

/** Keeps a job as a dead letter, with what `retryDead` needs to re-drive it. */
export function insertDead(t: Tables, job: ClaimedJob, error: string, now: number): Statement {
  const workflow = job.kind === JobKind.Step ? job.queue : workflowOfOutcome(job.payload);
  return [
    `INSERT INTO ${t.dead} (\`job_id\`, \`queue\`, \`kind\`, \`workflow\`, \`run_id\`, \`step_number\`, \`attempts\`, \`max_attempts\`,
      \`priority\`, \`payload\`, \`headers\`, \`last_error\`, \`dead_at\`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    [
      job.id,
      job.queue,
      job.kind,
      workflow,
      job.runId,
      job.stepNumber,
      job.attempts,
      job.maxAttempts,
      job.priority,
      job.payload,
      job.headers,
      error,
      now,
    ],
  ];
}

/** The workflow named in a terminal delivery's outcome; tolerant of a hand-damaged row. */
function workflowOfOutcome(payload: string): string {
  try {
    return String((JSON.parse(payload) as { workflow?: unknown }).workflow ?? '?').slice(0, 128);
  } catch {
    return '?';
  }
}
