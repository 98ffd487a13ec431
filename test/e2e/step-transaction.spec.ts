/**
 * step.transaction(work): a step's writes through `manager` and its settlement commit
 * together. Each test counts ledger rows per (run, step): the writes happened exactly
 * once, however many deliveries the step took.
 */
import { Injectable } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import { DataSource } from 'typeorm';
import type { Connection } from 'mysql2/promise';
import {
  LeaseLostError,
  type Step,
  StepError,
  StepOutcome,
  StepRunner,
  WorkflowConfigError,
  WorkflowError,
  WorkflowService,
} from 'nestjs-durable-workflow';
import { startApp } from '../utils/create-test-app.js';
import { DB_URL, dropTables, rawConnection, uniquePrefix } from '../utils/db.js';
import { startWorker, type WorkerProcess } from '../utils/processes.js';
import { deferred } from '../utils/wait.js';

const prefix = uniquePrefix('steptx');
const ledger = `\`${prefix}ledger\``;

/** What runners saw, for the assertions. */
const seen = {
  errors: [] as unknown[],
  hold: new Map<string, { entered: () => void; release: Promise<void> }>(),
};

async function record(manager: { query(q: string, p: unknown[]): Promise<unknown> }, step: Step) {
  await manager.query(`INSERT INTO ${ledger} (run_id, step_number, attempt, pid) VALUES (?, ?, ?, ?)`, [
    step.runId,
    step.stepNumber,
    step.attempts,
    process.pid,
  ]);
}

/** Writes a ledger row per step, in the step's transaction; `{ fail: k }` throws after the write on attempt k. */
@Injectable()
@StepRunner('ledger', { maxAttempts: 4 })
class LedgerRunner {
  async runStep(step: Step<{ steps: number; failOnAttempt?: number; bad?: boolean; twice?: boolean }>) {
    const p = step.payload;
    const hold = seen.hold.get(step.runId);
    try {
      const outcome = await step.transaction(async (manager) => {
        await record(manager, step);
        if (hold) {
          hold.entered();
          await hold.release;
        }
        if (p.failOnAttempt === step.attempts) throw StepError.transient(`fails on attempt ${step.attempts}`);
        if (p.bad) return { kind: 'nonsense' } as unknown as StepOutcome;
        return step.stepNumber + 1 < p.steps ? StepOutcome.continue(p) : StepOutcome.succeed({ done: step.stepNumber });
      });
      if (p.twice) await step.transaction(async () => StepOutcome.succeed('again'));
      return outcome;
    } catch (err) {
      seen.errors.push(err);
      throw err;
    }
  }
}

/** Waits (before its transaction) until the test lets it go. */
@Injectable()
@StepRunner('late')
class LateRunner {
  static go = new Map<string, Promise<void>>();
  static arrived = new Map<string, () => void>();
  async runStep(step: Step) {
    LateRunner.arrived.get(step.runId)?.();
    await LateRunner.go.get(step.runId);
    try {
      return await step.transaction(async (manager) => {
        await record(manager, step);
        return StepOutcome.succeed('late');
      });
    } catch (err) {
      seen.errors.push(err);
      throw err;
    }
  }
}

/** Plain runs, to show other work is not held up by an open step transaction. */
@Injectable()
@StepRunner('plain')
class PlainRunner {
  runStep(step: Step<number>) {
    return step.payload < 2 ? StepOutcome.continue(step.payload + 1) : StepOutcome.succeed(step.payload);
  }
}

