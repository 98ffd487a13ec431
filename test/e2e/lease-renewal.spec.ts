/**
 * A worker renews the leases of all its steps in flight at once. One of them settling in
 * a transaction that waits (on a lock, a slow commit) must not hold up the renewal of the
 * others: a step whose lease runs out while its worker is alive runs a second time.
 */
import { Injectable } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import { type Step, StepOutcome, StepRunner, WorkflowService } from 'nestjs-durable-workflow';
import { startApp } from '../utils/create-test-app.js';
import { dropTables, rawConnection, uniquePrefix } from '../utils/db.js';
import { deferred, waitFor } from '../utils/wait.js';

@Injectable()
@StepRunner('renewed', { concurrency: 4 })
class RenewedRunner {
  readonly quickGate = deferred();
  readonly deliveries = new Map<string, number>();

  async runStep(step: Step<{ mode: 'quick' | 'long' }>) {
    if (step.stepNumber > 0) return StepOutcome.succeed(null);
    this.deliveries.set(step.runId, (this.deliveries.get(step.runId) ?? 0) + 1);
    if (step.payload.mode === 'quick') await this.quickGate.promise;
    // Three leases long: it lives on renewals.
    else await new Promise((r) => setTimeout(r, 3_000));
    return StepOutcome.continue(step.payload);
  }
}

describe('lease renewal', () => {
  const prefix = uniquePrefix('renewal');
  let app: TestingModule;

  beforeAll(async () => {
    app = await startApp({
      prefix,
      providers: [RenewedRunner],
      worker: { pollIntervalMs: 50, leaseMs: 1_000, shutdownTimeoutMs: 2_000 },
    });
  });

  afterAll(async () => {
    app.get(RenewedRunner).quickGate.resolve();
    await app?.close();
    await dropTables(prefix);
  });

  it("a settlement that waits on a lock does not stop the renewal of the worker's other leases", async () => {
    const service = app.get(WorkflowService);
    const runner = app.get(RenewedRunner);
    // The quick run first: its job row sorts before the long one's.
    const quick = await service.submit('renewed', { input: { mode: 'quick' } });
    const long = await service.submit('renewed', { input: { mode: 'long' } });
    await waitFor(() => runner.deliveries.get(quick.runId) && runner.deliveries.get(long.runId), 'both steps running');

    // Someone holds the quick run's row: its settlement locks its job row, then waits.
    const blocker = await rawConnection();
    try {
      await blocker.query('START TRANSACTION');
      await blocker.query(`SELECT * FROM \`${prefix}runs\` WHERE id = ? FOR UPDATE`, [quick.runId]);
      runner.quickGate.resolve();
      // Past the long step's end (3 s, three leases): its lease must have been renewed all along.
      await new Promise((r) => setTimeout(r, 3_500));
    } finally {
      await blocker.query('ROLLBACK');
      await blocker.end();
    }
    for (const { runId } of [quick, long])
      expect(await service.waitForOutcome(runId, { timeoutMs: 10_000 })).toMatchObject({ status: 'succeeded' });
    expect(runner.deliveries.get(long.runId)).toBe(1);
    expect(runner.deliveries.get(quick.runId)).toBe(1);
  }, 30_000);
});
