/**
 * The test kit as a user's test would use it: a ManualClock instead of waiting, and
 * drainWorkflows instead of polling for a handler.
 */
import { Inject, Injectable, Scope } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import {
  OnTerminal,
  type RunOutcome,
  type Step,
  StepOutcome,
  STEP_REF,
  StepRunner,
  WorkflowService,
} from 'nestjs-durable-workflow';
import { drainWorkflows, ManualClock } from 'nestjs-durable-workflow/testing';
import { startApp, testBuilder } from '../utils/create-test-app.js';
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

/** A dependency a test replaces with overrideProvider. */
@Injectable()
class ModelClient {
  complete(prompt: string): Promise<string> {
    return Promise.reject(new Error(`the real model was called with ${prompt}`));
  }
}

/** Calls the model, then an hour later reports: a runner with a dependency. */
@Injectable()
@StepRunner('summarize')
class Summarize {
  constructor(private readonly model: ModelClient) {}
  async runStep(step: Step<{ text: string }>) {
    if (step.stepNumber === 0) return StepOutcome.continueAfter(await this.model.complete(step.payload.text), HOUR);
    return StepOutcome.succeed(step.payload);
  }
}

/** Request-scoped: a fresh instance per step, given the step through STEP_REF. */
@Injectable({ scope: Scope.REQUEST })
@StepRunner('scoped')
class Scoped {
  static instances = 0;
  constructor(@Inject(STEP_REF) private readonly step: Step<number>) {
    Scoped.instances++;
  }
  runStep() {
    return this.step.stepNumber === 0
      ? StepOutcome.continueAfter(this.step.payload + 1, HOUR)
      : StepOutcome.succeed(this.step.payload);
  }
}

describe('the kit with overrideProvider, request-scoped runners and two apps in one Jest process', () => {
  const prefixes = [uniquePrefix('testkitA'), uniquePrefix('testkitB')];
  const clocks = [new ManualClock(), new ManualClock()];
  const apps: TestingModule[] = [];

  beforeAll(async () => {
    for (let i = 0; i < 2; i++) {
      const built = await testBuilder({
        prefix: prefixes[i],
        providers: [ModelClient, Summarize, Scoped, Stuck],
        worker: { pollIntervalMs: 5_000, leaseMs: 10_000, shutdownTimeoutMs: 500 },
        options: { clock: clocks[i] },
      })
        .overrideProvider(ModelClient)
        .useValue({ complete: async (prompt: string) => `summary of ${prompt} by app ${i}` })
        .compile();
      await built.init();
      apps.push(built);
    }
  });

  afterAll(async () => {
    for (const a of apps) {
      a.get(Stuck).gate.resolve();
      await a.close();
    }
    for (const p of prefixes) await dropTables(p);
  });

  it('each app drains on its own clock, with its overridden provider and a fresh scoped runner per step', async () => {
    const [a, b] = apps;
    const sa = a.get(WorkflowService);
    const sb = b.get(WorkflowService);
    const summary = await sa.submit('summarize', { input: { text: 'the report' } });
    const scoped = await sa.submit('scoped', { input: 41 });
    // App b has work that cannot finish: draining app a does not wait for it.
    await sb.submit('stuck', { input: null });
    // Step 0 of both runs, then the hour their continueAfter asks for.
    await drainWorkflows(a);
    expect(await sa.status(scoped.runId)).toMatchObject({ state: 'pending', currentStep: 1 });
    clocks[0].advance(HOUR);
    await drainWorkflows(a);
    expect(await sa.status(summary.runId)).toMatchObject({
      state: 'succeeded',
      result: 'summary of the report by app 0',
    });
    expect(await sa.status(scoped.runId)).toMatchObject({ state: 'succeeded', result: 42 });
    expect(Scoped.instances).toBeGreaterThanOrEqual(2);
    await expect(drainWorkflows(b, { timeoutMs: 300 })).rejects.toThrow(/still busy/);
    b.get(Stuck).gate.resolve();
    await drainWorkflows(b);
  });
});
