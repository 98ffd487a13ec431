import { Injectable } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import { type Step, StepOutcome, StepRunner, WorkflowService } from 'nestjs-durable-workflow';
import { startApp } from '../utils/app.js';
import { dropTables, uniquePrefix } from '../utils/db.js';
import { waitFor } from '../utils/wait.js';

/** Each step takes a few milliseconds of simulated work, then continues until `steps` is reached. */
@Injectable()
@StepRunner('loop')
class LoopRunner {
  log: Array<{ runId: string; step: number }> = [];

  async runStep(step: Step<{ steps: number }>) {
    this.log.push({ runId: step.runId, step: step.stepNumber });
    await new Promise((r) => setTimeout(r, 3));
    return step.stepNumber + 1 >= step.payload.steps ? StepOutcome.succeed(step.stepNumber) : StepOutcome.continue(step.payload);
  }

  stepsOf(runId: string): number {
    return this.log.filter((e) => e.runId === runId).length;
  }

  /** How many steps of `runId` ran from position `from` of the log up to the first step of `other` (or until now). */
  stepsBefore(runId: string, other: string, from: number): number {
    const first = this.log.findIndex((e) => e.runId === other);
    return this.log.slice(from, first < 0 ? undefined : first).filter((e) => e.runId === runId).length;
  }
}

/**
 * A run keeps its worker slot for step after step while nobody else waits (no claim
 * per step); once it has had 16 in a row it hands the slot back as soon as another
 * run waits, whether that run was submitted in this process or in another one.
 */
describe('a long run and the runs that wait for its slot', () => {
  const prefix = uniquePrefix('fair');
  let app: TestingModule;
  let control: TestingModule;
  let runner: LoopRunner;
  let service: WorkflowService;

  beforeAll(async () => {
    app = await startApp({
      prefix,
      providers: [LoopRunner],
      worker: { concurrency: 1, pollIntervalMs: 50, leaseMs: 5_000, shutdownTimeoutMs: 2_000 },
    });
    control = await startApp({ prefix, worker: false, options: { workflows: ['loop'] } });
    runner = app.get(LoopRunner);
    service = app.get(WorkflowService);
  });
  afterAll(async () => {
    await control?.close();
    await app?.close();
    await dropTables(prefix);
  });

  it('hands the slot over within a poll interval of another process submitting, and at once for a local submit', async () => {
    const long = await service.submit('loop', { input: { steps: 150 } });
    await waitFor(() => runner.stepsOf(long.runId) >= 20, 'the long run past its 16 steps in a row');

    // Submitted by another app instance: the worker learns of it from its probe of the
    // queue, at most one poll interval (50 ms, about 15 steps of 3 ms here) later.
    let from = runner.log.length;
    const remote = await control.get(WorkflowService).submit('loop', { input: { steps: 1 } });
    await service.waitForOutcome(remote.runId, { timeoutMs: 10_000 });
    expect(runner.stepsBefore(long.runId, remote.runId, from)).toBeLessThanOrEqual(30);

    const sinceRemote = () => runner.stepsBefore(long.runId, 'none yet', runner.log.findIndex((e) => e.runId === remote.runId));
    await waitFor(() => sinceRemote() >= 20, 'the long run past its 16 steps in a row again');

    // Submitted here: the worker is told at once, so the long run yields at its next step.
    from = runner.log.length;
    const local = await service.submit('loop', { input: { steps: 1 } });
    await service.waitForOutcome(local.runId, { timeoutMs: 10_000 });
    expect(runner.stepsBefore(long.runId, local.runId, from)).toBeLessThanOrEqual(3);

    const outcome = await service.waitForOutcome(long.runId, { timeoutMs: 20_000 });
    expect(outcome).toMatchObject({ status: 'succeeded', result: 149 });
    expect(runner.stepsOf(long.runId)).toBe(150);
  });
});
