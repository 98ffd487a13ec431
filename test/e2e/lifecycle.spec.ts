import { type BeforeApplicationShutdown, Inject, Injectable, Scope } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import {
  STEP_REF,
  type Step,
  StepAbortedError,
  StepOutcome,
  StepRunner,
  WorkflowService,
} from 'nestjs-durable-workflow';
import { startApp } from '../utils/create-test-app.js';
import { Prefixes } from '../utils/db.js';
import { deadRows, jobRows } from '../utils/tables.js';
import { deferred, waitFor } from '../utils/wait.js';

const prefixes = new Prefixes('lifecycle');
afterAll(() => prefixes.dropAll());

/** Simulated work inside a runner (not a wait in the test). */
const work = (ms: number) => new Promise((r) => setTimeout(r, ms));

const untilAborted = (signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener('abort', () => resolve(), { once: true });
  });

interface Delivery {
  runId: string;
  step: number;
  attempts: number;
  startedAt: number;
  signal: AbortSignal;
  abortedAt?: number;
  returnedAt?: number;
}

function track(list: Delivery[], step: Step): Delivery {
  const d: Delivery = {
    runId: step.runId,
    step: step.stepNumber,
    attempts: step.attempts,
    startedAt: Date.now(),
    signal: step.signal,
  };
  step.signal.addEventListener('abort', () => (d.abortedAt = Date.now()), { once: true });
  list.push(d);
  return d;
}

// ---------------------------------------------------------------- runners

/** Never finishes on its own: waits for its signal, then returns a late success that must be discarded. */
@Injectable()
@StepRunner('t', { timeoutMs: 200, maxAttempts: 2 })
class TimeoutRunner {
  deliveries: Delivery[] = [];
  async runStep(step: Step) {
    const d = track(this.deliveries, step);
    await untilAborted(step.signal);
    d.returnedAt = Date.now();
    return StepOutcome.succeed('late result');
  }
}

@Injectable()
@StepRunner('conc', { concurrency: 2 })
class ConcurrencyRunner {
  active = 0;
  maxActive = 0;
  calls = 0;
  async runStep(step: Step<number>) {
    this.calls++;
    this.active++;
    this.maxActive = Math.max(this.maxActive, this.active);
    try {
      await work(150);
      return StepOutcome.succeed(step.payload * 2);
    } finally {
      this.active--;
    }
  }
}

@Injectable()
class SharedCounter {
  instancesMade = 0;
}

@Injectable({ scope: Scope.REQUEST })
@StepRunner('scoped')
class ScopedRunner {
  static instances: ScopedRunner[] = [];
  static steps: Array<{ instance: ScopedRunner; step: number; injected?: number }> = [];
  constructor(
    private readonly shared: SharedCounter,
    @Inject(STEP_REF) private readonly injectedStep: Step,
  ) {
    shared.instancesMade++;
    ScopedRunner.instances.push(this);
  }
  runStep(step: Step<{ hops: number }>) {
    ScopedRunner.steps.push({ instance: this, step: step.stepNumber, injected: this.injectedStep?.stepNumber });
    if (step.payload.hops > 0) return StepOutcome.continue({ hops: step.payload.hops - 1 });
    return StepOutcome.succeed({ made: this.shared.instancesMade });
  }
}

/** Blocks while `block` is set in its input, until the test releases it. */
@Injectable()
@StepRunner('slow', { concurrency: 1 })
class SlowRunner {
  deliveries: Delivery[] = [];
  private started = new Map<string, ReturnType<typeof deferred<Delivery>>>();
  private released = new Map<string, ReturnType<typeof deferred<void>>>();

  startedFor(runId: string) {
    return this.gate(this.started, runId).promise;
  }
  release(runId: string) {
    this.gate(this.released, runId).resolve();
  }

  async runStep(step: Step<{ block: boolean }>) {
    const d = track(this.deliveries, step);
    this.gate(this.started, step.runId).resolve(d);
    if (step.payload.block) await this.gate(this.released, step.runId).promise;
    d.returnedAt = Date.now();
    return StepOutcome.succeed(`finished ${step.runId}`);
  }

  private gate<T>(map: Map<string, ReturnType<typeof deferred<T>>>, runId: string) {
    let g = map.get(runId);
    if (!g) map.set(runId, (g = deferred<T>()));
    return g;
  }
}

/** Waits for its signal (ignoring nothing), unless `HangRunner.hang` is off. */
@Injectable()
@StepRunner('hang', { maxAttempts: 1 })
class HangRunner {
  static hang = true;
  deliveries: Delivery[] = [];
  async runStep(step: Step) {
    const d = track(this.deliveries, step);
    if (HangRunner.hang) {
      await untilAborted(step.signal);
      d.returnedAt = Date.now();
      return StepOutcome.succeed('late result from the aborted delivery');
    }
    d.returnedAt = Date.now();
    return StepOutcome.succeed('resumed elsewhere');
  }
}

