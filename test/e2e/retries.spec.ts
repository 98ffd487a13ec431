import { Injectable } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import {
  OnTerminal,
  type RunOutcome,
  type Step,
  StepError,
  StepOutcome,
  StepRunner,
  WorkflowService,
} from 'nestjs-durable-workflow';
import { startApp } from '../utils/create-test-app.js';
import { dropTables, uniquePrefix } from '../utils/db.js';
import { jobsOfRun } from '../utils/tables.js';
import { deferred, waitFor } from '../utils/wait.js';

/** Records every delivery it gets, per run. */
class Recorder {
  attempts = new Map<string, number[]>();
  deliveredJobIds = new Map<string, string[]>();

  seen(step: Step): number {
    this.deliveredJobIds.set(step.runId, [...(this.deliveredJobIds.get(step.runId) ?? []), step.jobId]);
    const list = this.attempts.get(step.runId) ?? [];
    list.push(step.attempts);
    this.attempts.set(step.runId, list);
    return list.length;
  }
}

/** Throws a plain Error on its first two deliveries, then succeeds. */
@Injectable()
@StepRunner('flaky')
class FlakyRunner extends Recorder {
  runStep(step: Step<{ error: 'plain' | 'transient' }>) {
    const call = this.seen(step);
    if (call <= 2)
      throw step.payload.error === 'plain' ? new Error(`flaky call ${call}`) : StepError.transient(`busy ${call}`);
    return StepOutcome.succeed({ call });
  }
}

/** Always throws: a plain Error, or StepError.permanent when the input says so. */
@Injectable()
@StepRunner('doomed', { maxAttempts: 3 })
class DoomedRunner extends Recorder {
  runStep(step: Step<{ permanent?: boolean }>): StepOutcome {
    this.seen(step);
    if (step.payload.permanent) throw StepError.permanent('input is not a valid invoice');
    throw new Error('upstream 503');
  }
}

/** Step 0 continues; step 1 fails permanently until `fixed`, and can be held on a gate. */
@Injectable()
@StepRunner('redrive')
class RedriveRunner extends Recorder {
  steps: Array<{ runId: string; step: number; attempts: number }> = [];
  jobIds: Array<{ runId: string; step: number; jobId: string }> = [];
  fixed = false;
  gate?: { entered: () => void; release: Promise<void> };

  async runStep(step: Step<{ doc: string }>) {
    this.seen(step);
    this.steps.push({ runId: step.runId, step: step.stepNumber, attempts: step.attempts });
    this.jobIds.push({ runId: step.runId, step: step.stepNumber, jobId: step.jobId });
    if (step.stepNumber === 0) return StepOutcome.continue({ doc: `${step.payload.doc}!` });
    if (!this.fixed) throw StepError.permanent('parser bug');
    if (this.gate) {
      this.gate.entered();
      await this.gate.release;
    }
    return StepOutcome.succeed({ parsed: step.payload.doc });
  }
}

@Injectable()
@StepRunner('notify')
class NotifyRunner {
  runStep(step: Step<{ ok: boolean }>) {
    return step.payload.ok ? StepOutcome.succeed('sent') : StepOutcome.fail('no recipient');
  }
}

@Injectable()
@StepRunner('receipt')
class ReceiptRunner {
  runStep() {
    return StepOutcome.succeed('printed');
  }
}

@Injectable()
@StepRunner('dead-a')
class DeadARunner {
  runStep(): StepOutcome {
    throw StepError.permanent('A is broken');
  }
}

@Injectable()
@StepRunner('dead-b')
class DeadBRunner {
  runStep(): StepOutcome {
    throw StepError.permanent('B is broken');
  }
}

/** A terminal handler that fails its first two deliveries of each run. */
@Injectable()
class FlakyAudit {
  calls = new Map<string, number>();
  seen: RunOutcome[] = [];

  @OnTerminal('notify')
  async onEnd(outcome: RunOutcome) {
    const call = (this.calls.get(outcome.runId) ?? 0) + 1;
    this.calls.set(outcome.runId, call);
    if (call <= 2) throw new Error(`audit store unavailable (call ${call})`);
    this.seen.push(outcome);
  }
}

