import { Injectable } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import {
  InvalidRunIdError,
  RunNotFoundError,
  type Step,
  StepOutcome,
  StepRunner,
  WaitTimeoutError,
  WorkflowService,
} from 'nestjs-durable-workflow';
import { startApp } from '../utils/create-test-app.js';
import { dropTables, uniquePrefix } from '../utils/db.js';
import { deferred } from '../utils/wait.js';

/** Each step tells the test it started, then waits until the test releases it. */
@Injectable()
@StepRunner('gated')
class GatedRunner {
  started = deferred<Step>();
  release = deferred();

  async runStep(step: Step<{ text: string }>) {
    this.started.resolve(step);
    await this.release.promise;
    return StepOutcome.succeed({ length: step.payload.text.length });
  }
}

/** Three steps continuing in place; each waits at its start until the test lets it go. */
@Injectable()
@StepRunner('stepwise')
class StepwiseRunner {
  private gates = [deferred(), deferred(), deferred()];
  started = [deferred<Step>(), deferred<Step>(), deferred<Step>()];

  release(step: number) {
    this.gates[step].resolve();
  }

  async runStep(step: Step<null>) {
    this.started[step.stepNumber].resolve(step);
    await this.gates[step.stepNumber].promise;
    return step.stepNumber < 2 ? StepOutcome.continue(null) : StepOutcome.succeed('done');
  }
}

describe('status and waitForOutcome', () => {
  const prefix = uniquePrefix('status');
  let app: TestingModule;
  let workflows: WorkflowService;

  beforeAll(async () => {
    app = await startApp({ prefix, providers: [GatedRunner, StepwiseRunner] });
    workflows = app.get(WorkflowService);
  });
  afterAll(async () => {
    app?.get(GatedRunner).release.resolve();
    for (const s of [0, 1, 2]) app?.get(StepwiseRunner).release(s);
    await app?.close();
    await dropTables(prefix);
  });

  it('status() of an unknown run is null', async () => {
    expect(await workflows.status('never-submitted')).toBeNull();
  });

  it('status() of an id no run can have rejects with InvalidRunIdError, as submit and waitForOutcome do', async () => {
    const err = await workflows.status('not a run id').catch((e: Error) => e);
    expect(err).toBeInstanceOf(InvalidRunIdError);
    expect((err as InvalidRunIdError).runId).toBe('not a run id');
    await expect(workflows.status(null as unknown as string)).rejects.toBeInstanceOf(InvalidRunIdError);
    await expect(workflows.waitForOutcome('not a run id')).rejects.toBeInstanceOf(InvalidRunIdError);
  });

  it('waitForOutcome() of an unknown run rejects with RunNotFoundError', async () => {
    const err = await workflows.waitForOutcome('never-submitted', { timeoutMs: 5_000 }).catch((e: Error) => e);
    expect(err).toBeInstanceOf(RunNotFoundError);
    expect((err as Error).message).toContain('never-submitted');
  });

  it('reports running while the step runs, times a wait out, then reports succeeded', async () => {
    const runner = app.get(GatedRunner);
    const { runId } = await workflows.submit('gated', { input: { text: 'hello' }, headers: { tenant: 'acme' } });
    await runner.started.promise;

    const running = await workflows.status(runId);
    expect(running).toMatchObject({
      runId,
      workflow: 'gated',
      state: 'running',
      currentStep: 0,
      attempts: 1,
      headers: { tenant: 'acme' },
    });
    expect(running!.submittedAt).toBeInstanceOf(Date);
    expect(running!.finishedAt).toBeUndefined();

    const waitStarted = Date.now();
    const err = await workflows.waitForOutcome(runId, { timeoutMs: 200 }).catch((e: Error) => e);
    expect(err).toBeInstanceOf(WaitTimeoutError);
    expect(Date.now() - waitStarted).toBeGreaterThanOrEqual(190);
    expect(Date.now() - waitStarted).toBeLessThan(2_000);
    // The run goes on after a timed-out wait.
    expect(await workflows.status(runId)).toMatchObject({ state: 'running' });

    const outcome = workflows.waitForOutcome(runId, { timeoutMs: 10_000 });
    runner.release.resolve();
    expect(await outcome).toMatchObject({
      runId,
      status: 'succeeded',
      result: { length: 5 },
      headers: { tenant: 'acme' },
    });

    const done = await workflows.status(runId);
    expect(done).toMatchObject({ state: 'succeeded', currentStep: 0, result: { length: 5 } });
    expect(done!.finishedAt).toBeInstanceOf(Date);
    expect(done!.finishedAt!.getTime()).toBeGreaterThanOrEqual(done!.submittedAt.getTime());
  });

  it('follows a chain step by step, in this process and in a worker: false one: currentStep and updatedAt move with each step', async () => {
    const runner = app.get(StepwiseRunner);
    const web = await startApp({ prefix, worker: false, options: { workflows: ['stepwise'] } });
    try {
      const { runId } = await workflows.submit('stepwise', { input: null });
      let last = 0;
      for (const step of [0, 1, 2]) {
        await runner.started[step].promise;
        for (const service of [workflows, web.get(WorkflowService)]) {
          const status = await service.status(runId);
          expect(status).toMatchObject({ state: 'running', currentStep: step, attempts: 1 });
          expect(status!.updatedAt.getTime()).toBeGreaterThanOrEqual(last);
        }
        last = (await workflows.status(runId))!.updatedAt.getTime();
        runner.release(step);
      }
      expect(await workflows.waitForOutcome(runId, { timeoutMs: 10_000 })).toMatchObject({
        status: 'succeeded',
        finalStep: 2,
      });
      expect(await workflows.status(runId)).toMatchObject({ state: 'succeeded', currentStep: 2 });
      const [listed] = (await workflows.listRuns({ workflow: 'stepwise' })).runs;
      expect(listed).toMatchObject({ runId, currentStep: 2 });
    } finally {
      await web.close();
    }
  });
});