@Injectable()
@StepRunner('long')
class LongRunner {
  deliveries: Delivery[] = [];
  extended = deferred<void>();
  async runStep(step: Step) {
    const d = track(this.deliveries, step);
    await step.extendLease(10_000);
    this.extended.resolve();
    await work(1_200); // far longer than leaseMs (300)
    d.returnedAt = Date.now();
    return StepOutcome.succeed('long done');
  }
}

/** Tells the test that app.close() has reached beforeApplicationShutdown (root-module hooks run before WorkflowModule's). */
@Injectable()
class ShutdownProbe implements BeforeApplicationShutdown {
  readonly reached = deferred<void>();
  beforeApplicationShutdown() {
    this.reached.resolve();
  }
}

// ---------------------------------------------------------------- tests

describe('step timeout, concurrency, request scope', () => {
  const prefix = prefixes.next();
  let app: TestingModule;
  let service: WorkflowService;

  beforeAll(async () => {
    app = await startApp({ prefix, providers: [TimeoutRunner, ConcurrencyRunner, SharedCounter, ScopedRunner] });
    service = app.get(WorkflowService);
  });
  afterAll(() => app?.close());

  it('timeoutMs aborts the step (reason timeout), counts it as an attempt, retries, then dead-letters it', async () => {
    const { runId } = await service.submit('t', { input: { x: 1 } });
    const outcome = await service.waitForOutcome(runId, { timeoutMs: 10_000 });
    expect(outcome.status).toBe('failed');
    expect(outcome.error).toMatch(/timed out/i);
    expect(outcome.result).toBeUndefined(); // the late 'succeed' was discarded

    const deliveries = app.get(TimeoutRunner).deliveries.filter((d) => d.runId === runId);
    expect(deliveries.map((d) => [d.step, d.attempts])).toEqual([
      [0, 1],
      [0, 2],
    ]);
    for (const d of deliveries) {
      expect(d.signal.aborted).toBe(true);
      expect(d.signal.reason).toBeInstanceOf(StepAbortedError);
      expect((d.signal.reason as StepAbortedError).reason).toBe('timeout');
      const ranFor = d.abortedAt! - d.startedAt;
      expect(ranFor).toBeGreaterThanOrEqual(180);
      expect(ranFor).toBeLessThan(1_500);
    }

    const dead = (await service.deadSteps({ workflow: 't' })).filter((s) => s.runId === runId);
    expect(dead).toHaveLength(1);
    expect(dead[0]).toMatchObject({ runId, workflow: 't', stepNumber: 0, attempts: 2 });
    expect(dead[0].lastError).toMatch(/timed out/i);
    expect(await jobRows(prefix, runId)).toEqual([]);
    expect(await service.status(runId)).toMatchObject({ state: 'failed', attempts: 2 });
  });

  it('per-runner concurrency: 2 is respected (6 runs, at most 2 steps at once)', async () => {
    const runner = app.get(ConcurrencyRunner);
    const runs = await service.submitMany(
      'conc',
      [1, 2, 3, 4, 5, 6].map((n) => ({ input: n })),
    );
    const outcomes = await Promise.all(runs.map((r) => service.waitForOutcome(r.runId, { timeoutMs: 10_000 })));
    expect(outcomes.map((o) => o.result)).toEqual([2, 4, 6, 8, 10, 12]);
    expect(runner.calls).toBe(6);
    expect(runner.maxActive).toBe(2);
  });

  it('a request-scoped runner is resolved per step, with its dependencies, and runs', async () => {
    ScopedRunner.instances = [];
    ScopedRunner.steps = [];
    const { runId } = await service.submit('scoped', { input: { hops: 2 } });
    const outcome = await service.waitForOutcome(runId, { timeoutMs: 10_000 });
    expect(outcome).toMatchObject({ status: 'succeeded', finalStep: 2 });
    expect(ScopedRunner.steps.map((s) => s.step)).toEqual([0, 1, 2]);
    // STEP_REF gives each instance the step it was built for.
    expect(ScopedRunner.steps.map((s) => s.injected)).toEqual([0, 1, 2]);
    // One fresh instance per step, all sharing the singleton dependency.
    const used = new Set(ScopedRunner.steps.map((s) => s.instance));
    expect(used.size).toBe(3);
    expect((outcome.result as { made: number }).made).toBeGreaterThanOrEqual(3);
    expect(app.get(SharedCounter).instancesMade).toBe(ScopedRunner.instances.length);
  });
});

