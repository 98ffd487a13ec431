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

/** Each step takes a few milliseconds of simulated work, then continues until `steps` is reached. */
@Injectable()
@StepRunner('loop')
class LoopRunner {
  log: Array<{ runId: string; step: number }> = [];

  async runStep(step: Step<{ steps: number }>) {
    this.log.push({ runId: step.runId, step: step.stepNumber });
    await new Promise((r) => setTimeout(r, 3));
    return step.stepNumber + 1 >= step.payload.steps
      ? StepOutcome.succeed(step.stepNumber)
      : StepOutcome.continue(step.payload);
  }

  stepsOf(runId: string): number {
    return this.log.filter((e) => e.runId === runId).length;
  }

  /** How many steps of `runId` ran from position `from` of the log up to the first step of `other` (or until now). */
  stepsBefore(runId: string, other: string, from: number): number {
    const first = this.log.findIndex((e) => e.runId === other);
    return this.log.slice(from, first < 0 ? undefined : first).filter((e) => e.runId === runId).length;
  }
}

/**
 * A run keeps its worker slot for step after step while nobody else waits (no claim
 * per step); once it has had 16 in a row it hands the slot back as soon as another
 * run waits, whether that run was submitted in this process or in another one.
 */
describe('a long run and the runs that wait for its slot', () => {
  const prefix = uniquePrefix('fair');
  let app: TestingModule;
  let control: TestingModule;
  let runner: LoopRunner;
  let service: WorkflowService;

  beforeAll(async () => {
    app = await startApp({
      prefix,
      providers: [LoopRunner],
      worker: { concurrency: 1, pollIntervalMs: 50, leaseMs: 5_000, shutdownTimeoutMs: 2_000 },
    });
    control = await startApp({ prefix, worker: false, options: { workflows: ['loop'] } });
    runner = app.get(LoopRunner);
    service = app.get(WorkflowService);
  });
  afterAll(async () => {
    await control?.close();
    await app?.close();
    await dropTables(prefix);
  });

  it('hands the slot over within a poll interval of another process submitting, and at once for a local submit', async () => {
    const long = await service.submit('loop', { input: { steps: 150 } });
    await waitFor(() => runner.stepsOf(long.runId) >= 20, 'the long run past its 16 steps in a row');

    // Submitted by another app instance: the worker learns of it from its probe of the
    // queue, at most one poll interval (50 ms, about 15 steps of 3 ms here) later.
    let from = runner.log.length;
    const remote = await control.get(WorkflowService).submit('loop', { input: { steps: 1 } });
    await service.waitForOutcome(remote.runId, { timeoutMs: 10_000 });
    expect(runner.stepsBefore(long.runId, remote.runId, from)).toBeLessThanOrEqual(30);

    const sinceRemote = () =>
      runner.stepsBefore(
        long.runId,
        'none yet',
        runner.log.findIndex((e) => e.runId === remote.runId),
      );
    await waitFor(() => sinceRemote() >= 20, 'the long run past its 16 steps in a row again');

    // Submitted here: the worker is told at once, so the long run yields at its next step.
    from = runner.log.length;
    const local = await service.submit('loop', { input: { steps: 1 } });
    await service.waitForOutcome(local.runId, { timeoutMs: 10_000 });
    expect(runner.stepsBefore(long.runId, local.runId, from)).toBeLessThanOrEqual(3);

    const outcome = await service.waitForOutcome(long.runId, { timeoutMs: 20_000 });
    expect(outcome).toMatchObject({ status: 'succeeded', result: 149 });
    expect(runner.stepsOf(long.runId)).toBe(150);
  });
});

/** Continues forever (a few ms per step) until `stop` is set: it never leaves its slot by itself. */
@Injectable()
@StepRunner('spin')
class SpinRunner {
  stop = false;
  steps = new Map<string, number>();

