import { Injectable } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import type { Connection } from 'mysql2/promise';
import { type Step, StepOutcome, StepRunner, WorkflowService } from 'nestjs-durable-workflow';
import { startApp } from '../utils/create-test-app.js';
import { dropTables, rawConnection, uniquePrefix } from '../utils/db.js';
import { PrivateMariaDb } from '../utils/private-db.js';
import { createJournal, startWorker, type WorkerProcess } from '../utils/processes.js';
import { waitFor } from '../utils/wait.js';

describe('a worker that stalls past its lease', () => {
  const prefix = uniquePrefix('stall');
  let app: TestingModule;
  let db: Connection;
  const workers: WorkerProcess[] = [];

  beforeAll(async () => {
    app = await startApp({ prefix, worker: false, options: { workflows: ['crashy'] } });
    db = await rawConnection();
    await createJournal(db, prefix);
  });
  afterAll(async () => {
    await Promise.all(workers.map((w) => w.kill()));
    await app?.close();
    await db?.query(`DROP TABLE IF EXISTS \`${prefix}journal\``);
    await db?.end();
    await dropTables(prefix);
  });

  it('is overtaken by another worker, and its late settlement changes nothing', async () => {
    // Whichever worker claims step 1 first blocks its event loop for 3 leases.
    const env = { PREFIX: prefix, STEPS: '4', STALL_STEPS: '1', STALL_MS: '4500', LEASE_MS: '1500' };
    workers.push(await startWorker(env), await startWorker(env));
    const service = app.get(WorkflowService);
    const { runId } = await service.submit('crashy', { input: { n: 0 } });

    const outcome = await service.waitForOutcome(runId, { timeoutMs: 20_000 });
    expect(outcome).toMatchObject({ status: 'succeeded', result: { n: 4 }, finalStep: 3 });
    // The stalled worker wakes up and tries to settle; wait until it has.
    const staller = await Promise.race(
      workers.map((w) => w.waitForLine(new RegExp(`^unstalled ${runId} 1$`)).then(() => w)),
    );
    await waitFor(async () => staller.child.exitCode === null, 'the stalled worker to keep running');

    const [rows] = await db.query(
      `SELECT step_number AS step, attempt, pid, kind FROM \`${prefix}journal\` WHERE run_id = ? ORDER BY id`,
      [runId],
    );
    const journal = rows as Array<{ step: number; attempt: number; pid: number; kind: string }>;
    const steps = journal.filter((j) => j.kind === 'step');
    // Step 1 ran twice (the stalled delivery, then the takeover); every other step once: exactly one successor.
    expect(steps.filter((s) => s.step === 1).map((s) => s.attempt)).toEqual([1, 2]);
    for (const n of [0, 2, 3]) expect(steps.filter((s) => s.step === n)).toHaveLength(1);
    expect(steps.find((s) => s.step === 1 && s.attempt === 1)!.pid).toBe(staller.pid);
    expect(steps.find((s) => s.step === 1 && s.attempt === 2)!.pid).not.toBe(staller.pid);
    await waitFor(async () => {
      const [t] = await db.query(
        `SELECT COUNT(*) AS n FROM \`${prefix}journal\` WHERE run_id = ? AND kind LIKE 'terminal:%'`,
        [runId],
      );
      return Number((t as Array<{ n: number }>)[0].n) >= 1;
    }, 'the terminal delivery');
    const status = await service.status(runId);
    expect(status).toMatchObject({ state: 'succeeded', currentStep: 3 });
    const [left] = await db.query(`SELECT COUNT(*) AS n FROM \`${prefix}jobs\``);
    expect(Number((left as Array<{ n: number }>)[0].n)).toBe(0);
  });
});

@Injectable()
@StepRunner('slow')
class Slow {
  deliveries: Array<{ runId: string; step: number; attempt: number }> = [];
  async runStep(step: Step<null>) {
    this.deliveries.push({ runId: step.runId, step: step.stepNumber, attempt: step.attempts });
    if (step.stepNumber === 0) await new Promise((r) => setTimeout(r, 3_000));
    return step.stepNumber === 0 ? StepOutcome.continue(null) : StepOutcome.succeed('done');
  }
}

describe('lease renewal while the database is briefly unreachable', () => {
  let db: PrivateMariaDb;
  let a: TestingModule;
  let b: TestingModule;

  beforeAll(async () => {
    db = await PrivateMariaDb.create(0);
    const options = { connection: { url: db.url } };
    const worker = { pollIntervalMs: 50, leaseMs: 2_500, shutdownTimeoutMs: 1_000 };
    a = await startApp({ prefix: 'renew_', providers: [Slow], options, worker });
    b = await startApp({ prefix: 'renew_', providers: [Slow], options, worker });
  }, 60_000);
  afterAll(async () => {
    await a?.close();
    await b?.close();
    await db?.destroy();
  });

  it('keeps the lease once the database is back: the step is not delivered twice', async () => {
    const service = a.get(WorkflowService);
    const { runId } = await service.submit('slow', { input: null });
    const all = () => [...a.get(Slow).deliveries, ...b.get(Slow).deliveries].filter((d) => d.runId === runId);
    await waitFor(() => all().length === 1, 'step 0 to start');
    await db.stop('SIGKILL'); // renewals fail now
    await new Promise((r) => setTimeout(r, 800)); // the outage itself is what is under test
    await db.start();
    const outcome = await service.waitForOutcome(runId, { timeoutMs: 20_000 });
    expect(outcome.status).toBe('succeeded');
    expect(all().map((d) => [d.step, d.attempt])).toEqual([
      [0, 1],
      [1, 1],
    ]);
  }, 60_000);
});
