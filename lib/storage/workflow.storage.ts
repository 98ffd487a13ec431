import { ulid } from '../utils/ulid.js';
import type { TerminalStatus } from '../interfaces/run.interface.js';
import { runBatch, type Sql, type SqlClient, type WriteResult } from './sql-client.js';
import {
  type ClaimedJob,
  type DeadRow,
  JobKind,
  JobState,
  type NewJob,
  type NewRun,
  type RunRow,
  type SettleResult,
  type Settlement,
  type TerminalFanout,
} from './storage.types.js';

const JOB_COLUMNS =
  '`id`, `queue`, `kind`, `state`, `priority`, `run_at`, `run_id`, `step_number`, `attempts`, `max_attempts`, `lease_token`, `lease_until`, `payload`, `headers`, `created_at`';
const CLAIM_COLUMNS =
  '`id`, `queue`, `kind`, `run_id`, `step_number`, `attempts`, `max_attempts`, `priority`, `payload`, `headers`';

interface JobRow {
  id: string;
  queue: string;
  kind: number | string;
  run_id: string;
  step_number: number | string;
  attempts: number | string;
  max_attempts: number | string | null;
  priority: number | string;
  payload: string;
  headers: string;
}

/** Thrown inside a transaction to roll it back and take the careful path. */
const SLOW_PATH = Symbol('slow path');
/**
 * The settle fast path checks each write's row count in the server, in the same round
 * trip: `~0 + 1` overflows BIGINT UNSIGNED, which MySQL and MariaDB both refuse with
 * ER_DATA_OUT_OF_RANGE whatever the sql_mode, so a count that is off stops the trip
 * before its COMMIT.
 */
const countIs = (n: number): [string, readonly unknown[]] => ['SET @wf_guard = ~0 + (ROW_COUNT() <> ?)', [n]];
const GUARD_TRIPPED = 1690;

type FinishSettlement = Extract<Settlement, { type: 'finish' }>;

export type CancelResult = 'cancelled' | 'cancelling' | 'already-cancelling' | false;

export interface ExistingRun {
  id: string;
  workflow: string;
  inputHash: string;
}

/**
 * Statements that touch several rows by primary key say FORCE INDEX (PRIMARY): on a
 * small or freshly emptied table the optimizer otherwise picks a full scan, and a
 * locking scan waits on (and deadlocks with) rows other workers hold. Single-table
 * DELETE accepts no index hint, hence the multi-table form `DELETE j FROM t AS j`.
 *
 * The only home of SQL. One method per transaction, each named for what it commits.
 * Lock order everywhere: job row, then run row, then dead row; that one order is
 * why two of these transactions can wait on each other but not deadlock.
 */
export class WorkflowStorage {
  private readonly t: { runs: string; jobs: string; dead: string };

  constructor(
    readonly client: SqlClient,
    prefix: string,
    private readonly now: () => number,
    private readonly fanout: TerminalFanout,
  ) {
    this.t = { runs: `\`${prefix}runs\``, jobs: `\`${prefix}jobs\``, dead: `\`${prefix}dead\`` };
  }

  // ---------------------------------------------------------------- submit

