/**
 * The fast and the careful settle paths are derived from one description of each
 * settlement kind; this proves they write the same rows. Two copies of the same queue
 * (two table prefixes, identical rows, one injected clock) settle the same batch, one
 * through settleMany (the fast path, where the batch allows it) and one item by item
 * through the careful path, and every table must come out identical.
 */
import { DataSource } from 'typeorm';
import { SqlClient } from '../../lib/storage/sql-client.js';
import { migrate } from '../../lib/storage/schema/migrator.js';
import { settleMany, settleOne, type SettleItem } from '../../lib/storage/settle.js';
import { Settle, type Settlement } from '../../lib/storage/settlements.js';
import { BlockedKeys } from '../../lib/storage/flow.js';
import { HandlerDirectory } from '../../lib/storage/handlers.js';
import { type ClaimedJob, JobKind } from '../../lib/storage/storage.types.js';
import { type StorageContext, tablesOf } from '../../lib/storage/tables.js';
import { DB_URL, dropTables, rawConnection, uniquePrefix } from '../utils/db.js';

const NOW = 1_750_000_000_000;

/** One leased step per case, with what its runner decided. */
const cases: Array<{ run: string; workflow: string; settle: (job: ClaimedJob) => Settlement }> = [
  {
    run: 'r-continue-in-place',
    workflow: 'plain',
    settle: (j) => Settle.continueWith(next(j, { leaseToken: `${j.token}+1` })),
  },
  { run: 'r-continue-ready', workflow: 'plain', settle: (j) => Settle.continueWith(next(j, {})) },
  {
    run: 'r-continue-later',
    workflow: 'plain',
    settle: (j) => Settle.continueWith(next(j, { runAt: NOW + 60_000, scheduled: true })),
  },
  { run: 'r-succeed', workflow: 'plain', settle: () => Settle.finish('succeeded', { result: '{"ok":true}' }) },
  { run: 'r-fail', workflow: 'plain', settle: () => Settle.finish('failed', { error: 'no' }) },
  { run: 'r-noticed', workflow: 'noticed', settle: () => Settle.finish('cancelled', { error: 'by runner' }) },
  { run: 'r-dead', workflow: 'noticed', settle: () => Settle.deadLetter('Error: boom\n  at x', 'boom') },
  { run: 'r-retry', workflow: 'plain', settle: () => Settle.retryAt(NOW + 5_000, 'Error: flaky') },
  { run: 'r-release', workflow: 'plain', settle: () => Settle.release() },
  { run: 'r-cancel-seen', workflow: 'noticed', settle: () => Settle.observeCancel() },
];

function next(job: ClaimedJob, o: { leaseToken?: string; runAt?: number; scheduled?: boolean }) {
  return {
    id: job.id,
    queue: job.queue,
    kind: JobKind.Step,
    runId: job.runId,
    stepNumber: job.stepNumber + 1,
    priority: job.priority,
    runAt: o.runAt ?? NOW,
    scheduled: o.scheduled ?? false,
    maxAttempts: job.maxAttempts,
    payload: `{"step":${job.stepNumber + 1}}`,
    headers: job.headers,
    leaseToken: o.leaseToken,
    leaseMs: o.leaseToken ? 30_000 : undefined,
  };
}

