/**
 * The test kit as a user's test would use it: a ManualClock instead of waiting, and
 * drainWorkflows instead of polling for a handler.
 */
import { Injectable } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import {
  OnTerminal,
  type RunOutcome,
  type Step,
  StepOutcome,
  StepRunner,
  WorkflowService,
} from 'nestjs-durable-workflow';
import { drainWorkflows, ManualClock } from 'nestjs-durable-workflow/testing';
import { startApp } from '../utils/create-test-app.js';
import { dropTables, uniquePrefix } from '../utils/db.js';
import { deferred } from '../utils/wait.js';

const HOUR = 3_600_000;

/** An hour between its two model calls (a rate limit), then done. */
@Injectable()
@StepRunner('slow-agent')
class SlowAgent {
  runStep(step: Step<{ calls: number }>) {
    return step.payload.calls === 0 ? StepOutcome.continueAfter({ calls: 1 }, HOUR) : StepOutcome.succeed(step.payload);
  }
}

/** Fails its first delivery; the retry comes after a ten-minute backoff. */
@Injectable()
@StepRunner('flaky', { backoff: { baseMs: 10 * 60_000, maxMs: 10 * 60_000 } })
class Flaky {
  calls = 0;
  runStep() {
    if (++this.calls === 1) throw new Error('provider down');
    return StepOutcome.succeed('up again');
  }
}

/** Waits a day for an approval that never comes. */
@Injectable()
@StepRunner('approval')
class Approval {
  runStep(step: Step) {
    if (step.stepNumber === 0) return StepOutcome.waitForSignal('approved', null, { timeoutMs: 24 * HOUR });
    return StepOutcome.succeed(step.received);
  }
}

/** Holds its step until released, to show a drain that cannot finish. */
@Injectable()
@StepRunner('stuck')
class Stuck {
  readonly gate = deferred();
  async runStep() {
    await this.gate.promise;
    return StepOutcome.succeed(null);
  }
}

@Injectable()
class Notifications {
  sent: RunOutcome[] = [];
  @OnTerminal()
  send(outcome: RunOutcome) {
    this.sent.push(outcome);
  }
}

describe('nestjs-durable-workflow/testing', () => {
  const prefix = uniquePrefix('testkit');
  const clock = new ManualClock();
  let app: TestingModule;
  let service: WorkflowService;

  beforeAll(async () => {
    app = await startApp({
      prefix,
      providers: [SlowAgent, Flaky, Approval, Stuck, Notifications],
      // A slow poll, so that what happens at once is not the poll's doing.
      worker: { pollIntervalMs: 5_000, leaseMs: 10_000, shutdownTimeoutMs: 500 },
      options: { clock },
    });
    service = app.get(WorkflowService);
  });

  afterAll(async () => {
    app.get(Stuck).gate.resolve();
    await app?.close();
    await dropTables(prefix);
  });

  it('an hour-long continueAfter: nothing due until the clock moves, then drained with its handler done', async () => {
    const { runId } = await service.submit('slow-agent', { input: { calls: 0 } });
    await drainWorkflows(app);
    expect(await service.status(runId)).toMatchObject({ state: 'pending', currentStep: 1 });
    clock.advance(HOUR);
    await drainWorkflows(app);
    expect(await service.status(runId)).toMatchObject({ state: 'succeeded', result: { calls: 1 } });
    // drainWorkflows also waited for the terminal delivery.
    expect(app.get(Notifications).sent.filter((o) => o.runId === runId)).toHaveLength(1);
  });

  it('a ten-minute backoff', async () => {
    const { runId } = await service.submit('flaky', { input: null });
    await drainWorkflows(app);
    expect(await service.status(runId)).toMatchObject({ state: 'pending', attempts: 1 });
    clock.advance(10 * 60_000);
    await drainWorkflows(app);
    expect(await service.status(runId)).toMatchObject({ state: 'succeeded', result: 'up again' });
  });

  it('a signal timeout of a day', async () => {
    const { runId } = await service.submit('approval', { input: null });
    await drainWorkflows(app);
    expect(await service.status(runId)).toMatchObject({ state: 'waiting' });
    clock.advance(24 * HOUR);
    await drainWorkflows(app);
    expect(await service.status(runId)).toMatchObject({
      state: 'succeeded',
      result: { name: 'approved', timedOut: true },
    });
  });

  it('rejects after timeoutMs, naming what is still busy', async () => {
    const { runId } = await service.submit('stuck', { input: null });
    await expect(drainWorkflows(app, { timeoutMs: 300 })).rejects.toThrow(/still busy after 300 ms: .*running/);
    app.get(Stuck).gate.resolve();
    await drainWorkflows(app);
    expect(await service.status(runId)).toMatchObject({ state: 'succeeded' });
  });

  it('ManualClock moves only when told', () => {
    const c = new ManualClock(1_000);
    expect(c.now()).toBe(1_000);
    c.advance(500);
    expect(c.now()).toBe(1_500);
    c.set(100);
    expect(c.now()).toBe(100);
    expect(() => c.advance(-1)).toThrow(RangeError);
  });
});