  /**
   * Creates runs with their step 0, all or nothing. Existing ids are handed to `check`
   * first (the caller compares input hashes and throws to refuse the whole call), then
   * the fresh runs and their jobs are inserted; in a transaction of our own that is one
   * round trip with the COMMIT (`commit`). A duplicate key means another submitter
   * committed one of these ids since the read: everything since the savepoint is undone
   * and the loop reads again, inside the caller's transaction as well as ours.
   */
  async submitRuns(
    sql: Sql,
    runs: NewRun[],
    check: (existing: Map<string, ExistingRun>) => void,
    commit = false,
  ): Promise<{ inserted: Set<string>; existing: Map<string, ExistingRun> }> {
    for (let attempt = 0; ; attempt++) {
      const existing = new Map<string, ExistingRun>();
      const rows = await sql.query<Array<{ id: string; workflow: string; input_hash: string }>>(
        `SELECT \`id\`, \`workflow\`, \`input_hash\` FROM ${this.t.runs} FORCE INDEX (PRIMARY) WHERE \`id\` IN (?) LOCK IN SHARE MODE`,
        [runs.map((r) => r.id)],
      );
      for (const r of rows) existing.set(r.id, { id: r.id, workflow: r.workflow, inputHash: r.input_hash });
      check(existing);
      const fresh = runs.filter((r) => !existing.has(r.id));
      if (fresh.length === 0) return { inserted: new Set(), existing };
      try {
        await runBatch(
          sql,
          [
            ['SAVEPOINT wf_submit', []],
            [
              `INSERT INTO ${this.t.runs} (\`id\`, \`workflow\`, \`state\`, \`current_step\`, \`current_job_id\`, \`input_hash\`, \`headers\`, \`priority\`, \`max_attempts\`, \`submitted_at\`, \`updated_at\`) VALUES ?`,
              [
                fresh.map((r) => [
                  r.id, r.workflow, 'active', 0, r.firstJob.id, r.inputHash, r.headers, r.priority, r.maxAttempts,
                  r.submittedAt, r.submittedAt,
                ]),
              ],
            ],
            this.insertStatement(fresh.map((r) => r.firstJob)),
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
      return { inserted: new Set(fresh.map((r) => r.id)), existing };
    }
  }

  // ---------------------------------------------------------------- claim

  /**
   * Leases up to `limit` ready jobs of one queue to `token`; `more` says whether another
   * ready one was left behind (the SELECT reads one row past the limit and leaves it to
   * the next claimer). SKIP LOCKED lets claimers pass each other; the lease is stamped in the database clock, so host clock skew
   * cannot make two workers believe they hold one job. Crash window: a claim that
   * commits and then loses its worker leaves leased rows that the reaper returns
   * when the lease expires, counting that delivery as an attempt.
   */
  async claimBatch(
    queue: string,
    limit: number,
    token: string,
    leaseMs: number,
    maxAttempts: number,
  ): Promise<{ jobs: ClaimedJob[]; more: boolean }> {
    return this.client.transaction(async (sql) => {
      const found = await sql.query<JobRow[]>(
        `SELECT ${CLAIM_COLUMNS} FROM ${this.t.jobs} FORCE INDEX (\`ix_claim\`)
          WHERE \`queue\` = ? AND \`state\` = ${JobState.Ready}
          ORDER BY \`priority\`, \`run_at\`, \`id\` LIMIT ? FOR UPDATE SKIP LOCKED`,
        [queue, limit + 1],
      );
      const rows = found.slice(0, limit);
      if (rows.length === 0) return { jobs: [], more: false };
      // The rows are locked by the SELECT, so the lease is right whatever the UPDATE
      // reports: it goes with the COMMIT in one round trip.
      await runBatch(
        sql,
        [
          [
            // One token per job (claim token + job id), so a token never fences another job's row.
            `UPDATE ${this.t.jobs} FORCE INDEX (PRIMARY) SET \`state\` = ${JobState.Leased}, \`attempts\` = \`attempts\` + 1, \`lease_token\` = CONCAT(?, '/', \`id\`),
              \`lease_until\` = DATE_ADD(UTC_TIMESTAMP(3), INTERVAL ? MICROSECOND), \`max_attempts\` = COALESCE(\`max_attempts\`, ?)
              WHERE \`id\` IN (?)`,
            [token, leaseMs * 1000, maxAttempts, rows.map((r) => r.id)],
          ],
        ],
        true,
      );
      const jobs = rows.map((r) => ({
        ...toClaimed(r, `${token}/${r.id}`, Number(r.attempts) + 1),
        maxAttempts: Number(r.max_attempts ?? maxAttempts),
      }));
      return { jobs, more: found.length > limit };
    });
  }

  /** Whether any ready job of `queue` waits for a slot (one index probe, no locks). */
  async hasReady(queue: string): Promise<boolean> {
    const rows = await this.client.query<unknown[]>(
      `SELECT 1 FROM ${this.t.jobs} FORCE INDEX (\`ix_claim\`) WHERE \`queue\` = ? AND \`state\` = ${JobState.Ready} LIMIT 1`,
      [queue],
    );
    return rows.length > 0;
  }

  /**
   * Which of `queues` have a ready job waiting: one statement for all of them, no locks.
   * GROUP BY on the claim index's leading column, with `state` fixed, is a loose index
   * scan: a few index reads per queue however deep its backlog.
   */
  async readyQueues(queues: readonly string[]): Promise<Set<string>> {
    if (queues.length === 0) return new Set();
    const rows = await this.client.query<Array<{ queue: string }>>(
      `SELECT \`queue\` FROM ${this.t.jobs} FORCE INDEX (\`ix_claim\`)
        WHERE \`queue\` IN (?) AND \`state\` = ${JobState.Ready} GROUP BY \`queue\``,
      [queues],
    );
    return new Set(rows.map((r) => r.queue));
  }

  /** Moves scheduled jobs whose time has come to ready. Idempotent; SKIP LOCKED so promoters never queue behind each other. */
  async promoteDue(limit = 500): Promise<number> {
    return this.client.transaction(async (sql) => {
      const rows = await sql.query<Array<{ id: string }>>(
        `SELECT \`id\` FROM ${this.t.jobs} FORCE INDEX (\`ix_state\`)
          WHERE \`state\` = ${JobState.Scheduled} AND \`run_at\` <= ? ORDER BY \`run_at\` LIMIT ? FOR UPDATE SKIP LOCKED`,
        [this.now(), limit],
      );
      if (rows.length === 0) return 0;
      await sql.query(`UPDATE ${this.t.jobs} FORCE INDEX (PRIMARY) SET \`state\` = ${JobState.Ready} WHERE \`id\` IN (?)`, [
        rows.map((r) => r.id),
      ]);
      return rows.length;
    });
  }

  // ---------------------------------------------------------------- leases

  /**
   * Pushes the leases of jobs this process holds to at least `ms` from now (database
   * clock). Returns the ids whose lease is no longer ours.
   */
  async renewLeases(jobs: Array<{ id: string; token: string }>, ms: number): Promise<string[]> {
    if (jobs.length === 0) return [];
    const ids = jobs.map((j) => j.id);
    const tokens = [...new Set(jobs.map((j) => j.token))];
    await this.client.query<WriteResult>(
      `UPDATE ${this.t.jobs} FORCE INDEX (PRIMARY) SET \`lease_until\` = GREATEST(\`lease_until\`, DATE_ADD(UTC_TIMESTAMP(3), INTERVAL ? MICROSECOND))
        WHERE \`id\` IN (?) AND \`lease_token\` IN (?) AND \`state\` = ${JobState.Leased}`,
      [ms * 1000, ids, tokens],
    );
    const held = await this.client.query<Array<{ id: string; lease_token: string }>>(
      `SELECT \`id\`, \`lease_token\` FROM ${this.t.jobs} WHERE \`id\` IN (?) AND \`state\` = ${JobState.Leased}`,
      [ids],
    );
    const ours = new Set(held.map((h) => `${h.id}/${h.lease_token}`));
    return jobs.filter((j) => !ours.has(`${j.id}/${j.token}`)).map((j) => j.id);
  }

  /** Runs among these that a `cancel()` from any process has marked cancelling. */
  async cancellingAmong(runIds: string[]): Promise<string[]> {
    if (runIds.length === 0) return [];
    const rows = await this.client.query<Array<{ id: string }>>(
      `SELECT \`id\` FROM ${this.t.runs} WHERE \`id\` IN (?) AND \`state\` = 'cancelling'`,
      [runIds],
    );
    return rows.map((r) => r.id);
  }

  // ---------------------------------------------------------------- settle

  /**
   * Group commit: many settlements in one transaction. The fast path covers the hot
   * case (`continue` and `finish` on jobs whose lease holds and whose run is active)
   * with a few statements for the whole batch. Anything else (a lost lease, a
   * cancelling run, another kind of settlement) rolls that attempt back and applies
   * each item with `settleIn`, one after another in one transaction, with exactly the
   * guarantees of `settle`.
   */
  async settleMany(items: Array<{ job: ClaimedJob; settlement: Settlement }>): Promise<SettleResult[]> {
    if (items.every((i) => i.job.kind === JobKind.Step && (i.settlement.type === 'continue' || i.settlement.type === 'finish'))) {
      const fast = await this.client.transaction((sql) => this.settleFast(sql, items)).catch((err) => {
        if (err === SLOW_PATH || (err as { errno?: number })?.errno === GUARD_TRIPPED) return null;
        throw err;
      });
      if (fast) return fast;
    }
    return this.client.transaction(async (sql) => {
      const results: SettleResult[] = [];
      for (const i of items) results.push(await this.settleIn(sql, i.job, i.settlement));
      return results;
    });
  }

  /**
   * A `continue` rewrites its job row in place as the successor (same id; next step,
   * payload and lease), which leaves both secondary indexes alone when the successor
   * stays leased to this worker; a `finish` deletes its job. Tokens are unique per job,
   * so the IN lists cannot match a row by another item's token. The server checks each
   * write's row count itself (`countIs`), so a batch whose runs have no @OnTerminal
   * handler commits in the same round trip; if a count is off (a lost lease, a run that
   * is not active) the check fails, nothing commits, and the careful path runs.
   * Terminal deliveries carry the run's submission time: those batches read the ending
   * runs first and take a second round trip.
   */
  private async settleFast(
    sql: Sql,
    items: Array<{ job: ClaimedJob; settlement: Settlement }>,
  ): Promise<SettleResult[]> {
    const now = this.now();
    const moving = items.filter((i) => i.settlement.type === 'continue');
    const ending = items.filter((i) => i.settlement.type === 'finish');
    const notify = ending.some((e) => this.fanout.queuesFor(e.job.queue).length > 0);
    const first: Array<[string, readonly unknown[]]> = [];
    if (moving.length) {
      const next = (m: (typeof items)[number]) => (m.settlement as { next: NewJob }).next;
      const when = moving.map(() => 'WHEN ? THEN ?').join(' ');
      first.push(
        this.successorsInPlace(moving.map((m) => ({ job: m.job, next: next(m) })), now),
        countIs(moving.length),
        [
          `UPDATE ${this.t.runs} FORCE INDEX (PRIMARY) SET \`current_step\` = CASE \`id\` ${when} END, \`updated_at\` = ?
            WHERE \`id\` IN (?) AND \`state\` = 'active'`,
          [...moving.flatMap((m) => [m.job.runId, next(m).stepNumber]), now, moving.map((m) => m.job.runId)],
        ],
        countIs(moving.length),
      );
    }
    if (ending.length) {
      first.push(
        [
          `DELETE j FROM ${this.t.jobs} AS j FORCE INDEX (PRIMARY) WHERE j.\`id\` IN (?) AND j.\`lease_token\` IN (?)`,
          [ending.map((i) => i.job.id), ending.map((i) => i.job.token)],
        ],
        countIs(ending.length),
      );
    }
    if (ending.length && !notify) {
      first.push(this.endRuns(ending, now, true), countIs(ending.length));
    }
    if (ending.length && notify) {
      first.push(
        [
          `SELECT \`id\`, \`workflow\`, \`state\`, \`submitted_at\` FROM ${this.t.runs} FORCE INDEX (PRIMARY) WHERE \`id\` IN (?) FOR UPDATE`,
          [ending.map((e) => e.job.runId)],
        ],
      );
    }
    const results = await runBatch(sql, first, !notify);
    if (!notify) return items.map((): SettleResult => 'settled');

    const runs = results[first.length - 1] as Array<{
      id: string;
      workflow: string;
      state: string;
      submitted_at: number | string;
    }>;
    const byId = new Map(runs.map((r) => [r.id, r]));
    if (runs.length !== ending.length || runs.some((r) => r.state !== 'active')) throw SLOW_PATH;
    const deliveries = ending.flatMap((e) => {
      const run = byId.get(e.job.runId)!;
      return this.deliveries(e.job, run.workflow, Number(run.submitted_at), e.settlement as FinishSettlement, now);
    });
    const second = [this.endRuns(ending, now, false)];
    if (deliveries.length) second.push(this.insertStatement(deliveries));
    await runBatch(sql, second, true);
    return items.map((): SettleResult => 'settled');
  }

  /**
   * One UPDATE that turns each held job row into its successor. A successor leased to
   * this worker keeps state and run_at, so neither index entry moves; one that waits (a
   * delay, or the in-place bound reached) goes back to the queue like a fresh job.
   */
  private successorsInPlace(moves: Array<{ job: ClaimedJob; next: NewJob }>, now: number): [string, unknown[]] {
    const params: unknown[] = [];
    const column = (name: string, list: typeof moves, then: string, value: (m: (typeof moves)[number]) => unknown[], otherwise: string) => {
      if (list.length === 0) return `\`${name}\` = ${otherwise}`;
      for (const m of list) params.push(m.job.id, ...value(m));
      return `\`${name}\` = CASE \`id\` ${list.map(() => `WHEN ? THEN ${then}`).join(' ')} ELSE ${otherwise} END`;
    };
    const leased = moves.filter((m) => m.next.leaseToken);
    const waiting = moves.filter((m) => !m.next.leaseToken);
    const sets = [
      column('step_number', moves, '?', (m) => [m.next.stepNumber], '`step_number`'),
      column('payload', moves, '?', (m) => [m.next.payload], '`payload`'),
      column('lease_token', leased, '?', (m) => [m.next.leaseToken], 'NULL'),
      column('lease_until', leased, 'DATE_ADD(UTC_TIMESTAMP(3), INTERVAL ? MICROSECOND)', (m) => [(m.next.leaseMs ?? 30_000) * 1000], 'NULL'),
      column('attempts', leased, '1', () => [], '0'),
      column('state', waiting, '?', (m) => [m.next.scheduled ? JobState.Scheduled : JobState.Ready], '`state`'),
      column('run_at', waiting, '?', (m) => [m.next.runAt], '`run_at`'),
    ];
    params.push(now, moves.map((m) => m.job.id), moves.map((m) => m.job.token));
    return [
      `UPDATE ${this.t.jobs} FORCE INDEX (PRIMARY) SET ${sets.join(', ')}, \`last_error\` = NULL, \`created_at\` = ?
        WHERE \`id\` IN (?) AND \`lease_token\` IN (?)`,
      params,
    ];
  }

  /** The UPDATE that ends the runs of these `finish` settlements (only while active, if asked). */
  private endRuns(ending: Array<{ job: ClaimedJob; settlement: Settlement }>, now: number, onlyActive: boolean): [string, unknown[]] {
    const when = ending.map(() => 'WHEN ? THEN ?').join(' ');
    const d = (e: (typeof ending)[number]) => e.settlement as FinishSettlement;
    return [
      `UPDATE ${this.t.runs} FORCE INDEX (PRIMARY) SET \`state\` = CASE \`id\` ${when} END, \`result\` = CASE \`id\` ${when} END,
        \`error\` = CASE \`id\` ${when} END, \`current_step\` = CASE \`id\` ${when} END, \`attempts\` = CASE \`id\` ${when} END,
        \`current_job_id\` = NULL, \`finished_at\` = ?, \`updated_at\` = ? WHERE \`id\` IN (?)${onlyActive ? " AND `state` = 'active'" : ''}`,
      [
        ...ending.flatMap((e) => [e.job.runId, d(e).status]),
        ...ending.flatMap((e) => [e.job.runId, d(e).result ?? null]),
        ...ending.flatMap((e) => [e.job.runId, d(e).error ?? null]),
        ...ending.flatMap((e) => [e.job.runId, e.job.stepNumber]),
        ...ending.flatMap((e) => [e.job.runId, e.job.attempts]),
        now,
        now,
        ending.map((e) => e.job.runId),
      ],
    ];
  }

  /**
   * Applies one settlement to a leased job inside the caller's transaction: the fenced DELETE/UPDATE
   * of the job first (zero rows: the lease was lost, nothing else is written), then the
   * run row, the successor or the terminal deliveries. A crash before COMMIT leaves the
   * job leased (the reaper returns it); after COMMIT the transition is whole. So a
   * step's successor exists if and only if its settlement committed.
   */
  private async settleIn(sql: Sql, job: ClaimedJob, s: Settlement): Promise<SettleResult> {
    const now = this.now();
    if (s.type === 'retry' || s.type === 'release') {
      const res = await sql.query<WriteResult>(
        s.type === 'retry'
          ? `UPDATE ${this.t.jobs} SET \`state\` = ${JobState.Scheduled}, \`run_at\` = ?, \`last_error\` = ?, \`lease_token\` = NULL, \`lease_until\` = NULL
              WHERE \`id\` = ? AND \`lease_token\` = ?`
          : // A hand-back at shutdown is not the step's fault: that delivery does not count.
            `UPDATE ${this.t.jobs} SET \`state\` = ${JobState.Ready}, \`attempts\` = GREATEST(\`attempts\`, 1) - 1, \`lease_token\` = NULL, \`lease_until\` = NULL
              WHERE \`id\` = ? AND \`lease_token\` = ?`,
        s.type === 'retry' ? [s.runAt, s.error, job.id, job.token] : [job.id, job.token],
      );
      if (res.affectedRows === 0) return 'lost';
      if (job.kind !== JobKind.Step) return 'settled';
      // A cancel() that arrived while this step ran wins over the retry/hand-back.
      const [run] = await sql.query<Array<{ state: string }>>(`SELECT \`state\` FROM ${this.t.runs} WHERE \`id\` = ?`, [
        job.runId,
      ]);
      if (run?.state !== 'cancelling') return 'settled';
      await sql.query(`DELETE FROM ${this.t.jobs} WHERE \`id\` = ?`, [job.id]);
      return (await this.finishRun(sql, job, { status: 'cancelled' }, now)) === 'orphan'
        ? this.orphaned(sql, job, now)
        : 'cancelled';
    }

    const del = await sql.query<WriteResult>(`DELETE FROM ${this.t.jobs} WHERE \`id\` = ? AND \`lease_token\` = ?`, [
      job.id,
      job.token,
    ]);
    if (del.affectedRows === 0) return 'lost';

    if (job.kind === JobKind.Terminal) {
      if (s.type === 'dead') await this.insertDead(sql, job, s.error, now);
      return 'settled';
    }

    if (s.type === 'continue') {
      const upd = await sql.query<WriteResult>(
        `UPDATE ${this.t.runs} SET \`current_step\` = ?, \`current_job_id\` = ?, \`updated_at\` = ? WHERE \`id\` = ? AND \`state\` = 'active'`,
        [s.next.stepNumber, s.next.id, now, job.runId],
      );
      if (upd.affectedRows === 0) {
        // The run is cancelling: the step's result is discarded and the run ends cancelled.
        const ended = await this.finishRun(sql, job, { status: 'cancelled' }, now);
        return ended === 'orphan' ? this.orphaned(sql, job, now) : 'cancelled';
      }
      await this.insertJobs(sql, [s.next]);
      return 'settled';
    }

    const decision =
      s.type === 'finish'
        ? s
        : s.type === 'dead'
          ? { status: 'failed' as const, error: s.reason ?? s.error }
          : { status: 'cancelled' as const }; // the worker observed an external cancel
    const ended = await this.finishRun(sql, job, decision, now);
    if (ended === 'orphan') return this.orphaned(sql, job, now);
    if (s.type === 'dead' && ended === 'settled') await this.insertDead(sql, job, s.error, now);
    return s.type === 'cancelled' ? 'settled' : ended;
  }

  /** Keeps a step whose run row is missing or finished as a dead letter an operator can see. */
  private async orphaned(sql: Sql, job: ClaimedJob, now: number): Promise<SettleResult> {
    await this.insertDead(sql, job, `run ${job.runId} is missing or already finished; step not applied`, now);
    return 'settled';
  }

  /**
   * Ends the run of `job` (whose row is already gone) and writes one delivery per
   * matching @OnTerminal handler in the same transaction, so handlers see only
   * outcomes that committed. A run that is `cancelling` ends cancelled whatever the
   * step decided.
   */
  private async finishRun(
    sql: Sql,
    job: { runId: string; stepNumber: number; attempts: number; priority: number; headers: string },
    decision: { status: TerminalStatus; result?: string; error?: string },
    now: number,
  ): Promise<SettleResult | 'orphan'> {
    const [run] = await sql.query<Array<{ workflow: string; state: string; submitted_at: number | string }>>(
      `SELECT \`workflow\`, \`state\`, \`submitted_at\` FROM ${this.t.runs} WHERE \`id\` = ? FOR UPDATE`,
      [job.runId],
    );
    // A leased step whose run row is gone or finished: only a hand-edited table gets here.
    if (!run || (run.state !== 'active' && run.state !== 'cancelling')) return 'orphan';
    const d = run.state === 'cancelling' ? { status: 'cancelled' as const } : decision;
    await sql.query(
      `UPDATE ${this.t.runs} SET \`state\` = ?, \`result\` = ?, \`error\` = ?, \`current_step\` = ?, \`current_job_id\` = NULL,
        \`attempts\` = ?, \`finished_at\` = ?, \`updated_at\` = ? WHERE \`id\` = ?`,
      [d.status, d.result ?? null, d.error ?? null, job.stepNumber, job.attempts, now, now, job.runId],
    );
    await this.insertJobs(sql, this.deliveries(job, run.workflow, Number(run.submitted_at), d, now));
    return run.state === 'cancelling' && decision.status !== 'cancelled' ? 'cancelled' : 'settled';
  }

  /** One delivery per @OnTerminal handler that wants this workflow, carrying the whole outcome. */
  private deliveries(
    job: { runId: string; stepNumber: number; priority: number; headers: string },
    workflow: string,
    submittedAt: number,
    d: { status: TerminalStatus; result?: string; error?: string },
    now: number,
  ): NewJob[] {
    const queues = this.fanout.queuesFor(workflow);
    if (queues.length === 0) return [];
    const outcome =
      `{"runId":${JSON.stringify(job.runId)},"workflow":${JSON.stringify(workflow)},"status":"${d.status}"` +
      (d.result !== undefined ? `,"result":${d.result}` : '') +
      (d.error !== undefined ? `,"error":${JSON.stringify(d.error)}` : '') +
      `,"finalStep":${job.stepNumber},"submittedAt":${submittedAt},"finishedAt":${now}}`;
    return queues.map((queue) => ({
      id: ulid(now),
      queue,
      kind: JobKind.Terminal,
      runId: job.runId,
      stepNumber: job.stepNumber,
      priority: job.priority,
      runAt: now,
      scheduled: false,
      maxAttempts: this.fanout.maxAttempts,
      payload: outcome,
      headers: job.headers,
    }));
  }

  private async insertJobs(sql: Sql, jobs: NewJob[]): Promise<void> {
    if (jobs.length) await sql.query(...this.insertStatement(jobs));
  }

  /** One multi-row INSERT; a job inserted already leased gets its lease in the database clock. */
  private insertStatement(jobs: NewJob[]): [string, unknown[]] {
    const now = this.now();
    const rows: string[] = [];
    const params: unknown[] = [];
    for (const j of jobs) {
      if (j.leaseToken) {
        rows.push(`(?, ?, ?, ${JobState.Leased}, ?, ?, ?, ?, 1, ?, ?, DATE_ADD(UTC_TIMESTAMP(3), INTERVAL ? MICROSECOND), ?, ?, ?)`);
        params.push(
          j.id, j.queue, j.kind, j.priority, j.runAt, j.runId, j.stepNumber, j.maxAttempts, j.leaseToken,
          (j.leaseMs ?? 30_000) * 1000, j.payload, j.headers, now,
        );
      } else {
        rows.push('(?, ?, ?, ?, ?, ?, ?, ?, 0, ?, NULL, NULL, ?, ?, ?)');
        params.push(
          j.id, j.queue, j.kind, j.scheduled ? JobState.Scheduled : JobState.Ready, j.priority, j.runAt, j.runId,
          j.stepNumber, j.maxAttempts, j.payload, j.headers, now,
        );
      }
    }
    return [`INSERT INTO ${this.t.jobs} (${JOB_COLUMNS}) VALUES ${rows.join(', ')}`, params];
  }

  private async insertDead(sql: Sql, job: ClaimedJob, error: string, now: number): Promise<void> {
    const workflow = job.kind === JobKind.Step ? job.queue : workflowOfOutcome(job.payload);
    await sql.query(
      `INSERT INTO ${this.t.dead} (\`job_id\`, \`queue\`, \`kind\`, \`workflow\`, \`run_id\`, \`step_number\`, \`attempts\`, \`max_attempts\`,
        \`priority\`, \`payload\`, \`headers\`, \`last_error\`, \`dead_at\`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      [
        job.id, job.queue, job.kind, workflow, job.runId, job.stepNumber, job.attempts, job.maxAttempts, job.priority,
        job.payload, job.headers, error, now,
      ],
    );
  }

  // ---------------------------------------------------------------- reaper

  /**
   * Returns jobs whose lease expired (their worker died or stalled) to the queue. The
   * cut-off delivery counts as an attempt, so a step that kills its process every
   * time ends dead-lettered instead of looping forever. A cancelling run is cancelled.
   */
  async reapExpired(limit = 100): Promise<{ requeued: number; dead: number; cancelled: number }> {
    return this.client.transaction(async (sql) => {
      const rows = await sql.query<Array<JobRow & { lease_token: string }>>(
        `SELECT ${CLAIM_COLUMNS}, \`lease_token\` FROM ${this.t.jobs} FORCE INDEX (\`ix_state\`)
          WHERE \`state\` = ${JobState.Leased} AND \`lease_until\` < UTC_TIMESTAMP(3) LIMIT ? FOR UPDATE SKIP LOCKED`,
        [limit],
      );
      const counts = { requeued: 0, dead: 0, cancelled: 0 };
      if (rows.length === 0) return counts;
      const stepRunIds = rows.filter((r) => Number(r.kind) === JobKind.Step).map((r) => r.run_id);
      const cancelling = new Set(
        stepRunIds.length
          ? (
              await sql.query<Array<{ id: string }>>(
                `SELECT \`id\` FROM ${this.t.runs} WHERE \`id\` IN (?) AND \`state\` = 'cancelling'`,
                [stepRunIds],
              )
            ).map((r) => r.id)
          : [],
      );
      const requeue: string[] = [];
      for (const row of rows) {
        const job = toClaimed(row, row.lease_token, Number(row.attempts));
        if (job.kind === JobKind.Step && cancelling.has(job.runId)) {
          await this.settleIn(sql, job, { type: 'cancelled' });
          counts.cancelled++;
        } else if (job.attempts >= job.maxAttempts) {
          const error = `lease expired ${job.attempts} times: the worker running it died or stalled (last delivery cut off)`;
          await this.settleIn(sql, job, { type: 'dead', error });
          counts.dead++;
        } else {
          requeue.push(job.id);
        }
      }
      if (requeue.length) {
        await sql.query(
          `UPDATE ${this.t.jobs} FORCE INDEX (PRIMARY) SET \`state\` = ${JobState.Ready}, \`lease_token\` = NULL, \`lease_until\` = NULL,
            \`last_error\` = 'lease expired: the worker running it died or stalled' WHERE \`id\` IN (?)`,
          [requeue],
        );
        counts.requeued = requeue.length;
      }
      return counts;
    });
  }

  // ---------------------------------------------------------------- control

  /**
   * Cancels a run. A waiting step is deleted and the run cancelled in one transaction;
   * a running one marks the run `cancelling` for its worker to abort and settle.
   * Locks the job before the run (the global order), re-checking that the run did
   * not move to another step in between.
   */
  async cancelRun(runId: string): Promise<CancelResult> {
    return this.client.transaction(async (sql) => {
      for (;;) {
        const [peek] = await sql.query<Array<{ state: string; current_job_id: string | null }>>(
          `SELECT \`state\`, \`current_job_id\` FROM ${this.t.runs} WHERE \`id\` = ?`,
          [runId],
        );
        if (!peek || (peek.state !== 'active' && peek.state !== 'cancelling')) return false;
        if (peek.state === 'cancelling') return 'already-cancelling';
        const jobs = peek.current_job_id
          ? await sql.query<Array<JobRow & { state: number | string }>>(
              `SELECT ${CLAIM_COLUMNS}, \`state\` FROM ${this.t.jobs} WHERE \`id\` = ? FOR UPDATE`,
              [peek.current_job_id],
            )
          : [];
        const [run] = await sql.query<Array<{ state: string; current_job_id: string | null }>>(
          `SELECT \`state\`, \`current_job_id\` FROM ${this.t.runs} WHERE \`id\` = ? FOR UPDATE`,
          [runId],
        );
        if (!run || (run.state !== 'active' && run.state !== 'cancelling')) return false;
        if (run.state === 'cancelling') return 'already-cancelling';
        if (run.current_job_id !== peek.current_job_id) continue; // moved on meanwhile
        const job = jobs[0];
        if (job && Number(job.state) === JobState.Leased) {
          await sql.query(
            `UPDATE ${this.t.runs} SET \`state\` = 'cancelling', \`updated_at\` = ? WHERE \`id\` = ?`,
            [this.now(), runId],
          );
          return 'cancelling';
        }
        if (job) await sql.query(`DELETE FROM ${this.t.jobs} WHERE \`id\` = ?`, [job.id]);
        const claimed = job
          ? toClaimed(job, '', Number(job.attempts))
          : { runId, stepNumber: 0, attempts: 0, priority: 0, headers: '{}' };
        await this.finishRun(sql, claimed, { status: 'cancelled' }, this.now());
        return 'cancelled';
      }
    });
  }

  async getRun(runId: string): Promise<RunRow | null> {
    const rows = await this.client.query<RunRow[]>(
      `SELECT r.*, j.\`state\` AS job_state, j.\`attempts\` AS job_attempts, j.\`run_at\` AS job_run_at
        FROM ${this.t.runs} r LEFT JOIN ${this.t.jobs} j ON j.\`id\` = r.\`current_job_id\` WHERE r.\`id\` = ?`,
      [runId],
    );
    return rows[0] ?? null;
  }

  async deadSteps(filter: { workflow?: string; limit: number; before?: number }): Promise<DeadRow[]> {
    const where: string[] = [];
    const params: unknown[] = [];
    if (filter.workflow !== undefined) {
      where.push('`workflow` = ?');
      params.push(filter.workflow);
    }
    if (filter.before !== undefined) {
      where.push('`dead_at` < ?');
      params.push(filter.before);
    }
    params.push(filter.limit);
    return this.client.query<DeadRow[]>(
      `SELECT \`job_id\`, \`queue\`, \`kind\`, \`workflow\`, \`run_id\`, \`step_number\`, \`attempts\`, \`max_attempts\`, \`priority\`,
        '' AS \`payload\`, '' AS \`headers\`, \`last_error\`, \`dead_at\`
        FROM ${this.t.dead} ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY \`dead_at\` DESC, \`job_id\` DESC LIMIT ?`,
      params,
    );
  }

  /**
   * Re-drives a dead letter: the job goes back to the queue (attempts from zero) and,
   * for a step, its failed run becomes active again at that step, in one transaction.
   * False when the dead letter is gone or its run has moved on since.
   */
  async retryDead(jobId: string, stepNumber?: number): Promise<boolean> {
    return this.client.transaction(async (sql) => {
      const [dead] = await sql.query<DeadRow[]>(`SELECT * FROM ${this.t.dead} WHERE \`job_id\` = ? FOR UPDATE`, [jobId]);
      if (!dead) return false;
      if (stepNumber !== undefined && (Number(dead.kind) !== JobKind.Step || Number(dead.step_number) !== stepNumber)) return false;
      const now = this.now();
      const job: NewJob = {
        id: ulid(now),
        queue: dead.queue,
        kind: Number(dead.kind) as JobKind,
        runId: dead.run_id,
        stepNumber: Number(dead.step_number),
        priority: Number(dead.priority),
        runAt: now,
        scheduled: false,
        maxAttempts: Number(dead.max_attempts),
        payload: dead.payload,
        headers: dead.headers,
      };
      if (job.kind === JobKind.Step) {
        const [run] = await sql.query<Array<{ state: string; current_step: number | string }>>(
          `SELECT \`state\`, \`current_step\` FROM ${this.t.runs} WHERE \`id\` = ? FOR UPDATE`,
          [dead.run_id],
        );
        if (!run || run.state !== 'failed' || Number(run.current_step) !== job.stepNumber) return false;
        await sql.query(
          `UPDATE ${this.t.runs} SET \`state\` = 'active', \`current_job_id\` = ?, \`attempts\` = 0, \`result\` = NULL, \`error\` = NULL,
            \`finished_at\` = NULL, \`updated_at\` = ? WHERE \`id\` = ?`,
          [job.id, now, dead.run_id],
        );
      }
      await this.insertJobs(sql, [job]);
      await sql.query(`DELETE FROM ${this.t.dead} WHERE \`job_id\` = ?`, [jobId]);
      return true;
    });
  }

  // ---------------------------------------------------------------- retention

  /**
   * Deletes finished runs and dead letters older than the cut-offs, in small batches by
   * index range so no statement holds many locks. Runs under a GET_LOCK so one process
   * sweeps at a time; the others skip.
   */
  async sweepRetention(runsBefore: number, deadBefore: number, batch = 500): Promise<{ runs: number; dead: number } | null> {
    return this.client.withConnection(async (sql) => {
      const [{ db }] = await sql.query<Array<{ db: string }>>('SELECT DATABASE() AS db');
      const lock = `wfret:${db}.${this.t.runs}`.slice(0, 64);
      const [{ got }] = await sql.query<Array<{ got: number | null }>>('SELECT GET_LOCK(?, 0) AS got', [lock]);
      if (Number(got) !== 1) return null;
      try {
        let runs = 0;
        let dead = 0;
        for (;;) {
          const r = await sql.query<WriteResult>(
            `DELETE FROM ${this.t.runs} WHERE \`finished_at\` < ? ORDER BY \`finished_at\` LIMIT ?`,
            [runsBefore, batch],
          );
          runs += r.affectedRows;
          if (r.affectedRows < batch) break;
        }
        for (;;) {
          const r = await sql.query<WriteResult>(
            `DELETE FROM ${this.t.dead} WHERE \`dead_at\` < ? ORDER BY \`dead_at\` LIMIT ?`,
            [deadBefore, batch],
          );
          dead += r.affectedRows;
          if (r.affectedRows < batch) break;
        }
        return { runs, dead };
      } finally {
        await sql.query('SELECT RELEASE_LOCK(?)', [lock]).catch(() => undefined);
      }
    });
  }
}

/** The workflow named in a terminal delivery's outcome; tolerant of a hand-damaged row. */
function workflowOfOutcome(payload: string): string {
  try {
    return String((JSON.parse(payload) as { workflow?: unknown }).workflow ?? '?').slice(0, 128);
  } catch {
    return '?';
  }
}

function toClaimed(r: JobRow, token: string, attempts: number): ClaimedJob {
  return {
    id: r.id,
    queue: r.queue,
    kind: Number(r.kind) as JobKind,
    runId: r.run_id,
    stepNumber: Number(r.step_number),
    attempts,
    maxAttempts: Number(r.max_attempts),
    priority: Number(r.priority),
    payload: r.payload,
    headers: r.headers,
    token,
  };
}
