/**
 * The executor's whole job is to turn what happened to a delivery into exactly one
 * settlement. Storage and the batcher are fakes (the batcher records what it is given),
 * so each outcome's settlement is read directly, with no database and a fixed clock.
 */
import { jest } from '@jest/globals';
import { Injectable } from '@nestjs/common';
import { DiscoveryModule } from '@nestjs/core';
import { Test, type TestingModule } from '@nestjs/testing';
import { OnTerminal, type RunOutcome, type Step, StepError, StepOutcome, StepRunner } from 'nestjs-durable-workflow';
import { StepAbortedError } from '../../lib/errors/step-aborted.error.js';
import { Settle, type Settlement } from '../../lib/storage/settlements.js';
import { type ClaimedJob, JobKind, type SettleResult } from '../../lib/storage/storage.types.js';
import { WorkflowStorage } from '../../lib/storage/workflow.storage.js';
import { Execution } from '../../lib/worker/execution.js';
import { JobExecutor } from '../../lib/worker/job-executor.js';
import { SettleBatcher } from '../../lib/worker/settle-batcher.js';
import { resolveConfig } from '../../lib/workflow.config.js';
import { WORKFLOW_CONFIG } from '../../lib/workflow.constants.js';
import { WorkflowExplorer } from '../../lib/workflow.explorer.js';
import { WorkflowMetadataAccessor } from '../../lib/workflow-metadata.accessor.js';
import { WorkflowNotifier } from '../../lib/workflow.notifier.js';
import { WorkflowRegistry } from '../../lib/workflow.registry.js';
import { deferred } from '../utils/wait.js';

const NOW = 1_700_000_000_000;
const LEASE_MS = 4_000;

/** Records every settlement; `arrived` resolves with the next one. */
class RecordingBatcher {
  readonly given: Array<{ job: ClaimedJob; settlement: Settlement }> = [];
  result: SettleResult = 'settled';
  private waiting?: (s: Settlement) => void;

  settle(job: ClaimedJob, settlement: Settlement): Promise<SettleResult> {
    this.given.push({ job, settlement });
    this.waiting?.(settlement);
    this.waiting = undefined;
    return Promise.resolve(this.result);
  }

  arrived(): Promise<Settlement> {
    return new Promise((resolve) => (this.waiting = resolve));
  }

  get settlements(): Settlement[] {
    return this.given.map((g) => g.settlement);
  }
}

/** Only what the executor asks of storage: an unlimited packet (no size check) and lease renewals. */
const fakeStorage = {
  maxAllowedPacket: Number.POSITIVE_INFINITY,
  handlersFor: () => 0,
  renewLeases: async () => [] as string[],
};

@StepRunner('orders', { maxAttempts: 3, backoff: { baseMs: 100, maxMs: 10_000 } })
class OrdersRunner {
  behave: (step: Step) => unknown = () => StepOutcome.succeed(null);
  runStep(step: Step) {
    return this.behave(step) as any;
  }
}

/** Blocks until the test lets it return, so the runtime can take the job over meanwhile. */
@StepRunner('gated')
class GatedRunner {
  started = deferred<Step>();
  gate = deferred<unknown>();
  async runStep(step: Step) {
    this.started.resolve(step);
    return (await this.gate.promise) as any;
  }
}

@StepRunner('slow', { timeoutMs: 10, backoff: { baseMs: 100, maxMs: 100 } })
class SlowRunner {
  gate = deferred<unknown>();
  step?: Step;
  async runStep(step: Step) {
    this.step = step;
    return (await this.gate.promise) as any;
  }
}

@Injectable()
class Hooks {
  readonly seen: RunOutcome[] = [];
  fail = false;
  @OnTerminal()
  record(o: RunOutcome) {
    if (this.fail) throw new Error('handler down');
    this.seen.push(o);
  }
}

const silent = { log() {}, error() {}, warn() {}, debug() {}, verbose() {}, fatal() {} };

function claimed(over: Partial<ClaimedJob> = {}): ClaimedJob {
  return {
    id: 'row1',
    queue: 'orders',
    kind: JobKind.Step,
    runId: 'run-1',
    stepNumber: 3,
    attempts: 1,
    handbacks: 0,
    maxAttempts: 3,
    priority: 7,
    payload: '{"n":1}',
    headers: '{"tenant":"acme"}',
    token: 'lease-1',
    ...over,
  };
}