describe('step.transaction on the shared DataSource', () => {
  let ds: DataSource;
  let app: TestingModule;
  let web: TestingModule;
  let workflows: WorkflowService;
  let db: Connection;

  beforeAll(async () => {
    ds = new DataSource({ type: 'mysql', url: DB_URL, poolSize: 20 } as never);
    await ds.initialize();
    db = await rawConnection();
    await db.query(
      `CREATE TABLE ${ledger} (id BIGINT AUTO_INCREMENT PRIMARY KEY, run_id VARCHAR(128) NOT NULL, step_number INT NOT NULL,
        attempt INT NOT NULL, pid INT NOT NULL, KEY (run_id, step_number)) ENGINE=InnoDB`,
    );
    app = await startApp({
      prefix,
      providers: [LedgerRunner, LateRunner, PlainRunner],
      options: { connection: undefined, dataSource: ds },
    });
    web = await startApp({
      prefix,
      providers: [],
      worker: false,
      options: { connection: undefined, dataSource: ds, workflows: ['plain'] },
    });
    workflows = app.get(WorkflowService);
  });

  afterAll(async () => {
    await web?.close();
    await app?.close();
    await db?.query(`DROP TABLE IF EXISTS ${ledger}`);
    await db?.end();
    await ds?.destroy();
    await dropTables(prefix);
  });

  async function rows(runId: string): Promise<Array<{ step: number; attempt: number }>> {
    const [r] = await db.query(
      `SELECT step_number AS step, attempt FROM ${ledger} WHERE run_id = ? ORDER BY step_number, id`,
      [runId],
    );
    return (r as Array<{ step: number; attempt: number }>).map((x) => ({ step: x.step, attempt: x.attempt }));
  }

  it('each step of a chain writes its row once and moves the run on in the same commit', async () => {
    const runs = await workflows.submitMany(
      'ledger',
      Array.from({ length: 20 }, () => ({ input: { steps: 5 } })),
    );
    const outcomes = await Promise.all(runs.map((r) => workflows.waitForOutcome(r.runId, { timeoutMs: 20_000 })));
    expect(outcomes.map((o) => o.status)).toEqual(runs.map(() => 'succeeded'));
    for (const r of runs) {
      expect(await rows(r.runId)).toEqual([0, 1, 2, 3, 4].map((step) => ({ step, attempt: 1 })));
    }
  });

  it('a throw from work rolls its writes back: the retried step leaves only the retry’s row', async () => {
    const { runId } = await workflows.submit('ledger', { input: { steps: 2, failOnAttempt: 1 } });
    const outcome = await workflows.waitForOutcome(runId, { timeoutMs: 10_000 });
    expect(outcome.status).toBe('succeeded');
    expect(await rows(runId)).toEqual([
      { step: 0, attempt: 2 },
      { step: 1, attempt: 2 },
    ]);
  });

  it('an outcome that is not a StepOutcome writes nothing and fails the step permanently', async () => {
    const { runId } = await workflows.submit('ledger', { input: { steps: 2, bad: true } });
    const outcome = await workflows.waitForOutcome(runId, { timeoutMs: 10_000 });
    expect(outcome.status).toBe('failed');
    expect(outcome.error).toMatch(/not a StepOutcome/);
    expect(await rows(runId)).toEqual([]);
    expect((await workflows.deadSteps({ workflow: 'ledger' })).some((d) => d.runId === runId)).toBe(true);
  });

  it('a second step.transaction in one delivery throws WorkflowError; the first one’s outcome stands', async () => {
    const { runId } = await workflows.submit('ledger', { input: { steps: 1, twice: true } });
    const outcome = await workflows.waitForOutcome(runId, { timeoutMs: 10_000 });
    // The runner threw after its committed transaction: the committed succeed stands.
    expect(outcome).toMatchObject({ status: 'succeeded', result: { done: 0 } });
    expect(await rows(runId)).toEqual([{ step: 0, attempt: 1 }]);
    const err = seen.errors.find((e) => e instanceof WorkflowError && /second time/.test((e as Error).message));
    expect(err).toBeDefined();
  });

  it('while a step holds its transaction open, submits, claims and other runs go on (no gap locks on the queue)', async () => {
    const release = deferred();
    const entered = deferred();
    const runId = 'held-open';
    seen.hold.set(runId, { entered: entered.resolve, release: release.promise });
    await workflows.submit('ledger', { runId, input: { steps: 1 } });
    await entered.promise;
    try {
      const others = await web.get(WorkflowService).submitMany(
        'plain',
        Array.from({ length: 10 }, () => ({ input: 0 })),
      );
      const done = await Promise.all(others.map((r) => workflows.waitForOutcome(r.runId, { timeoutMs: 10_000 })));
      expect(done.map((o) => o.status)).toEqual(others.map(() => 'succeeded'));
      expect((await workflows.status(runId))?.state).toBe('running');
    } finally {
      release.resolve();
    }
    expect((await workflows.waitForOutcome(runId, { timeoutMs: 10_000 })).status).toBe('succeeded');
    expect(await rows(runId)).toEqual([{ step: 0, attempt: 1 }]);
  });

  it('a run cancelled from another app before the step’s transaction writes nothing and ends cancelled', async () => {
    const runId = 'cancel-first';
    const go = deferred();
    const arrived = deferred();
    LateRunner.go.set(runId, go.promise);
    LateRunner.arrived.set(runId, arrived.resolve);
    await workflows.submit('late', { runId, input: null });
    await arrived.promise;
    expect(await web.get(WorkflowService).cancel(runId)).toBe(true);
    go.resolve();
    const outcome = await workflows.waitForOutcome(runId, { timeoutMs: 10_000 });
    expect(outcome.status).toBe('cancelled');
    expect(await rows(runId)).toEqual([]);
    expect(seen.errors.some((e) => e instanceof LeaseLostError)).toBe(true);
  });
});

