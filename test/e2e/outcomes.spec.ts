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
import { startApp } from '../utils/create-test-app.js';
import { dropTables, uniquePrefix } from '../utils/db.js';
import { waitFor } from '../utils/wait.js';

/** Ends the run with whatever verdict the input asks for, after one ordinary step. */
@Injectable()
@StepRunner('verdict')
class VerdictRunner {
  calls: Array<{ runId: string; step: number }> = [];

  runStep(step: Step<{ verdict: 'fail' | 'cancel'; reason: string }>) {
    this.calls.push({ runId: step.runId, step: step.stepNumber });
    if (step.stepNumber === 0) return StepOutcome.continue(step.payload);
    return step.payload.verdict === 'fail'
      ? StepOutcome.fail(step.payload.reason)
      : StepOutcome.cancel(step.payload.reason);
  }
}

const DELAY_MS = 600;

/** Step 0 schedules step 1 for later; step 1 succeeds. */
@Injectable()
@StepRunner('delayed')
class DelayedRunner {
  step0ReturnedAt = 0;
  step1StartedAt = 0;

  runStep(step: Step<{ n: number }>) {
    if (step.stepNumber === 0) {
      this.step0ReturnedAt = Date.now();
      return StepOutcome.continueAfter({ n: step.payload.n + 1 }, DELAY_MS);
    }
    this.step1StartedAt = Date.now();
    return StepOutcome.succeed({ n: step.payload.n });
  }
}

type Garbage = 'undefined' | 'unknown kind' | 'string' | 'bigint payload';

/** Returns something that is not a valid StepOutcome. */
@Injectable()
@StepRunner('garbage')
class GarbageRunner {
  calls = new Map<string, number>();

  runStep(step: Step<{ give: Garbage }>): any {
    this.calls.set(step.runId, (this.calls.get(step.runId) ?? 0) + 1);
    switch (step.payload.give) {
      case 'undefined':
        return undefined;
      case 'unknown kind':
        return { kind: 'nope' };
      case 'string':
        return 'done';
      case 'bigint payload':
        return StepOutcome.continue({ tokens: 10n });
    }
  }
}

@Injectable()
class Audit {
  outcomes: RunOutcome[] = [];

  @OnTerminal(['verdict', 'garbage'])
  record(outcome: RunOutcome) {
    this.outcomes.push(outcome);
  }

  deliveredFor(runId: string): RunOutcome | undefined {
    return this.outcomes.find((o) => o.runId === runId);
  }
}

