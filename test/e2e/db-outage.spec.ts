import { Injectable } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import { type Step, StepOutcome, StepRunner, WorkflowService } from 'nestjs-durable-workflow';
import { startApp } from '../utils/create-test-app.js';
import { PrivateMariaDb } from '../utils/private-db.js';

@Injectable()
@StepRunner('ticker')
class Ticker {
  async runStep(step: Step<{ n: number }>) {
    await new Promise((r) => setTimeout(r, 5));
    return step.stepNumber < 9
      ? StepOutcome.continue({ n: step.payload.n + 1 })
      : StepOutcome.succeed(step.payload.n + 1);
  }
}

/** The database goes away under load and comes back: nobody restarts the app, every run completes. */
describe('database restart under load', () => {
  let db: PrivateMariaDb;
  let app: TestingModule;

  beforeAll(async () => {
    db = await PrivateMariaDb.create(0);
    app = await startApp({
      prefix: 'outage_',
      providers: [Ticker],
      options: { connection: { url: db.url } },
      worker: { pollIntervalMs: 50, leaseMs: 3_000, shutdownTimeoutMs: 2_000, concurrency: 8 },
    });
  }, 60_000);
  afterAll(async () => {
    await app?.close();
    await db?.destroy();
  });

  it('recovers claims, renewals, settlements and submits by itself', async () => {
    const service = app.get(WorkflowService);
    const before = await service.submitMany(
      'ticker',
      Array.from({ length: 40 }, (_, i) => ({ input: { n: i } })),
    );
    // Let the runs get going, then pull the database out from under them.
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      const s = await service.status(before[0].runId);
      if (s && s.currentStep >= 2) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    await db.stop('SIGKILL');
    const down = Date.now();
    // A submit while the database is down fails with the driver's error; it does not hang.
    await expect(service.submit('ticker', { input: { n: -1 } })).rejects.toThrow();
    await db.start();
    const downtimeMs = Date.now() - down;

    const after = await service.submitMany(
      'ticker',
      Array.from({ length: 10 }, (_, i) => ({ input: { n: 100 + i } })),
    );
    const outcomes = await Promise.all(
      [...before, ...after].map((r) => service.waitForOutcome(r.runId, { timeoutMs: 45_000 })),
    );
    expect(outcomes.filter((o) => o.status === 'succeeded')).toHaveLength(50);
    expect(outcomes.map((o) => o.result)).toEqual([...before, ...after].map((_, i) => (i < 40 ? i : 60 + i) + 10));

    console.log(`database down ${downtimeMs} ms; 50/50 runs succeeded after the restart`);
  }, 90_000);
});