describe('settlement paths', () => {
  let ds: DataSource;
  let client: SqlClient;
  const prefixes: string[] = [];

  beforeAll(async () => {
    ds = new DataSource({ type: 'mysql', url: DB_URL, multipleStatements: true, supportBigNumbers: true } as any);
    await ds.initialize();
    client = new SqlClient(ds, true);
  });

  afterAll(async () => {
    for (const p of prefixes) await dropTables(p);
    await ds.destroy();
  });

  /** A fresh copy of the queue: every case's run active at step 2 with its job leased to a known token. */
  async function queue(name: string, cancelling: string[] = []): Promise<{ ctx: StorageContext; items: SettleItem[] }> {
    const prefix = uniquePrefix(name);
    prefixes.push(prefix);
    await migrate(client, prefix, () => NOW);
    const ctx: StorageContext = {
      client,
      t: tablesOf(prefix),
      now: () => NOW,
      handlers: new HandlerDirectory(),
      history: true,
      deliveryAttempts: 3,
      stats: { fastBatches: 0, carefulBatches: 0 },
      blockedKeys: new BlockedKeys(),
    };
    // One handler, hosted for 'noticed' only; both copies know it (as a started worker would).
    await client.query(
      `INSERT INTO ${ctx.t.handlers} (queue, workflow, seen_at) VALUES ('~terminal:Notices#record', 'noticed', ?)`,
      [NOW],
    );
    ctx.handlers.remember([{ workflow: 'noticed', queue: '~terminal:Notices#record' }]);
    const items: SettleItem[] = [];
    for (const [i, c] of cases.entries()) {
      const id = `01JOB${String(i).padStart(21, '0')}`;
      const job: ClaimedJob = {
        id,
        queue: c.workflow,
        kind: JobKind.Step,
        runId: c.run,
        stepNumber: 2,
        attempts: 1,
        handbacks: 0,
        maxAttempts: 3,
        priority: 0,
        payload: '{"step":2}',
        headers: '{"h":"1"}',
        token: `tok/${id}`,
      };
      const state = cancelling.includes(c.run) ? 'cancelling' : 'active';
      await client.query(
        `INSERT INTO ${ctx.t.runs} (id, workflow, state, current_step, current_job_id, input_hash, headers, priority, submitted_at, updated_at)
          VALUES (?, ?, ?, 2, ?, REPEAT('0', 64), '{"h":"1"}', 0, ?, ?)`,
        [c.run, c.workflow, state, id, NOW - 1000, NOW - 1000],
      );
      await client.query(
        `INSERT INTO ${ctx.t.jobs} (id, queue, kind, state, priority, run_at, run_id, step_number, attempts, max_attempts, lease_token,
          lease_until, payload, headers, created_at) VALUES (?, ?, 0, 2, 0, ?, ?, 2, 1, 3, ?, DATE_ADD(UTC_TIMESTAMP(3), INTERVAL 1 MINUTE), ?, ?, ?)`,
        [id, c.workflow, NOW - 1000, c.run, job.token, job.payload, job.headers, NOW - 1000],
      );
      items.push({ job, settlement: c.settle(job) });
    }
    return { ctx, items };
  }

  /** Every row of the three tables, with what differs by nature (fresh delivery ids, the database clock) normalized. */
  async function tables(ctx: StorageContext): Promise<unknown> {
    const conn = await rawConnection();
    try {
      const read = async (sql: string) => (await conn.query(sql))[0] as Array<Record<string, unknown>>;
      const jobs = await read(
        `SELECT *, lease_until IS NOT NULL AS leased_until FROM ${ctx.t.jobs} ORDER BY run_id, queue, step_number`,
      );
      return {
        runs: await read(`SELECT * FROM ${ctx.t.runs} ORDER BY id`),
        jobs: jobs.map(({ id, lease_until: _leaseUntil, ...rest }) => ({
          ...rest,
          id: Number(rest.kind) === JobKind.Terminal ? 'delivery' : id,
        })),
        dead: await read(`SELECT * FROM ${ctx.t.dead} ORDER BY job_id`),
      };
    } finally {
      await conn.end();
    }
  }

  async function bothWays(
    name: string,
    expectFast: boolean,
    pick: (items: SettleItem[]) => SettleItem[],
    cancelling: string[] = [],
  ) {
    const a = await queue(`${name}a`, cancelling);
    const b = await queue(`${name}b`, cancelling);
    const batchA = pick(a.items);
    const batchB = pick(b.items);
    const fast = await settleMany(a.ctx, batchA);
    const careful = await client.transaction(async (sql) => {
      const out = [];
      for (const i of batchB) out.push(await settleOne(b.ctx, sql, i));
      return out;
    });
    expect(fast).toEqual(careful);
    expect(a.ctx.stats).toEqual(
      expectFast ? { fastBatches: 1, carefulBatches: 0 } : { fastBatches: 0, carefulBatches: 1 },
    );
    const [ta, tb] = [await tables(a.ctx), await tables(b.ctx)];
    expect(ta).toEqual(tb);
    return { results: fast, rows: ta as { runs: any[]; jobs: any[]; dead: any[] } };
  }

  it('a batch of fast kinds (continues, finishes with and without handlers) writes what the careful path writes', async () => {
    const { results, rows } = await bothWays('fast', true, (items) =>
      items.filter((i) => ['continue', 'finish'].includes(i.settlement.type)),
    );
    expect(results.every((r) => r === 'settled')).toBe(true);
    // The fast path really ran: the ending runs moved, a delivery exists for the noticed one.
    expect(rows.runs.find((r) => r.id === 'r-succeed')).toMatchObject({ state: 'succeeded', result: '{"ok":true}' });
    // A continue moves the job row on and leaves the run row alone (status() reads the step from the job).
    expect(rows.jobs.find((j) => j.run_id === 'r-continue-ready')).toMatchObject({ step_number: 3 });
    expect(rows.runs.find((r) => r.id === 'r-continue-ready')).toMatchObject({
      state: 'active',
      current_step: 2,
      updated_at: NOW - 1000,
    });
    expect(rows.jobs.filter((j) => Number(j.kind) === JobKind.Terminal)).toHaveLength(1);
  });

  it('every kind in one batch: both paths agree', async () => {
    const { results, rows } = await bothWays('all', false, (items) => items);
    expect(results.every((r) => r === 'settled')).toBe(true);
    expect(rows.dead.map((d) => d.run_id)).toEqual(['r-dead']);
    expect(rows.runs.find((r) => r.id === 'r-cancel-seen')).toMatchObject({ state: 'cancelled', error: null });
  });

  it('runs cancelled meanwhile and lost leases: both paths agree', async () => {
    const { results, rows } = await bothWays(
      'cancel',
      false,
      (items) => items.map((i) => (i.job.runId === 'r-fail' ? { ...i, job: { ...i.job, token: 'stolen' } } : i)),
      ['r-continue-in-place', 'r-succeed', 'r-retry'],
    );
    expect(results[cases.findIndex((c) => c.run === 'r-fail')]).toBe('lost');
    expect(results[cases.findIndex((c) => c.run === 'r-succeed')]).toBe('cancelled');
    expect(rows.runs.find((r) => r.id === 'r-continue-in-place')).toMatchObject({ state: 'cancelled', error: null });
    expect(rows.jobs.find((j) => j.run_id === 'r-retry')).toBeUndefined();
  });
});
