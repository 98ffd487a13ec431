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

describe('status and waitForOutcome', () => {
  const prefix = uniquePrefix('status');
  let app: TestingModule;
  let workflows: WorkflowService;

  beforeAll(async () => {
    app = await startApp({ prefix, providers: [GatedRunner] });
    workflows = app.get(WorkflowService);
  });
  afterAll(async () => {
    app?.get(GatedRunner).release.resolve();
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
