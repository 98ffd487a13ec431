import { Injectable } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import type { Connection } from 'mysql2/promise';
import { type Step, StepOutcome, StepRunner, WorkflowService } from 'nestjs-durable-workflow';
import { startApp } from '../utils/create-test-app.js';
import { dropTables, rawConnection, uniquePrefix } from '../utils/db.js';
import { waitFor } from '../utils/wait.js';

@Injectable()
@StepRunner('fragile')
class Fragile {
  async runStep(step: Step<{ hold?: boolean }>) {
    return StepOutcome.succeed(step.payload);
  }
}

/** Rows damaged by hand in the database dead-letter their step with a clear error; the pool keeps working. */
describe('tampered rows', () => {
  const prefix = uniquePrefix('tamper');
  let app: TestingModule;
  let submitter: TestingModule;
  let db: Connection;

  beforeAll(async () => {
    // Submit with no worker running, damage the row, then start the worker.
    submitter = await startApp({ prefix, worker: false, options: { workflows: ['fragile'] } });
    db = await rawConnection();
  });
  afterAll(async () => {
    await app?.close();
    await submitter?.close();
    await db?.end();
    await dropTables(prefix);
  });

  it('dead-letters unparseable payloads and orphaned steps, and still runs healthy runs', async () => {
    const service = submitter.get(WorkflowService);
    const [bad, orphan, healthy] = await service.submitMany('fragile', [
      { input: { a: 1 } },
      { input: { b: 2 } },
      { input: { c: 3 } },
    ]);
    await db.query(`UPDATE \`${prefix}jobs\` SET payload = '{not json' WHERE run_id = ?`, [bad.runId]);
    await db.query(`DELETE FROM \`${prefix}runs\` WHERE id = ?`, [orphan.runId]);

    app = await startApp({ prefix, providers: [Fragile] });
    const healthyOutcome = await service.waitForOutcome(healthy.runId, { timeoutMs: 10_000 });
    expect(healthyOutcome).toMatchObject({ status: 'succeeded', result: { c: 3 } });

    const badOutcome = await service.waitForOutcome(bad.runId, { timeoutMs: 10_000 });
    expect(badOutcome.status).toBe('failed');
    expect(badOutcome.error).toMatch(/not valid JSON/);

    const dead = await waitFor(async () => {
      const d = await service.deadSteps({ workflow: 'fragile' });
      return d.length === 2 ? d : null;
    }, 'two dead letters');
    expect(dead.find((d) => d.runId === bad.runId)!.lastError).toMatch(/not valid JSON/);
    expect(dead.find((d) => d.runId === orphan.runId)!.lastError).toMatch(/missing or already finished/);
    const [left] = await db.query(`SELECT COUNT(*) AS n FROM \`${prefix}jobs\``);
    expect(Number((left as Array<{ n: number }>)[0].n)).toBe(0);
  });
});