  async runStep(step: Step) {
    this.steps.set(step.runId, step.stepNumber + 1);
    await new Promise((r) => setTimeout(r, 2));
    return this.stop ? StepOutcome.succeed(step.stepNumber) : StepOutcome.continue(step.payload);
  }
}

@Injectable()
@StepRunner('other')
class OtherRunner {
  ranAt = new Map<string, number>();

  runStep(step: Step) {
    this.ranAt.set(step.runId, Date.now());
    return StepOutcome.succeed(true);
  }
}

@Injectable()
class QuickEnd {
  seen = new Map<string, { at: number; status: string }>();

  @OnTerminal('quick')
  ended(outcome: RunOutcome) {
    this.seen.set(outcome.runId, { at: Date.now(), status: outcome.status });
  }
}

/**
 * Every slot of the worker is taken by a run that continues in place forever. Work of
 * another queue this process hosts, submitted elsewhere, must still get a slot within
 * a few poll intervals: the in-place runs yield to any hosted queue with ready work.
 */
describe('runs that never leave their slots, and the other queues of the process', () => {
  const prefix = uniquePrefix('fairq');
  const pollIntervalMs = 100;
  const bound = 10 * pollIntervalMs;
  let app: TestingModule;
  let control: TestingModule;
  let spin: SpinRunner;
  let spins: string[];

  beforeAll(async () => {
    app = await startApp({
      prefix,
      providers: [SpinRunner, OtherRunner, QuickEnd],
      worker: { concurrency: 4, pollIntervalMs, leaseMs: 5_000, shutdownTimeoutMs: 2_000 },
    });
    // Submits and cancels only; its QuickEnd makes its cancels write the terminal deliveries.
    control = await startApp({
      prefix,
      worker: false,
      providers: [QuickEnd],
      options: { workflows: ['other', 'quick'] },
    });
    spin = app.get(SpinRunner);
    const submitted = await app.get(WorkflowService).submitMany(
      'spin',
      [1, 2, 3, 4].map((n) => ({ input: n })),
    );
    spins = submitted.map((r) => r.runId);
  });
  afterAll(async () => {
    if (spin) spin.stop = true;
    await control?.close();
    await app?.close();
    await dropTables(prefix);
  });

  /** Waits until every spin run has taken `more` further steps: all 4 slots are theirs, past the in-place bound. */
  async function slotsFullOfSpins(more = 20): Promise<void> {
    const base = spins.map((id) => spin.steps.get(id) ?? 0);
    await waitFor(
      () => spins.every((id, i) => (spin.steps.get(id) ?? 0) >= base[i] + more),
      'every slot busy with a spin run',
    );
  }

  it('a run of another workflow, submitted by another process, starts within 10 poll intervals (4 of 4 tries)', async () => {
    const other = app.get(OtherRunner);
    for (let i = 0; i < 4; i++) {
      await slotsFullOfSpins();
      const submittedAt = Date.now();
      const { runId } = await control.get(WorkflowService).submit('other', { input: i });
      const ranAt = await waitFor(() => other.ranAt.get(runId), `the step of run ${runId} (try ${i + 1})`, bound);
      expect(ranAt - submittedAt).toBeLessThan(bound);
    }
  });

  it('a terminal delivery written by another process reaches its @OnTerminal handler within 10 poll intervals (4 of 4 tries)', async () => {
    const ends = app.get(QuickEnd);
    const remote = control.get(WorkflowService);
    for (let i = 0; i < 4; i++) {
      await slotsFullOfSpins();
      const { runId } = await remote.submit('quick', { input: i, delayMs: 60_000 });
      const cancelledAt = Date.now();
      expect(await remote.cancel(runId)).toBe(true);
      const seen = await waitFor(() => ends.seen.get(runId), `the delivery of run ${runId} (try ${i + 1})`, bound);
      expect(seen.status).toBe('cancelled');
      expect(seen.at - cancelledAt).toBeLessThan(bound);
    }
  });
});
