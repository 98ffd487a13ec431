import { Injectable } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import { type Step, StepOutcome, StepRunner, WorkflowService } from 'nestjs-durable-workflow';
import { startApp } from '../utils/create-test-app.js';
import { dropTables, uniquePrefix } from '../utils/db.js';
import { waitFor } from '../utils/wait.js';

/** A short step that records the order runs started in. */
@Injectable()
@StepRunner('drain')
class DrainRunner {
  started: string[] = [];

  async runStep(step: Step<{ name: string }>) {
    this.started.push(step.payload.name);
    await new Promise((r) => setTimeout(r, 1));
    return StepOutcome.succeed(null);
  }
}

/**
 * In a deep drain a claim starts where the previous one stopped, not at the head of the
 * queue. A step that becomes ready ahead of that point (here: a higher priority, submitted
 * by another process, which no local wake-up announces) is claimed from the head within
 * about a poll interval, not after the backlog.
 */
describe('a deep drain and a step ahead of it', () => {
  const prefix = uniquePrefix('cursor');
  let worker: TestingModule;
  let web: TestingModule;

  beforeAll(async () => {
    worker = await startApp({
      prefix,
      providers: [DrainRunner],
      worker: { concurrency: 4, pollIntervalMs: 50, leaseMs: 10_000, shutdownTimeoutMs: 2_000 },
    });
    web = await startApp({ prefix, worker: false, options: { workflows: ['drain'] } });
  });
  afterAll(async () => {
    await worker?.close();
    await web?.close();
    await dropTables(prefix);
  });

  it('claims the urgent step long before the backlog is through', async () => {
    const runner = worker.get(DrainRunner);
    const service = web.get(WorkflowService);
    const backlog = 1500;
    for (let i = 0; i < backlog; i += 500)
      await service.submitMany(
        'drain',
        Array.from({ length: 500 }, (_, j) => ({ input: { name: `b${i + j}` } })),
      );
    // Well into the drain: claims come back full, each starting where the last stopped.
    await waitFor(() => runner.started.length >= 100, 'the drain to be under way', 30_000);

    const { runId } = await service.submit('drain', { input: { name: 'urgent' }, priority: -10 });
    await service.waitForOutcome(runId, { timeoutMs: 30_000 });

    const before = runner.started.indexOf('urgent');
    expect(before).toBeGreaterThan(0);
    // Without a claim from the head it would come after the whole backlog.
    expect(backlog - before).toBeGreaterThanOrEqual(backlog / 3);
  });
});