describe('graceful shutdown', () => {
  it('a step in flight at close() finishes and settles; submit keeps working during the drain', async () => {
    const prefix = prefixes.next();
    const app = await startApp({
      prefix,
      providers: [SlowRunner, ShutdownProbe],
      worker: { pollIntervalMs: 50, leaseMs: 5_000, shutdownTimeoutMs: 10_000 },
    });
    let next: TestingModule | undefined;
    try {
      const service = app.get(WorkflowService);
      const runner = app.get(SlowRunner);
      const first = await service.submit('slow', { input: { block: true } });
      const delivery = await runner.startedFor(first.runId);

      let closed = false;
      const closeCalledAt = Date.now();
      const closing = app.close().then(() => {
        closed = true;
      });
      await app.get(ShutdownProbe).reached.promise;

      // Draining now: the database is still open and submit still works.
      const during = await service.submit('slow', { input: { block: false } });
      expect(during.newlySubmitted).toBe(true);
      expect(await service.status(during.runId)).toMatchObject({ state: 'pending' });
      expect(closed).toBe(false);

      runner.release(first.runId);
      await closing;
      expect(Date.now() - closeCalledAt).toBeLessThan(5_000); // did not sit out shutdownTimeoutMs
      expect(delivery.signal.aborted).toBe(false);
      expect(delivery.returnedAt).toBeDefined();

      // Another app on the same tables sees the settled run, and the one submitted during the drain untouched.
      next = await startApp({ prefix, providers: [SlowRunner] });
      const later = next.get(WorkflowService);
      expect(await later.status(first.runId)).toMatchObject({ state: 'succeeded', result: `finished ${first.runId}` });
      expect(runner.deliveries.filter((d) => d.runId === during.runId)).toEqual([]); // not claimed while draining
      await expect(later.waitForOutcome(during.runId, { timeoutMs: 10_000 })).resolves.toMatchObject({
        status: 'succeeded',
      });
      expect(
        next
          .get(SlowRunner)
          .deliveries.filter((d) => d.runId === during.runId)
          .map((d) => d.attempts),
      ).toEqual([1]);
    } finally {
      await app.close();
      await next?.close();
    }
  });

  it('a step that outlasts shutdownTimeoutMs is aborted (reason shutdown) and handed back: another app resumes it at once; the delivery counts in attempts, not against maxAttempts', async () => {
    const prefix = prefixes.next();
    HangRunner.hang = true;
    const worker = { pollIntervalMs: 50, leaseMs: 30_000, shutdownTimeoutMs: 300 };
    const first = await startApp({ prefix, providers: [HangRunner], worker });
    let second: TestingModule | undefined;
    try {
      const service = first.get(WorkflowService);
      const { runId } = await service.submit('hang', { input: null });
      const runner = first.get(HangRunner);
      const delivery = (await waitFor(() => runner.deliveries.find((d) => d.runId === runId), 'the step to start'))!;

      const closeCalledAt = Date.now();
      await first.close();
      const closedAt = Date.now();
      expect(delivery.signal.aborted).toBe(true);
      expect(delivery.signal.reason).toBeInstanceOf(StepAbortedError);
      expect((delivery.signal.reason as StepAbortedError).reason).toBe('shutdown');
      expect(delivery.abortedAt! - closeCalledAt).toBeGreaterThanOrEqual(280); // waited shutdownTimeoutMs first

      // Handed back: claimable now, lease cleared; the cut-off delivery happened, so it is counted as one.
      const rows = (await jobRows(prefix, runId)).filter((j) => j.kind === 0);
      expect(rows).toHaveLength(1);
      expect(rows[0]).toMatchObject({ step_number: 0, attempts: 1, lease_token: null });

      HangRunner.hang = false;
      second = await startApp({ prefix, providers: [HangRunner], worker });
      const resumed = second.get(HangRunner);
      const again = (await waitFor(
        () => resumed.deliveries.find((d) => d.runId === runId),
        'the step to resume in the second app',
        5_000,
      ))!;
      expect(again.startedAt - closedAt).toBeLessThan(3_000); // well before leaseMs (30 s)
      // The second delivery, and with maxAttempts 1 it still runs: the hand-back used up no attempt.
      expect(again.attempts).toBe(2);

      const outcome = await second.get(WorkflowService).waitForOutcome(runId, { timeoutMs: 5_000 });
      expect(outcome).toMatchObject({ status: 'succeeded', result: 'resumed elsewhere' });
      expect(await deadRows(prefix, runId)).toEqual([]);
    } finally {
      HangRunner.hang = true;
      await first.close();
      await second?.close();
    }
  });
});

describe('step.extendLease', () => {
  it('a step running far longer than leaseMs that extends its lease is not redelivered', async () => {
    const prefix = prefixes.next();
    const app = await startApp({
      prefix,
      providers: [LongRunner],
      worker: { pollIntervalMs: 50, leaseMs: 300, shutdownTimeoutMs: 2_000 },
    });
    try {
      const service = app.get(WorkflowService);
      const runner = app.get(LongRunner);
      const { runId } = await service.submit('long', { input: null });
      await runner.extended.promise;
      // The lease now reaches ~10 s ahead in the database clock (leaseMs alone would be 300 ms).
      const [row] = (await jobRows(prefix, runId)).filter((j) => j.kind === 0);
      expect(row.lease_left_ms).toBeGreaterThan(8_000);

      const outcome = await service.waitForOutcome(runId, { timeoutMs: 10_000 });
      expect(outcome).toMatchObject({ status: 'succeeded', result: 'long done' });
      const deliveries = runner.deliveries.filter((d) => d.runId === runId);
      expect(deliveries).toHaveLength(1);
      expect(deliveries[0].returnedAt! - deliveries[0].startedAt).toBeGreaterThan(3 * 300);
      expect(deliveries[0].signal.aborted).toBe(false);
      expect(await service.status(runId)).toMatchObject({ state: 'succeeded', attempts: 1 });
    } finally {
      await app.close();
    }
  });
});