describe('what a runner returns decides the run', () => {
  const prefix = uniquePrefix('outcomes');
  let app: TestingModule;
  let workflows: WorkflowService;

  beforeAll(async () => {
    app = await startApp({ prefix, providers: [VerdictRunner, DelayedRunner, GarbageRunner, Audit] });
    workflows = app.get(WorkflowService);
  });
  afterAll(async () => {
    await app?.close();
    await dropTables(prefix);
  });

  async function deadStepsOf(runId: string) {
    return (await workflows.deadSteps({ limit: 1000 })).filter((d) => d.runId === runId);
  }

  it('fail(reason) fails the run with that reason, without a dead letter, and @OnTerminal sees it', async () => {
    const { runId } = await workflows.submit('verdict', { input: { verdict: 'fail', reason: 'model refused' } });

    const outcome = await workflows.waitForOutcome(runId, { timeoutMs: 10_000 });
    expect(outcome).toMatchObject({ runId, status: 'failed', error: 'model refused', finalStep: 1 });
    expect(await workflows.status(runId)).toMatchObject({ state: 'failed', error: 'model refused', currentStep: 1 });
    expect(await deadStepsOf(runId)).toEqual([]);
    // The runner's verdict is not an error: the step ran exactly once.
    expect(app.get(VerdictRunner).calls.filter((c) => c.runId === runId)).toEqual([
      { runId, step: 0 },
      { runId, step: 1 },
    ]);

    const audit = app.get(Audit);
    const delivered = await waitFor(() => audit.deliveredFor(runId), 'the @OnTerminal delivery of the failed run');
    expect(delivered).toMatchObject({
      runId,
      workflow: 'verdict',
      status: 'failed',
      error: 'model refused',
      finalStep: 1,
    });
  });

  it('cancel(reason) cancels the run and keeps the reason', async () => {
    const { runId } = await workflows.submit('verdict', { input: { verdict: 'cancel', reason: 'user went away' } });

    const outcome = await workflows.waitForOutcome(runId, { timeoutMs: 10_000 });
    expect(outcome).toMatchObject({ runId, status: 'cancelled', error: 'user went away', finalStep: 1 });
    expect(await workflows.status(runId)).toMatchObject({ state: 'cancelled', error: 'user went away' });
    expect(await deadStepsOf(runId)).toEqual([]);

    const audit = app.get(Audit);
    const delivered = await waitFor(() => audit.deliveredFor(runId), 'the @OnTerminal delivery of the cancelled run');
    expect(delivered).toMatchObject({ status: 'cancelled', error: 'user went away' });
  });

  it('continueAfter(payload, ms) keeps the next step pending until the delay has passed, then the run completes', async () => {
    const runner = app.get(DelayedRunner);
    const { runId } = await workflows.submit('delayed', { input: { n: 1 } });

    const pending = (await waitFor(async () => {
      const s = await workflows.status(runId);
      return s?.currentStep === 1 ? s : undefined;
    }, 'step 1 to be scheduled'))!;
    expect(pending.state).toBe('pending');
    expect(pending.runAt).toBeInstanceOf(Date);
    // Due `DELAY_MS` after step 0 returned (a little slack for the settlement itself).
    expect(pending.runAt!.getTime()).toBeGreaterThanOrEqual(runner.step0ReturnedAt + DELAY_MS);
    expect(pending.runAt!.getTime()).toBeLessThanOrEqual(runner.step0ReturnedAt + DELAY_MS + 250);

    const outcome = await workflows.waitForOutcome(runId, { timeoutMs: 10_000 });
    expect(outcome).toMatchObject({ status: 'succeeded', result: { n: 2 }, finalStep: 1 });
    // Step 1 was not claimed before it was due.
    expect(runner.step1StartedAt).toBeGreaterThanOrEqual(pending.runAt!.getTime());
    expect(runner.step1StartedAt - runner.step0ReturnedAt).toBeGreaterThanOrEqual(DELAY_MS);
  });

  it.each<[Garbage, RegExp]>([
    ['undefined', /returned undefined, which is not a StepOutcome/],
    ['unknown kind', /returned \{"kind":"nope"\}, which is not a StepOutcome/],
    ['string', /returned string done, which is not a StepOutcome/],
  ])('a runner returning %s dead-letters the step at once and fails the run', async (give, message) => {
    const { runId } = await workflows.submit('garbage', { input: { give } });

    const outcome = await workflows.waitForOutcome(runId, { timeoutMs: 10_000 });
    expect(outcome.status).toBe('failed');
    expect(outcome.error).toMatch(message);

    const dead = await deadStepsOf(runId);
    expect(dead).toHaveLength(1);
    expect(dead[0]).toMatchObject({ runId, workflow: 'garbage', stepNumber: 0, attempts: 1 });
    expect(dead[0].lastError).toMatch(message);
    expect(dead[0].lastError).toContain('GarbageRunner#runStep');
    // Permanent: not retried, although the runner has attempts left.
    expect(app.get(GarbageRunner).calls.get(runId)).toBe(1);

    const audit = app.get(Audit);
    const delivered = await waitFor(
      () => audit.deliveredFor(runId),
      'the @OnTerminal delivery of the dead-lettered run',
    );
    expect(delivered?.status).toBe('failed');
  });

  it('continue with a payload that is not JSON (a BigInt) dead-letters the step with a clear message', async () => {
    const { runId } = await workflows.submit('garbage', { input: { give: 'bigint payload' } });

    const outcome = await workflows.waitForOutcome(runId, { timeoutMs: 10_000 });
    expect(outcome.status).toBe('failed');
    expect(outcome.error).toMatch(/BigInt/);

    const dead = await deadStepsOf(runId);
    expect(dead).toHaveLength(1);
    expect(dead[0]).toMatchObject({ stepNumber: 0, attempts: 1 });
    expect(dead[0].lastError).toMatch(/payload returned by step 0 is not a JSON value/);
    expect(dead[0].lastError).toMatch(/"tokens" is a BigInt/);
    expect(app.get(GarbageRunner).calls.get(runId)).toBe(1);
    // No step 1 was created.
    expect(await workflows.status(runId)).toMatchObject({ state: 'failed', currentStep: 0 });
  });
});
