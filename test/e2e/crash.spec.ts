import type { TestingModule } from '@nestjs/testing';
import type { Connection } from 'mysql2/promise';
import { WorkflowService } from 'nestjs-durable-workflow';
import { startApp } from '../utils/create-test-app.js';
import { dropTables, rawConnection, uniquePrefix } from '../utils/db.js';
import { createJournal, startWorker, type WorkerProcess } from '../utils/processes.js';
import { waitFor } from '../utils/wait.js';

/**
 * Real worker processes, killed with SIGKILL mid-step. The test app itself only
 * submits (worker: false), like a web process in front of a worker fleet.
 */
describe('crashes: a killed worker loses no run', () => {
  const prefix = uniquePrefix('crash');
  let app: TestingModule;
  let db: Connection;
  const workers: WorkerProcess[] = [];

  beforeAll(async () => {
    app = await startApp({ prefix, worker: false, options: { workflows: ['crashy'] } });
    db = await rawConnection();
    await createJournal(db, prefix);
  });
  afterEach(async () => {
    await Promise.all(workers.splice(0).map((w) => w.kill()));
  });
  afterAll(async () => {
    await app?.close();
    await db?.query(`DROP TABLE IF EXISTS \`${prefix}journal\``);
    await db?.end();
    await dropTables(prefix);
  });

  async function journal(runId: string) {
    const [rows] = await db.query(
      `SELECT step_number AS step, attempt, pid, kind FROM \`${prefix}journal\` WHERE run_id = ? ORDER BY id`,
      [runId],
    );
    return rows as Array<{ step: number; attempt: number; pid: number; kind: string }>;
  }

  it('resumes a step cut off by SIGKILL on another process, counting the cut-off delivery as an attempt', async () => {
    const env = { PREFIX: prefix, STEPS: '4', HANG_STEPS: '2', LEASE_MS: '1500' };
    const first = await startWorker(env);
    workers.push(first);
    const service = app.get(WorkflowService);
    const { runId } = await service.submit('crashy', { input: { n: 0 } });

    await first.waitForLine(new RegExp(`^started ${runId} 2 1$`));
    await first.kill('SIGKILL');

    const second = await startWorker(env);
    workers.push(second);
    const outcome = await service.waitForOutcome(runId, { timeoutMs: 20_000 });
    expect(outcome).toMatchObject({ status: 'succeeded', result: { n: 4 }, finalStep: 3 });

    const steps = (await journal(runId)).filter((j) => j.kind === 'step');
    expect(steps.map((s) => [s.step, s.attempt])).toEqual([
      [0, 1],
      [1, 1],
      [2, 1],
      [2, 2], // the delivery SIGKILL cut off counted as attempt 1
      [3, 1],
    ]);
    expect(steps.slice(0, 3).every((s) => s.pid === first.pid)).toBe(true);
    expect(steps.slice(3).every((s) => s.pid === second.pid)).toBe(true);
    await waitFor(async () => (await journal(runId)).some((j) => j.kind === 'terminal:succeeded'), 'terminal delivery');
  });

  it('dead-letters a step that kills its process on every delivery instead of looping forever', async () => {
    const env = { PREFIX: prefix, STEPS: '3', SUICIDE_STEPS: '1', LEASE_MS: '800', MAX_ATTEMPTS: '2' };
    const service = app.get(WorkflowService);
    const { runId } = await service.submit('crashy', { input: { n: 0 } });
    // Keep a worker alive: each one dies on step 1, so start the next as the last one exits.
    const deadline = Date.now() + 30_000;
    for (;;) {
      const status = await service.status(runId);
      if (status?.state === 'failed') break;
      if (Date.now() > deadline) throw new Error(`run still ${status?.state} after 30 s`);
      const w = await startWorker(env);
      workers.push(w);
      await Promise.race([
        new Promise((r) => w.child.once('exit', r)),
        waitFor(async () => (await service.status(runId))?.state === 'failed', 'run failed', 10_000).catch(
          () => undefined,
        ),
      ]);
    }
    const status = await service.status(runId);
    expect(status).toMatchObject({ state: 'failed', currentStep: 1 });
    expect(status!.error).toMatch(/lease expired/);
    const dead = await service.deadSteps({ workflow: 'crashy' });
    expect(dead.find((d) => d.runId === runId)).toMatchObject({ stepNumber: 1, attempts: 2 });
    const deliveries = (await journal(runId)).filter((j) => j.kind === 'step' && j.step === 1);
    expect(deliveries.map((d) => d.attempt)).toEqual([1, 2]);
  });

  it('two worker processes share one database without running any step twice', async () => {
    const env = { PREFIX: prefix, STEPS: '5', CONCURRENCY: '8', LEASE_MS: '10000' };
    workers.push(await startWorker(env), await startWorker(env));
    const service = app.get(WorkflowService);
    const runs = await service.submitMany(
      'crashy',
      Array.from({ length: 60 }, () => ({ input: { n: 0 } })),
    );
    const outcomes = await Promise.all(runs.map((r) => service.waitForOutcome(r.runId, { timeoutMs: 30_000 })));
    expect(outcomes.every((o) => o.status === 'succeeded')).toBe(true);
    const ids = runs.map((r) => r.runId);
    const [rows] = await db.query(
      `SELECT run_id, step_number, COUNT(*) AS n FROM \`${prefix}journal\` WHERE kind = 'step' AND run_id IN (?) GROUP BY run_id, step_number`,
      [ids],
    );
    const counts = rows as Array<{ n: number }>;
    expect(counts).toHaveLength(60 * 5);
    expect(counts.every((c) => Number(c.n) === 1)).toBe(true);
    const [pids] = await db.query(
      `SELECT COUNT(DISTINCT pid) AS n FROM \`${prefix}journal\` WHERE kind = 'step' AND run_id IN (?)`,
      [ids],
    );
    expect(Number((pids as Array<{ n: number }>)[0].n)).toBe(2);
  });
});
