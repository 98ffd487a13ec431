/**
 * The worker's slot accounting, with the whole WorkflowModule built and only its way to
 * the database swapped: a storage fake whose claimBatch hands out queued jobs, and a
 * batcher that settles at once. Runners hold every step until the test lets it go, so
 * "never more than N at once" is checked at the moment it could break, and "slots come
 * back" by filling every slot again after hundreds of hand-offs.
 */
import { jest } from '@jest/globals';
import { Injectable } from '@nestjs/common';
import { Test, type TestingModule } from '@nestjs/testing';
import { type Step, StepOutcome, StepRunner, WorkflowModule, WorkflowWorker } from 'nestjs-durable-workflow';
import type { Settlement } from '../../lib/storage/settlements.js';
import { type ClaimedJob, JobKind, type SettleResult } from '../../lib/storage/storage.types.js';
import { WorkflowConnection } from '../../lib/storage/workflow-connection.js';
import { WorkflowStorage } from '../../lib/storage/workflow.storage.js';
import { SettleBatcher } from '../../lib/worker/settle-batcher.js';
import { holdsFor, waitFor } from '../utils/wait.js';

const CONCURRENCY = 4;
const NARROW_LIMIT = 2;
/** Steps of each `wide` run: all after the first run in place, in the slot the first was claimed into. */
const WIDE_STEPS = 3;

/** Queued jobs per queue; claimBatch leases them out the way the real claim does (a token each, `more` when some are left). */
class FakeStorage {
  readonly maxAllowedPacket = Number.POSITIVE_INFINITY;
  readonly claims: Array<{ queue: string; limit: number }> = [];
  private readonly backlog = new Map<string, ClaimedJob[]>();
  private seq = 0;

  add(queue: string, count: number): void {
    const list = this.backlog.get(queue) ?? [];
    for (let i = 0; i < count; i++) {
      const id = `${queue}-${this.seq++}`;
      list.push({
        id,
        queue,
        kind: JobKind.Step,
        runId: `run-${id}`,
        stepNumber: 0,
        attempts: 0,
        handbacks: 0,
        maxAttempts: 0,
        priority: 0,
        payload: '{}',
        headers: '{}',
        token: '',
      });
    }
    this.backlog.set(queue, list);
  }

  async claimBatch(queue: string, limit: number, token: string, _leaseMs: number, maxAttempts: number) {
    this.claims.push({ queue, limit });
    const list = this.backlog.get(queue) ?? [];
    const jobs = list.splice(0, limit).map((j) => ({ ...j, token: `${token}/${j.id}`, attempts: 1, maxAttempts }));
    return { jobs, more: list.length > 0 };
  }

  async readyQueues(queues: readonly string[]): Promise<Set<string>> {
    return new Set(queues.filter((q) => (this.backlog.get(q)?.length ?? 0) > 0));
  }

  async ready(): Promise<void> {}
  async registerHandlers(): Promise<void> {}
  async expireHandlers(): Promise<number> {
    return 0;
  }
  async dueWork() {
    return { promote: false, timeouts: false, schedules: false };
  }
  async promoteDue(): Promise<number> {
    return 0;
  }
  async reapExpired() {
    return { requeued: 0, dead: 0, cancelled: 0 };
  }
  async sweepRetention() {
    return { runs: 0, dead: 0 };
  }
  async renewLeases(): Promise<string[]> {
    return [];
  }
  async cancellingAmong(): Promise<string[]> {
    return [];
  }
  handlersFor(): number {
    return 0;
  }
}

/** Every step settles at once; what matters here is when slots are taken and given back. */
class InstantBatcher {
  readonly settled: Settlement[] = [];
  async settle(_job: ClaimedJob, settlement: Settlement): Promise<SettleResult> {
    this.settled.push(settlement);
    return 'settled';
  }
}

/** Steps running now (per queue and in all), the most seen, and the gates holding them. */
@Injectable()
class Tracker {
  running = 0;
  maxRunning = 0;
  readonly perQueue = new Map<string, { running: number; max: number }>();
  finished = 0;
  private gates: Array<() => void> = [];

  async hold(step: Step): Promise<void> {
    const q = this.perQueue.get(step.workflow) ?? { running: 0, max: 0 };
    this.perQueue.set(step.workflow, q);
    this.maxRunning = Math.max(this.maxRunning, ++this.running);
    q.max = Math.max(q.max, ++q.running);
    try {
      await new Promise<void>((resolve) => this.gates.push(resolve));
    } finally {
      this.running--;
      q.running--;
      this.finished++;
    }
  }

  get held(): number {
    return this.gates.length;
  }

  releaseAll(): void {
    for (const open of this.gates.splice(0)) open();
  }

  runningOf(queue: string): number {
    return this.perQueue.get(queue)?.running ?? 0;
  }
}

@Injectable()
@StepRunner('narrow', { concurrency: NARROW_LIMIT })
class NarrowRunner {
  constructor(private readonly tracker: Tracker) {}
  async runStep(step: Step) {
    await this.tracker.hold(step);
    return StepOutcome.succeed(null);
  }
}

@Injectable()
@StepRunner('wide')
class WideRunner {
  constructor(private readonly tracker: Tracker) {}
  async runStep(step: Step) {
    await this.tracker.hold(step);
    return step.stepNumber + 1 < WIDE_STEPS ? StepOutcome.continue({}) : StepOutcome.succeed(null);
  }
}

/** Times out after 10 ms and ignores its aborted signal until the test lets it return. */
@Injectable()
@StepRunner('stubborn', { concurrency: 1, timeoutMs: 10 })
class StubbornRunner {
  constructor(private readonly tracker: Tracker) {}
  async runStep(step: Step) {
    await this.tracker.hold(step);
    return StepOutcome.succeed('too late');
  }
}