describe('step.transaction needs the shared DataSource', () => {
  const own = uniquePrefix('steptxown');
  let app: TestingModule;
  const errors: unknown[] = [];

  @Injectable()
  @StepRunner('own')
  class OwnPoolRunner {
    async runStep(step: Step) {
      try {
        return await step.transaction(async () => StepOutcome.succeed('never'));
      } catch (err) {
        errors.push(err);
        throw StepError.permanent((err as Error).message);
      }
    }
  }

  afterAll(async () => {
    await app?.close();
    await dropTables(own);
  });

  it('on the module’s own pool it throws WorkflowConfigError, naming the dataSource option', async () => {
    app = await startApp({ prefix: own, providers: [OwnPoolRunner] });
    const service = app.get(WorkflowService);
    const { runId } = await service.submit('own', { input: null });
    const outcome = await service.waitForOutcome(runId, { timeoutMs: 10_000 });
    expect(outcome.status).toBe('failed');
    expect(errors[0]).toBeInstanceOf(WorkflowConfigError);
    expect(String(outcome.error)).toMatch(/forRoot\(\{ dataSource \}\)/);
  });
});

describe('step.transaction in worker processes that are killed or frozen', () => {
  const px = uniquePrefix('steptxproc');
  const table = `\`${px}ledger\``;
  let db: Connection;
  let web: TestingModule;
  const workers: WorkerProcess[] = [];

  beforeAll(async () => {
    db = await rawConnection();
    await db.query(
      `CREATE TABLE ${table} (id BIGINT AUTO_INCREMENT PRIMARY KEY, run_id VARCHAR(128) NOT NULL, step_number INT NOT NULL,
        attempt INT NOT NULL, pid INT NOT NULL, KEY (run_id, step_number)) ENGINE=InnoDB`,
    );
    web = await startApp({ prefix: px, worker: false, providers: [], options: { workflows: ['ledger'] } });
  });

  afterEach(async () => {
    for (const w of workers.splice(0)) {
      w.child.kill('SIGCONT');
      await w.kill();
    }
  });

  afterAll(async () => {
    await web?.close();
    await db?.query(`DROP TABLE IF EXISTS ${table}`);
    await db?.end();
    await dropTables(px);
  });

  async function ledgerOf(runId: string): Promise<Array<{ step: number; attempt: number; pid: number }>> {
    const [r] = await db.query(`SELECT step_number AS step, attempt, pid FROM ${table} WHERE run_id = ? ORDER BY id`, [
      runId,
    ]);
    return r as Array<{ step: number; attempt: number; pid: number }>;
  }

  it('SIGKILL inside the transaction, after the write: the write is gone, the redelivery writes it once', async () => {
    const first = await startWorker({ PREFIX: px, STEPS: '3', TX_HANG_STEP: '1', LEASE_MS: '1500' }, 'tx-worker');
    workers.push(first);
    const service = web.get(WorkflowService);
    const { runId } = await service.submit('ledger', { input: { n: 0 } });
    await first.waitForLine(new RegExp(`^in-tx ${runId} 1 1$`));
    await first.kill('SIGKILL');
    const second = await startWorker({ PREFIX: px, STEPS: '3', LEASE_MS: '1500' }, 'tx-worker');
    workers.push(second);
    const outcome = await service.waitForOutcome(runId, { timeoutMs: 20_000 });
    expect(outcome.status).toBe('succeeded');
    const rows = await ledgerOf(runId);
    expect(rows.map((r) => [r.step, r.attempt])).toEqual([
      [0, 1],
      [1, 2],
      [2, 1],
    ]);
    expect(rows[1].pid).toBe(second.pid);
  });

  it('a worker frozen past its lease finds the step taken: LeaseLostError, nothing written', async () => {
    const frozen = await startWorker(
      { PREFIX: px, STEPS: '2', PAUSE_STEP: '0', PAUSE_MS: '500', LEASE_MS: '1000' },
      'tx-worker',
    );
    workers.push(frozen);
    const service = web.get(WorkflowService);
    const { runId } = await service.submit('ledger', { input: { n: 0 } });
    await frozen.waitForLine(new RegExp(`^before-tx ${runId} 0 1$`));
    frozen.child.kill('SIGSTOP');
    const other = await startWorker({ PREFIX: px, STEPS: '2', LEASE_MS: '1000' }, 'tx-worker');
    workers.push(other);
    const outcome = await service.waitForOutcome(runId, { timeoutMs: 20_000 });
    expect(outcome.status).toBe('succeeded');
    frozen.child.kill('SIGCONT');
    await frozen.waitForLine(new RegExp(`^lease-lost ${runId} 0$`));
    const rows = await ledgerOf(runId);
    expect(rows.map((r) => [r.step, r.attempt, r.pid])).toEqual([
      [0, 2, other.pid],
      [1, 1, other.pid],
    ]);
    // The frozen worker's late delivery changed nothing after it woke.
    expect((await service.status(runId))?.state).toBe('succeeded');
  });
});