describe('JobExecutor', () => {
  let app: TestingModule;
  let executor: JobExecutor;
  let batcher: RecordingBatcher;
  let orders: OrdersRunner;
  let freeSlot: jest.Mock<() => void>;

  beforeEach(async () => {
    batcher = new RecordingBatcher();
    app = await Test.createTestingModule({
      imports: [DiscoveryModule],
      providers: [
        {
          provide: WORKFLOW_CONFIG,
          useValue: resolveConfig({
            connection: { url: 'mysql://unit@127.0.0.1:1/never' },
            worker: { leaseMs: LEASE_MS },
            defaults: { backoff: { baseMs: 40, maxMs: 40 } },
            clock: { now: () => NOW },
          }),
        },
        WorkflowMetadataAccessor,
        WorkflowRegistry,
        WorkflowExplorer,
        WorkflowNotifier,
        WorkflowStorage,
        SettleBatcher,
        JobExecutor,
        OrdersRunner,
        GatedRunner,
        SlowRunner,
        Hooks,
      ],
    })
      .overrideProvider(WorkflowStorage)
      .useValue(fakeStorage)
      .overrideProvider(SettleBatcher)
      .useValue(batcher)
      .setLogger(silent)
      .compile();
    await app.init();
    executor = app.get(JobExecutor);
    orders = app.get(OrdersRunner);
    freeSlot = jest.fn<() => void>();
  });

  afterEach(async () => {
    app.get(WorkflowNotifier).close();
    await app.close();
    jest.restoreAllMocks();
  });

  function execution(job: ClaimedJob, inPlaceToken: () => string | undefined = () => undefined): Execution {
    return new Execution(job, job.queue, inPlaceToken, freeSlot);
  }

  /** Runs one delivery of `orders` whose runner does `behave`, and returns the one settlement it produced. */
  async function settlementOf(behave: (step: Step) => unknown, over: Partial<ClaimedJob> = {}): Promise<Settlement> {
    orders.behave = behave;
    await executor.execute(execution(claimed(over)));
    expect(batcher.given).toHaveLength(1);
    return batcher.settlements[0];
  }

  it('hands the runner its step: payload parsed, headers frozen, the public job id', async () => {
    let seen: Step | undefined;
    await settlementOf((step) => {
      seen = step;
      return StepOutcome.succeed(null);
    });
    expect(seen).toMatchObject({
      runId: 'run-1',
      workflow: 'orders',
      stepNumber: 3,
      payload: { n: 1 },
      jobId: 'row1.3',
      attempts: 1,
    });
    expect(seen!.headers).toEqual({ tenant: 'acme' });
    expect(Object.isFrozen(seen!.headers)).toBe(true);
  });

  describe('continue', () => {
    it('writes the successor over the same row: step + 1, leased in place to the token it was given', async () => {
      orders.behave = () => StepOutcome.continue({ n: 2 });
      const job = claimed();
      const exec = execution(job, () => 'in-place-1');
      await executor.execute(exec);
      expect(batcher.settlements).toEqual([
        Settle.continueWith({
          id: 'row1',
          queue: 'orders',
          kind: JobKind.Step,
          runId: 'run-1',
          stepNumber: 4,
          priority: 7,
          runAt: NOW,
          scheduled: false,
          maxAttempts: 3,
          payload: '{"n":2}',
          headers: job.headers,
          leaseToken: 'in-place-1',
          leaseMs: LEASE_MS,
        }),
      ]);
      // The slot was given back while the settlement committed; the worker runs exec.next in the next free one.
      expect(exec.next).toMatchObject({
        id: 'row1',
        stepNumber: 4,
        attempts: 1,
        maxAttempts: 3,
        token: 'in-place-1',
        payload: '{"n":2}',
      });
      expect(exec.next!.parsedHeaders).toBe(job.parsedHeaders);
      expect(freeSlot).toHaveBeenCalledTimes(1);
    });

    it('without an in-place token, leaves the successor ready for any worker and frees the slot', async () => {
      const s = await settlementOf(() => StepOutcome.continue({ n: 2 }));
      expect(s).toMatchObject({ type: 'continue', next: { stepNumber: 4, runAt: NOW, scheduled: false } });
      expect((s as Extract<Settlement, { type: 'continue' }>).next.leaseToken).toBeUndefined();
      expect(freeSlot).toHaveBeenCalledTimes(1);
    });

    it('continueAfter schedules the successor and never asks for an in-place token', async () => {
      orders.behave = () => StepOutcome.continueAfter({ n: 2 }, 5_000);
      const inPlaceToken = jest.fn(() => 'unused');
      const exec = execution(claimed(), inPlaceToken);
      await executor.execute(exec);
      expect(batcher.settlements[0]).toMatchObject({
        type: 'continue',
        next: { stepNumber: 4, runAt: NOW + 5_000, scheduled: true },
      });
      expect(inPlaceToken).not.toHaveBeenCalled();
      expect(exec.next).toBeUndefined();
    });

    it('dead-letters a continueAfter whose delay cannot be stored', async () => {
      const s = await settlementOf(() => StepOutcome.continueAfter({}, -1));
      expect(s.type).toBe('deadLetter');
      expect((s as Extract<Settlement, { type: 'deadLetter' }>).error).toContain(
        'OrdersRunner#runStep returned an invalid continue outcome',
      );
    });
  });

  it.each([
    ['succeed', () => StepOutcome.succeed({ ok: true }), Settle.finish('succeeded', { result: '{"ok":true}' })],
    [
      'succeed without a result',
      () => StepOutcome.succeed(undefined),
      Settle.finish('succeeded', { result: undefined }),
    ],
    ['fail', () => StepOutcome.fail('card declined'), Settle.finish('failed', { error: 'card declined' })],
    ['cancel', () => StepOutcome.cancel('customer left'), Settle.finish('cancelled', { error: 'customer left' })],
  ])('%s finishes the run with that status', async (_name, behave, expected) => {
    expect(await settlementOf(behave)).toEqual(expected);
    expect(freeSlot).toHaveBeenCalledTimes(1);
  });

  describe('a throw', () => {
    beforeEach(() => {
      // The jitter's random half at its top, so the delay is exactly the exponential bound.
      jest.spyOn(Math, 'random').mockReturnValue(1);
    });

    it.each([
      [1, 100],
      [2, 200],
    ])('on attempt %i of 3 retries after the runner’s backoff (%i ms)', async (attempts, delay) => {
      const s = await settlementOf(
        () => {
          throw new Error('boom');
        },
        { attempts },
      );
      expect(s).toMatchObject({ type: 'retry', runAt: NOW + delay });
      expect((s as Extract<Settlement, { type: 'retry' }>).error).toMatch(/^Error: boom\n/);
    });

    it('on the last attempt dead-letters, the run’s error saying it gave up', async () => {
      const s = await settlementOf(
        async () => {
          throw new Error('boom');
        },
        { attempts: 3 },
      );
      expect(s).toMatchObject({ type: 'deadLetter', reason: 'boom (gave up after 3 of 3 attempts)' });
      expect((s as Extract<Settlement, { type: 'deadLetter' }>).error).toMatch(/^Error: boom\n/);
    });

    it('of StepError.permanent dead-letters on the first attempt, with its message as the run’s error', async () => {
      const s = await settlementOf(() => {
        throw StepError.permanent('bad input');
      });
      expect(s).toMatchObject({ type: 'deadLetter', reason: 'bad input' });
    });

    it('of StepError.transient, or of a non-Error, is retried like any other', async () => {
      expect(
        await settlementOf(() => {
          throw StepError.transient('later');
        }),
      ).toMatchObject({ type: 'retry', runAt: NOW + 100 });
      batcher.given.length = 0;
      expect(
        await settlementOf(() => {
          throw 'just a string';
        }),
      ).toEqual(Settle.retryAt(NOW + 100, 'non-Error thrown: just a string'));
    });
  });

  it.each([
    ['undefined', undefined, 'returned undefined'],
    ['null', null, 'returned null'],
    ['a number', 42, 'returned number 42'],
    ['an unknown kind', { kind: 'maybe' }, 'returned {"kind":"maybe"}'],
  ])('dead-letters a non-outcome (%s), naming the runner and what it returned', async (_name, value, says) => {
    const s = await settlementOf(() => value);
    expect(s.type).toBe('deadLetter');
    const error = (s as Extract<Settlement, { type: 'deadLetter' }>).error;
    expect(error).toContain(`OrdersRunner#runStep ${says}, which is not a StepOutcome`);
  });

  it('dead-letters a stored payload that is not JSON, without calling the runner', async () => {
    const behave = jest.fn(() => StepOutcome.succeed(null));
    const s = await settlementOf(behave, { payload: '{not json' });
    expect(s.type).toBe('deadLetter');
    expect((s as Extract<Settlement, { type: 'deadLetter' }>).error).toContain('not valid JSON');
    expect(behave).not.toHaveBeenCalled();
  });

  it('dead-letters a step of a workflow this process has no runner for', async () => {
    await executor.execute(execution(claimed({ queue: 'ghost' })));
    expect(batcher.settlements).toHaveLength(1);
    expect((batcher.settlements[0] as Extract<Settlement, { type: 'deadLetter' }>).error).toContain(
      "no @StepRunner('ghost')",
    );
  });

  describe('a takeover by the runtime', () => {
    it('on timeout retries, aborts the step’s signal, and discards the outcome the runner returns later', async () => {
      const slow = app.get(SlowRunner);
      const exec = execution(claimed({ queue: 'slow' }));
      const running = executor.execute(exec);
      const s = await batcher.arrived();
      expect(s).toMatchObject({ type: 'retry' });
      expect((s as Extract<Settlement, { type: 'retry' }>).error).toContain('step timed out after 10 ms');
      const reason = slow.step!.signal.reason as StepAbortedError;
      expect(reason).toBeInstanceOf(StepAbortedError);
      expect(reason.reason).toBe('timeout');
      // A runner that ignores its signal keeps its slot until it returns, so concurrency holds.
      expect(freeSlot).not.toHaveBeenCalled();
      slow.gate.resolve(StepOutcome.succeed('too late'));
      await running;
      expect(batcher.settlements).toHaveLength(1);
      expect(freeSlot).toHaveBeenCalledTimes(1);
    });

    it.each([
      ['cancelled', Settle.observeCancel()],
      ['shutdown', Settle.release()],
    ] as const)('on %s settles it as %o and ignores the runner’s late outcome', async (reason, expected) => {
      const gated = app.get(GatedRunner);
      const exec = execution(claimed({ queue: 'gated' }));
      const running = executor.execute(exec);
      const step = await gated.started.promise;
      await executor.takeOver(exec, reason, 'by the test');
      expect(batcher.settlements).toEqual([expected]);
      expect((step.signal.reason as StepAbortedError).reason).toBe(reason);
      gated.gate.resolve(StepOutcome.succeed('too late'));
      await running;
      expect(batcher.settlements).toEqual([expected]);
      expect(freeSlot).toHaveBeenCalledTimes(1);
    });

    it('on a lost lease settles nothing: the job belongs to another delivery now', async () => {
      const gated = app.get(GatedRunner);
      const exec = execution(claimed({ queue: 'gated' }));
      const running = executor.execute(exec);
      await gated.started.promise;
      await executor.takeOver(exec, 'lease-lost');
      gated.gate.resolve(StepOutcome.succeed('too late'));
      await running;
      expect(batcher.settlements).toEqual([]);
    });

    it('after the runner returned is a no-op: the runner’s settlement stands alone', async () => {
      const exec = execution(claimed());
      await executor.execute(exec);
      await executor.takeOver(exec, 'cancelled');
      expect(batcher.settlements).toEqual([Settle.finish('succeeded', { result: 'null' })]);
    });
  });

  describe('a terminal delivery', () => {
    const delivery = (over: Partial<ClaimedJob> = {}) =>
      claimed({
        kind: JobKind.Terminal,
        queue: '~terminal:Hooks#record',
        stepNumber: 0,
        payload: JSON.stringify({
          runId: 'run-1',
          workflow: 'orders',
          status: 'succeeded',
          finalStep: 3,
          submittedAt: 0,
          finishedAt: 5,
        }),
        ...over,
      });

    it('calls the handler with the outcome and acknowledges it', async () => {
      await executor.execute(execution(delivery()));
      expect(batcher.settlements).toEqual([Settle.acknowledge()]);
      const [o] = app.get(Hooks).seen;
      expect(o).toMatchObject({ runId: 'run-1', status: 'succeeded', headers: { tenant: 'acme' }, ending: 1 });
      expect(o.finishedAt).toEqual(new Date(5));
    });

    it('retries a handler that throws after the module’s default backoff', async () => {
      jest.spyOn(Math, 'random').mockReturnValue(1);
      app.get(Hooks).fail = true;
      await executor.execute(execution(delivery()));
      expect(batcher.settlements[0]).toMatchObject({ type: 'retry', runAt: NOW + 40 });
    });

    it('dead-letters a delivery for a handler this process does not host', async () => {
      await executor.execute(execution(delivery({ queue: '~terminal:Gone#away' })));
      expect(batcher.settlements[0].type).toBe('deadLetter');
    });
  });
});
