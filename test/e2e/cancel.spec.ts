import { Injectable } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import {
  InvalidRunIdError,
  OnTerminal,
  type RunOutcome,
  type Step,
  StepAbortedError,
  StepOutcome,
  StepRunner,
  WorkflowService,
} from 'nestjs-durable-workflow';
import { startApp } from '../utils/create-test-app.js';
import { dropTables, uniquePrefix } from '../utils/db.js';
import { deadRows, jobRows } from '../utils/tables.js';
import { deferred, holdsFor, waitFor } from '../utils/wait.js';

const STEP = 0; // jobs.kind of a step (terminal deliveries are 1)

/** What one delivery of a blocking step saw. */
interface Seen {
  runId: string;
  step: number;
  startedAt: number;
  signal: AbortSignal;
  abortedAt?: number;
  /** Set just before runStep returns or throws. */
  finishedAt?: number;
}

/**
 * Step 0 blocks until the test lets it go. `mode` (from the input) says how:
 * - 'signal': waits for step.signal, then returns continue (which must be discarded)
 * - 'ignore': ignores the signal, waits for release(), then returns continue
 * - 'ignore-throw': ignores the signal, waits for release(), then throws
 * Any later step succeeds at once, so a successor shows up in `seen`.
 */
@Injectable()
@StepRunner('blocking', { maxAttempts: 3 })
class BlockingRunner {
  seen: Seen[] = [];
  private started = new Map<string, ReturnType<typeof deferred<Seen>>>();
  private releases = new Map<string, ReturnType<typeof deferred<void>>>();

  startedFor(runId: string): Promise<Seen> {
    return this.gate(this.started, runId).promise;
  }

  release(runId: string): void {
    this.gate(this.releases, runId).resolve();
  }

  async runStep(step: Step<{ mode: 'signal' | 'ignore' | 'ignore-throw' }>) {
    const seen: Seen = { runId: step.runId, step: step.stepNumber, startedAt: Date.now(), signal: step.signal };
    this.seen.push(seen);
    step.signal.addEventListener('abort', () => (seen.abortedAt = Date.now()), { once: true });
    if (step.stepNumber > 0) {
      seen.finishedAt = Date.now();
      return StepOutcome.succeed('successor ran');
    }
    this.gate(this.started, step.runId).resolve(seen);
    const mode = step.payload.mode;
    if (mode === 'signal') {
      if (!step.signal.aborted) {
        await new Promise<void>((resolve) => step.signal.addEventListener('abort', () => resolve(), { once: true }));
      }
    } else {
      await this.gate(this.releases, step.runId).promise;
    }
    seen.finishedAt = Date.now();
    if (mode === 'ignore-throw') throw new Error('runner failed after the cancel');
    return StepOutcome.continue({ mode });
  }

  private gate<T>(map: Map<string, ReturnType<typeof deferred<T>>>, runId: string) {
    let d = map.get(runId);
    if (!d) map.set(runId, (d = deferred<T>()));
    return d;
  }
}

@Injectable()
@StepRunner('quick')
class QuickRunner {
  calls: string[] = [];
  runStep(step: Step<{ verdict: 'succeed' | 'cancel' }>) {
    this.calls.push(step.runId);
    return step.payload.verdict === 'cancel' ? StepOutcome.cancel('why') : StepOutcome.succeed('done');
  }
}

/** Never touches step.signal until the test releases it, then reports what it sees. */
@Injectable()
@StepRunner('late-look')
class LateLookRunner {
  started = new Map<string, ReturnType<typeof deferred<void>>>();
  release = deferred<void>();
  looked = new Map<string, { aborted: boolean; reason: unknown }>();

  startedFor(runId: string) {
    let d = this.started.get(runId);
    if (!d) this.started.set(runId, (d = deferred<void>()));
    return d;
  }

  async runStep(step: Step) {
    this.startedFor(step.runId).resolve();
    await this.release.promise;
    this.looked.set(step.runId, { aborted: step.signal.aborted, reason: step.signal.reason });
    return StepOutcome.succeed('too late');
  }
}

@Injectable()
class Outcomes {
  all: RunOutcome[] = [];

  @OnTerminal()
  record(outcome: RunOutcome) {
    this.all.push(outcome);
  }

  async of(runId: string): Promise<RunOutcome> {
    await waitFor(() => this.all.some((o) => o.runId === runId), `the @OnTerminal delivery of run ${runId}`, 10_000);
    const mine = this.all.filter((o) => o.runId === runId);
    expect(mine).toHaveLength(1);
    return mine[0];
  }
}