@Injectable()
@StepRunner('remote')
class RemoteRunner {
  ran = new Set<string>();
  started = deferred();
  release = deferred();

  async runStep(step: Step<{ a: number; b: number }>) {
    this.ran.add(step.runId);
    this.started.resolve();
    await this.release.promise;
    return StepOutcome.succeed(step.payload.a + step.payload.b);
  }
}

describe('waitForOutcome across processes', () => {
  const prefix = uniquePrefix('statusx');
  let submitter: TestingModule;
  let worker: TestingModule;

  beforeAll(async () => {
    worker = await startApp({ prefix, providers: [RemoteRunner] });
    submitter = await startApp({ prefix, worker: false, options: { workflows: ['remote'] } });
  });
  afterAll(async () => {
    worker?.get(RemoteRunner).release.resolve();
    await submitter?.close();
    await worker?.close();
    await dropTables(prefix);
  });

  it('resolves in a submit-only app for a run that another app ran', async () => {
    const workflows = submitter.get(WorkflowService);
    const runner = worker.get(RemoteRunner);

    const { runId, newlySubmitted } = await workflows.submit('remote', { input: { a: 2, b: 3 } });
    expect(newlySubmitted).toBe(true);
    await runner.started.promise;
    expect(await workflows.status(runId)).toMatchObject({ state: 'running', workflow: 'remote' });

    // Waiting before the run ends: only the shared tables can tell the submitter it did.
    const outcome = workflows.waitForOutcome(runId, { timeoutMs: 10_000 });
    const releasedAt = Date.now();
    runner.release.resolve();
    expect(await outcome).toMatchObject({ runId, workflow: 'remote', status: 'succeeded', result: 5, finalStep: 0 });
    // Found by polling the shared tables, well before the wait's own deadline.
    expect(Date.now() - releasedAt).toBeLessThan(3_000);
    expect(runner.ran.has(runId)).toBe(true);
  });
});