/** Every outcome of the re-driven workflow, as its handler sees them. */
@Injectable()
class RedriveAudit {
  seen: RunOutcome[] = [];

  @OnTerminal('redrive')
  onEnd(outcome: RunOutcome) {
    this.seen.push(outcome);
  }
}

/** A terminal handler that refuses every delivery for good. */
@Injectable()
class FragileAudit {
  calls = new Map<string, number>();

  @OnTerminal('receipt')
  onEnd(outcome: RunOutcome) {
    this.calls.set(outcome.runId, (this.calls.get(outcome.runId) ?? 0) + 1);
    throw StepError.permanent('schema mismatch');
  }
}

describe('retries and dead letters', () => {
  const prefix = uniquePrefix('retries');
  let app: TestingModule;
  let workflows: WorkflowService;

  beforeAll(async () => {
    app = await startApp({
      prefix,
      providers: [
        FlakyRunner,
        DoomedRunner,
        RedriveRunner,
        NotifyRunner,
        ReceiptRunner,
        DeadARunner,
        DeadBRunner,
        FlakyAudit,
        FragileAudit,
        RedriveAudit,
      ],
      // A default above the runner's own maxAttempts: 3, so the tests can tell which one applied.
      options: { defaults: { maxAttempts: 5, backoff: { baseMs: 20, maxMs: 200 } } },
    });
    workflows = app.get(WorkflowService);
  });
  afterAll(async () => {
    await app?.close();
    await dropTables(prefix);
  });

  async function deadOf(runId: string) {
    return (await workflows.deadSteps({ limit: 1000 })).filter((d) => d.runId === runId);
  }

  it('retries a step that throws a plain Error, with the attempt number, until it succeeds', async () => {
    const { runId } = await workflows.submit('flaky', { input: { error: 'plain' } });

    const outcome = await workflows.waitForOutcome(runId, { timeoutMs: 10_000 });
    expect(outcome).toMatchObject({ status: 'succeeded', result: { call: 3 }, finalStep: 0 });
    expect(app.get(FlakyRunner).attempts.get(runId)).toEqual([1, 2, 3]);
    // A retry is the same step: same jobId on every delivery.
    expect(new Set(app.get(FlakyRunner).deliveredJobIds.get(runId)).size).toBe(1);
    expect((await workflows.status(runId))!.attempts).toBe(3);
    expect(await deadOf(runId)).toEqual([]);
  });

  it('retries a StepError.transient like any other error', async () => {
    const { runId } = await workflows.submit('flaky', { input: { error: 'transient' } });

    const outcome = await workflows.waitForOutcome(runId, { timeoutMs: 10_000 });
    expect(outcome).toMatchObject({ status: 'succeeded', result: { call: 3 } });
    expect(app.get(FlakyRunner).attempts.get(runId)).toEqual([1, 2, 3]);
  });

  it('dead-letters a step that always throws after @StepRunner maxAttempts, and fails the run', async () => {
    const { runId } = await workflows.submit('doomed', { input: {} });

    const outcome = await workflows.waitForOutcome(runId, { timeoutMs: 10_000 });
    expect(outcome.status).toBe('failed');
    expect(outcome.error).toContain('upstream 503');
    expect(app.get(DoomedRunner).attempts.get(runId)).toEqual([1, 2, 3]);

    const dead = await deadOf(runId);
    expect(dead).toHaveLength(1);
    expect(dead[0]).toMatchObject({ runId, workflow: 'doomed', stepNumber: 0, attempts: 3 });
    expect(dead[0].lastError).toContain('upstream 503');
    expect(dead[0].deadAt).toBeInstanceOf(Date);
  });

  it('RunSpec.maxAttemptsPerStep overrides the runner option', async () => {
    const { runId } = await workflows.submit('doomed', { input: {}, maxAttemptsPerStep: 2 });

    const outcome = await workflows.waitForOutcome(runId, { timeoutMs: 10_000 });
    expect(outcome.status).toBe('failed');
    expect(outcome.error).toContain('upstream 503');
    expect(app.get(DoomedRunner).attempts.get(runId)).toEqual([1, 2]);
    expect(await deadOf(runId)).toMatchObject([{ attempts: 2, lastError: expect.stringContaining('upstream 503') }]);
  });

  it('dead-letters a StepError.permanent after one attempt', async () => {
    const { runId } = await workflows.submit('doomed', { input: { permanent: true } });

    const outcome = await workflows.waitForOutcome(runId, { timeoutMs: 10_000 });
    expect(outcome.status).toBe('failed');
    expect(outcome.error).toContain('input is not a valid invoice');
    expect(app.get(DoomedRunner).attempts.get(runId)).toEqual([1]);
    expect(await deadOf(runId)).toMatchObject([
      { stepNumber: 0, attempts: 1, lastError: expect.stringContaining('input is not a valid invoice') },
    ]);
  });

  it('retries an @OnTerminal handler that throws, until it sees the outcome', async () => {
    const { runId } = await workflows.submit('notify', { input: { ok: true }, headers: { tenant: 'acme' } });
    await workflows.waitForOutcome(runId, { timeoutMs: 10_000 });

    const audit = app.get(FlakyAudit);
    const seen = await waitFor(() => audit.seen.find((o) => o.runId === runId), 'the third delivery to succeed');
    expect(seen).toMatchObject({
      runId,
      workflow: 'notify',
      status: 'succeeded',
      result: 'sent',
      headers: { tenant: 'acme' },
    });
    // Once delivered, the delivery is gone: no fourth call will come.
    await waitFor(async () => (await jobsOfRun(prefix, runId)) === 0, 'the delivery to leave the queue');
    expect(audit.calls.get(runId)).toBe(3);
    expect(await deadOf(runId)).toEqual([]);
  });

  it('dead-letters an @OnTerminal handler that throws StepError.permanent, naming the handler', async () => {
    const { runId } = await workflows.submit('receipt', { input: null });
    await workflows.waitForOutcome(runId, { timeoutMs: 10_000 });

    const [dead] = (await waitFor(async () => {
      const d = await deadOf(runId);
      return d.length ? d : undefined;
    }, 'the handler delivery to be dead-lettered'))!;
    expect(dead).toMatchObject({
      runId,
      workflow: 'receipt',
      handler: 'FragileAudit#onEnd',
      attempts: 1,
      lastError: expect.stringContaining('schema mismatch'),
    });
    expect(app.get(FragileAudit).calls.get(runId)).toBe(1);
    // The run itself is unaffected.
    expect(await workflows.status(runId)).toMatchObject({ state: 'succeeded' });
  });

  it('retryDead re-drives a dead step: the run resumes from that step and finishes; a second retryDead is false', async () => {
    const runner = app.get(RedriveRunner);
    const { runId } = await workflows.submit('redrive', { input: { doc: 'invoice' } });
    const failed = await workflows.waitForOutcome(runId, { timeoutMs: 10_000 });
    expect(failed).toMatchObject({
      status: 'failed',
      finalStep: 1,
      error: expect.stringContaining('parser bug'),
      ending: 1,
    });
    const [dead] = await deadOf(runId);
    expect(dead).toMatchObject({ stepNumber: 1, attempts: 1 });
    // Each step has its own jobId, and the dead letter carries the one its step saw.
    const seenIds = runner.jobIds.filter((j) => j.runId === runId);
    expect(seenIds.map((j) => j.step)).toEqual([0, 1]);
    expect(seenIds[0].jobId).not.toBe(seenIds[1].jobId);
    expect(dead.jobId).toBe(seenIds[1].jobId);
    // An id naming another step of the same queue row is not this dead letter.
    expect(await workflows.retryDead(dead.jobId.replace(/\.1$/, '.0'))).toBe(false);
    expect(await workflows.retryDead(`${dead.jobId}x`)).toBe(false);

    // Deploy the fix, and hold the re-driven step so the re-opened run can be observed.
    runner.fixed = true;
    const entered = deferred();
    const release = deferred();
    runner.gate = { entered: entered.resolve, release: release.promise };
    try {
      expect(await workflows.retryDead(dead.jobId)).toBe(true);
      await entered.promise;
      const reopened = await workflows.status(runId);
      expect(reopened).toMatchObject({ state: 'running', currentStep: 1, attempts: 1 });
      expect(reopened!.error).toBeUndefined();
      expect(reopened!.finishedAt).toBeUndefined();
      expect(await deadOf(runId)).toEqual([]);
    } finally {
      release.resolve();
    }

    const outcome = await workflows.waitForOutcome(runId, { timeoutMs: 10_000 });
    expect(outcome).toMatchObject({ status: 'succeeded', result: { parsed: 'invoice!' }, finalStep: 1, ending: 2 });
    expect(outcome.error).toBeUndefined();
    // The handler hears both endings, told apart by `ending`, in order.
    const audit = app.get(RedriveAudit);
    await waitFor(() => audit.seen.filter((o) => o.runId === runId).length === 2, 'both endings delivered');
    expect(audit.seen.filter((o) => o.runId === runId).map((o) => [o.ending, o.status])).toEqual([
      [1, 'failed'],
      [2, 'succeeded'],
    ]);
    // Step 0 did not run again; step 1 ran again with fresh attempts.
    expect(runner.steps.filter((s) => s.runId === runId)).toEqual([
      { runId, step: 0, attempts: 1 },
      { runId, step: 1, attempts: 1 },
      { runId, step: 1, attempts: 1 },
    ]);

    expect(await workflows.retryDead(dead.jobId)).toBe(false);
    expect(await workflows.retryDead('01NOSUCHDEADLETTER0000000')).toBe(false);
    expect(await workflows.status(runId)).toMatchObject({ state: 'succeeded' });
  });

  it('deadSteps filters by workflow, limit and before, newest first', async () => {
    const runsA: string[] = [];
    for (let i = 0; i < 3; i++) {
      const { runId } = await workflows.submit('dead-a', { input: { i } });
      const outcome = await workflows.waitForOutcome(runId, { timeoutMs: 10_000 });
      runsA.push(runId);
      // Keep dead_at strictly increasing so `before` has a clear cut.
      await waitFor(() => Date.now() > outcome.finishedAt.getTime(), 'the clock to move on', 1000, 1);
    }
    const { runId: runB } = await workflows.submit('dead-b', { input: {} });
    await workflows.waitForOutcome(runB, { timeoutMs: 10_000 });

    const a = await workflows.deadSteps({ workflow: 'dead-a' });
    expect(a.map((d) => d.runId)).toEqual([...runsA].reverse());
    expect(a.every((d) => d.workflow === 'dead-a' && d.lastError.includes('A is broken'))).toBe(true);

    const b = await workflows.deadSteps({ workflow: 'dead-b' });
    expect(b.map((d) => d.runId)).toEqual([runB]);

    const all = await workflows.deadSteps();
    expect(all.map((d) => d.runId)).toEqual(expect.arrayContaining([...runsA, runB]));
    expect(all.map((d) => d.deadAt.getTime())).toEqual([...all.map((d) => d.deadAt.getTime())].sort((x, y) => y - x));

    const newestTwo = await workflows.deadSteps({ workflow: 'dead-a', limit: 2 });
    expect(newestTwo.map((d) => d.runId)).toEqual([runsA[2], runsA[1]]);

    const olderThanNewest = await workflows.deadSteps({ workflow: 'dead-a', before: a[0].deadAt });
    expect(olderThanNewest.map((d) => d.runId)).toEqual([runsA[1], runsA[0]]);

    const oldest = await workflows.deadSteps({ workflow: 'dead-a', before: a[1].deadAt, limit: 5 });
    expect(oldest.map((d) => d.runId)).toEqual([runsA[0]]);

    expect(await workflows.deadSteps({ workflow: 'no-such-workflow' })).toEqual([]);
  });
});