describe('cancel', () => {
  const prefix = uniquePrefix('cancel');
  let app: TestingModule;
  let service: WorkflowService;
  let runner: BlockingRunner;
  let outcomes: Outcomes;

  beforeAll(async () => {
    app = await startApp({ prefix, providers: [BlockingRunner, QuickRunner, LateLookRunner, Outcomes] });
    service = app.get(WorkflowService);
    runner = app.get(BlockingRunner);
    outcomes = app.get(Outcomes);
  });
  afterAll(async () => {
    await app?.close();
    await dropTables(prefix);
  });

  const successors = (runId: string) => runner.seen.filter((s) => s.runId === runId && s.step > 0);

  it('a pending delayed run: true, cancelled at once, no job left, @OnTerminal sees cancelled without error', async () => {
    const { runId } = await service.submit('quick', { input: { verdict: 'succeed' }, delayMs: 60_000 });
    const before = await service.status(runId);
    expect(before).toMatchObject({ state: 'pending', currentStep: 0 });
    expect(before!.runAt!.getTime()).toBeGreaterThan(Date.now() + 50_000);

    expect(await service.cancel(runId)).toBe(true);

    const after = await service.status(runId);
    expect(after).toMatchObject({ state: 'cancelled' });
    expect(after!.error).toBeUndefined();
    expect(after!.finishedAt).toBeInstanceOf(Date);
    // The step is gone in the same transaction (only terminal deliveries may remain, briefly).
    expect((await jobRows(prefix, runId)).filter((j) => j.kind === STEP)).toEqual([]);

    const delivered = await outcomes.of(runId);
    expect(delivered).toMatchObject({ runId, workflow: 'quick', status: 'cancelled' });
    expect(delivered.error).toBeUndefined();
    expect('error' in delivered).toBe(false);
    await waitFor(async () => (await jobRows(prefix, runId)).length === 0, 'the live queue to hold nothing of the run');
    expect(app.get(QuickRunner).calls).not.toContain(runId);
    await expect(service.waitForOutcome(runId, { timeoutMs: 1_000 })).resolves.toMatchObject({ status: 'cancelled' });
  });

  it('a running step in the same process: its signal aborts at once with reason cancelled, its result is discarded', async () => {
    const { runId } = await service.submit('blocking', { input: { mode: 'signal' } });
    const seen = await runner.startedFor(runId);
    expect(seen.signal.aborted).toBe(false);
    expect((await service.status(runId))?.state).toBe('running');

    const cancelAt = Date.now();
    expect(await service.cancel(runId)).toBe(true);
    await waitFor(() => seen.signal.aborted, 'step.signal to abort', 2_000);
    expect(seen.abortedAt! - cancelAt).toBeLessThan(500);
    expect(seen.signal.reason).toBeInstanceOf(StepAbortedError);
    expect((seen.signal.reason as StepAbortedError).reason).toBe('cancelled');

    const outcome = await service.waitForOutcome(runId, { timeoutMs: 5_000 });
    expect(outcome).toMatchObject({ status: 'cancelled', finalStep: 0 });
    expect(outcome.error).toBeUndefined();
    // The runner returned continue after the abort; that must not have produced step 1.
    await waitFor(() => seen.finishedAt !== undefined, 'the runner to return');
    await holdsFor(async () => successors(runId).length === 0, 300, 'no successor step runs');
    expect((await jobRows(prefix, runId)).filter((j) => j.kind === STEP)).toEqual([]);
    expect(await service.status(runId)).toMatchObject({ state: 'cancelled', currentStep: 0 });
    const delivered = await outcomes.of(runId);
    expect(delivered.status).toBe('cancelled');
    expect(delivered.error).toBeUndefined();
  });

  it('a runner that first looks at step.signal after the cancel finds it aborted, with reason cancelled', async () => {
    const late = app.get(LateLookRunner);
    const { runId } = await service.submit('late-look', { input: null });
    await late.startedFor(runId).promise;
    expect(await service.cancel(runId)).toBe(true);
    await expect(service.waitForOutcome(runId, { timeoutMs: 5_000 })).resolves.toMatchObject({ status: 'cancelled' });
    late.release.resolve();
    const looked = await waitFor(() => late.looked.get(runId), 'the runner to look at its signal');
    expect(looked.aborted).toBe(true);
    expect(looked.reason).toBeInstanceOf(StepAbortedError);
    expect((looked.reason as StepAbortedError).reason).toBe('cancelled');
  });

  it('from another app instance: the worker aborts within about a second and the run ends cancelled', async () => {
    const other = await startApp({ prefix, worker: false });
    try {
      const { runId } = await service.submit('blocking', { input: { mode: 'signal' } });
      const seen = await runner.startedFor(runId);
      const remote = other.get(WorkflowService);
      expect((await remote.status(runId))?.state).toBe('running');

      const cancelAt = Date.now();
      expect(await remote.cancel(runId)).toBe(true);
      expect((await remote.status(runId))?.state).toMatch(/^(cancelling|cancelled)$/);
      await waitFor(() => seen.signal.aborted, "the worker's step.signal to abort", 5_000);
      const tookMs = seen.abortedAt! - cancelAt;
      expect(tookMs).toBeLessThan(3_000);
      expect((seen.signal.reason as StepAbortedError).reason).toBe('cancelled');

      const outcome = await remote.waitForOutcome(runId, { timeoutMs: 5_000 });
      expect(outcome).toMatchObject({ status: 'cancelled', finalStep: 0 });
      expect(outcome.error).toBeUndefined();
      await waitFor(() => seen.finishedAt !== undefined, 'the runner to return');
      await holdsFor(async () => successors(runId).length === 0, 300, 'no successor step runs');
      expect((await outcomes.of(runId)).status).toBe('cancelled');
    } finally {
      await other.close();
    }
  });

  it('a finished run: false, and it stays as it was', async () => {
    const { runId } = await service.submit('quick', { input: { verdict: 'succeed' } });
    await expect(service.waitForOutcome(runId, { timeoutMs: 5_000 })).resolves.toMatchObject({ status: 'succeeded' });
    expect(await service.cancel(runId)).toBe(false);
    expect(await service.status(runId)).toMatchObject({ state: 'succeeded', result: 'done' });
  });

  it('an unknown run: false', async () => {
    expect(await service.cancel('no-such-run-anywhere')).toBe(false);
  });

  it('an id no run can have: InvalidRunIdError, as from submit', async () => {
    await expect(service.cancel('not a valid id!')).rejects.toBeInstanceOf(InvalidRunIdError);
    await expect(service.cancel('')).rejects.toBeInstanceOf(InvalidRunIdError);
    await expect(service.cancel(42 as unknown as string)).rejects.toBeInstanceOf(InvalidRunIdError);
  });

  it('a runner that ignores the signal and later returns continue: still no successor step', async () => {
    const { runId } = await service.submit('blocking', { input: { mode: 'ignore' } });
    const seen = await runner.startedFor(runId);
    expect(await service.cancel(runId)).toBe(true);
    await waitFor(() => seen.signal.aborted, 'step.signal to abort', 2_000);
    await expect(service.waitForOutcome(runId, { timeoutMs: 5_000 })).resolves.toMatchObject({ status: 'cancelled' });

    runner.release(runId); // the runner now returns continue(...)
    await waitFor(() => seen.finishedAt !== undefined, 'the runner to return');
    await holdsFor(
      async () => successors(runId).length === 0 && (await jobRows(prefix, runId)).every((j) => j.kind !== STEP),
      400,
      'no successor step is inserted or run',
    );
    const status = await service.status(runId);
    expect(status).toMatchObject({ state: 'cancelled', currentStep: 0 });
    expect(status!.error).toBeUndefined();
  });

  it('a runner that ignores the signal and later throws: no retry, no dead letter', async () => {
    const { runId } = await service.submit('blocking', { input: { mode: 'ignore-throw' } });
    const seen = await runner.startedFor(runId);
    expect(await service.cancel(runId)).toBe(true);
    await waitFor(() => seen.signal.aborted, 'step.signal to abort', 2_000);
    runner.release(runId);
    await waitFor(() => seen.finishedAt !== undefined, 'the runner to throw');
    await holdsFor(
      async () =>
        runner.seen.filter((s) => s.runId === runId).length === 1 &&
        (await jobRows(prefix, runId)).every((j) => j.kind !== STEP),
      400,
      'the step is not retried',
    );
    expect(await deadRows(prefix, runId)).toEqual([]);
    expect((await service.deadSteps({ workflow: 'blocking' })).filter((d) => d.runId === runId)).toEqual([]);
    const status = await service.status(runId);
    expect(status).toMatchObject({ state: 'cancelled' });
    expect(status!.error).toBeUndefined();
  });

  it("a runner-issued cancel('why') keeps its reason", async () => {
    const { runId } = await service.submit('quick', { input: { verdict: 'cancel' } });
    const outcome = await service.waitForOutcome(runId, { timeoutMs: 5_000 });
    expect(outcome).toMatchObject({ status: 'cancelled', error: 'why' });
    expect(await service.status(runId)).toMatchObject({ state: 'cancelled', error: 'why' });
    expect(await outcomes.of(runId)).toMatchObject({ status: 'cancelled', error: 'why' });
    expect(await deadRows(prefix, runId)).toEqual([]);
  });
});