describe('worker slots', () => {
  let app: TestingModule;
  let storage: FakeStorage;
  let batcher: InstantBatcher;
  let tracker: Tracker;
  const connection = { ready: jest.fn(async () => Promise.reject(new Error('a unit test must not connect'))) };

  beforeEach(async () => {
    storage = new FakeStorage();
    batcher = new InstantBatcher();
    app = await Test.createTestingModule({
      imports: [
        WorkflowModule.forRoot({
          // Parsed, never dialled: the connection provider is replaced below.
          connection: { url: 'mysql://unit@127.0.0.1:1/never' },
          worker: { concurrency: CONCURRENCY, pollIntervalMs: 10, leaseMs: 5_000, shutdownTimeoutMs: 1_000 },
        }),
      ],
      providers: [Tracker, NarrowRunner, WideRunner, StubbornRunner],
    })
      .overrideProvider(WorkflowConnection)
      .useValue(connection)
      .overrideProvider(WorkflowStorage)
      .useValue(storage)
      .overrideProvider(SettleBatcher)
      .useValue(batcher)
      .compile();
    tracker = app.get(Tracker);
  });

  afterEach(async () => {
    tracker.releaseAll();
    await app.close();
    expect(connection.ready).not.toHaveBeenCalled();
  });

  /** Lets every held step go, again and again, until `steps` steps have finished. */
  async function drain(steps: number): Promise<void> {
    while (tracker.finished < steps) {
      await waitFor(
        () => tracker.held > 0 || tracker.finished >= steps,
        `a held step (${tracker.finished}/${steps} finished)`,
        5_000,
        1,
      );
      tracker.releaseAll();
    }
  }

  it('never runs more than the worker’s concurrency, nor more of a runner than its own limit, and every slot comes back', async () => {
    storage.add('narrow', 5);
    storage.add('wide', 6);
    const steps = 5 + 6 * WIDE_STEPS;
    await app.init();

    await waitFor(() => tracker.running === CONCURRENCY, 'every slot busy', 5_000, 1);
    // The claim loop polls every 10 ms: several of its turns pass here with no slot free.
    await holdsFor(() => tracker.running === CONCURRENCY, 60, 'no step starts while every slot is busy', 5);
    expect(tracker.runningOf('narrow')).toBeLessThanOrEqual(NARROW_LIMIT);

    await drain(steps);
    expect(tracker.maxRunning).toBe(CONCURRENCY);
    expect(tracker.perQueue.get('narrow')!.max).toBe(NARROW_LIMIT);
    expect(batcher.settled.filter((s) => s.type === 'finish')).toHaveLength(11);
    // A claim never asks for more than the slots free for that queue, and never for none.
    for (const c of storage.claims) {
      expect(c.limit).toBeGreaterThan(0);
      expect(c.limit).toBeLessThanOrEqual(c.queue === 'narrow' ? NARROW_LIMIT : CONCURRENCY);
    }
    // The fake's backlog never holds a successor: steps 1 and 2 of a wide run could only
    // run in place, leased to this worker by their predecessor's settlement.
    const continued = batcher.settled.filter((s) => s.type === 'continue');
    expect(continued).toHaveLength(6 * (WIDE_STEPS - 1));
    for (const s of continued) expect(s.next.leaseToken).toBeDefined();

    const worker = app.get(WorkflowWorker);
    await waitFor(() => worker.activeCount === 0, 'no job left in flight');

    // Every slot was given back: new work fills all of them again, and the narrow limit still holds.
    storage.add('narrow', 3);
    storage.add('wide', 3);
    await waitFor(() => tracker.running === CONCURRENCY, 'every slot busy again', 5_000, 1);
    expect(tracker.runningOf('narrow')).toBeLessThanOrEqual(NARROW_LIMIT);
    await drain(steps + 3 + 3 * WIDE_STEPS);
    expect(tracker.maxRunning).toBe(CONCURRENCY);
    expect(tracker.perQueue.get('narrow')!.max).toBe(NARROW_LIMIT);
  });

  it('gives a runner at its limit no slot while another queue can use it', async () => {
    storage.add('narrow', 6);
    await app.init();
    await waitFor(() => tracker.running === NARROW_LIMIT, 'narrow at its limit', 5_000, 1);
    // Free slots remain, but none may go to narrow.
    await holdsFor(() => tracker.running === NARROW_LIMIT, 60, 'narrow stays at its limit with slots free', 5);
    storage.add('wide', 2);
    await waitFor(() => tracker.running === CONCURRENCY, 'wide takes the free slots', 5_000, 1);
    expect(tracker.runningOf('wide')).toBe(CONCURRENCY - NARROW_LIMIT);
    await drain(6 + 2 * WIDE_STEPS);
    expect(tracker.perQueue.get('narrow')!.max).toBe(NARROW_LIMIT);
    expect(tracker.maxRunning).toBe(CONCURRENCY);
  });

  it('keeps the slot of a timed-out runner that ignores its signal until it returns', async () => {
    storage.add('stubborn', 2);
    await app.init();
    await waitFor(() => batcher.settled.some((s) => s.type === 'retry'), 'the first step to time out', 5_000, 1);
    // Its job is settled, yet its runner still runs: with a limit of 1, the second job must wait.
    await holdsFor(
      () => tracker.runningOf('stubborn') === 1 && tracker.finished === 0,
      60,
      'the second job waits for the slot',
      5,
    );
    tracker.releaseAll();
    await waitFor(
      () => tracker.finished === 1 && tracker.runningOf('stubborn') === 1,
      'the second job to take the slot',
      5_000,
      1,
    );
    expect(tracker.perQueue.get('stubborn')!.max).toBe(1);
  });
});
