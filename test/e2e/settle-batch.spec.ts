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
import { countRows } from '../utils/tables.js';
import { deferred, waitFor } from '../utils/wait.js';

type Input = { then: 'continue' | 'succeed' };

/**
 * Step 0 of every run blocks on one shared gate and ignores its signal, so all the
 * runs' settlements arrive in the same turn of the event loop and share settlement
 * transactions: continues and finishes, active and cancelling runs, in one batch.
 */
abstract class GatedRunner {
  started = new Set<string>();
  successors: string[] = [];
  /** Runs whose first step returned before this process learned of their cancel. */
  unawares = new Set<string>();
  readonly gate = deferred<void>();

  async runStep(step: Step<Input>) {
    if (step.stepNumber > 0) {
      this.successors.push(step.runId);
      return StepOutcome.succeed('second step');
    }
    this.started.add(step.runId);
    await this.gate.promise;
    if (!step.signal.aborted) this.unawares.add(step.runId);
    return step.payload.then === 'continue' ? StepOutcome.continue(step.payload) : StepOutcome.succeed('first step');
  }
}

@Injectable()
@StepRunner('plain')
class PlainRunner extends GatedRunner {}

@Injectable()
@StepRunner('noticed')
class NoticedRunner extends GatedRunner {}

@Injectable()
class Notices {
  all: RunOutcome[] = [];

  @OnTerminal('noticed')
  record(outcome: RunOutcome) {
    this.all.push(outcome);
  }
}

describe('settlements that share a transaction', () => {
  const prefix = uniquePrefix('batch');
  let app: TestingModule;
  let service: WorkflowService;
  /** Another app instance on the same tables: its cancel() reaches the worker only through the database. */
  let control: TestingModule;

  beforeAll(async () => {
    app = await startApp({
      prefix,
      providers: [PlainRunner, NoticedRunner, Notices],
      worker: { concurrency: 64, pollIntervalMs: 50, leaseMs: 10_000, shutdownTimeoutMs: 2_000 },
    });
    service = app.get(WorkflowService);
    control = await startApp({ prefix, worker: false });
  });
  afterAll(async () => {
    await control?.close();
    await app?.close();
    await dropTables(prefix);
  });

  it('apply each item exactly as alone: cancelled runs end cancelled, the others move on, handlers see each end once', async () => {
    const plain = app.get(PlainRunner);
    const noticed = app.get(NoticedRunner);
    const runs: Array<{ runId: string; workflow: 'plain' | 'noticed'; then: Input['then']; cancel: boolean }> = [];
    for (const workflow of ['plain', 'noticed'] as const) {
      for (const then of ['continue', 'succeed'] as const) {
        for (let i = 0; i < 10; i++) {
          const { runId } = await service.submit(workflow, { input: { then } });
          runs.push({ runId, workflow, then, cancel: i % 2 === 0 });
        }
      }
    }
    await waitFor(() => plain.started.size + noticed.started.size === runs.length, 'every first step running', 10_000);
    // The worker polls for cancels about once a second: released right after, most of
    // these steps return before it knows, and their settlements meet a cancelling run.
    const cancelled = await Promise.all(
      runs.filter((r) => r.cancel).map((r) => control.get(WorkflowService).cancel(r.runId)),
    );
    expect(cancelled.every(Boolean)).toBe(true);
    plain.gate.resolve();
    noticed.gate.resolve();

    for (const r of runs) {
      const outcome = await service.waitForOutcome(r.runId, { timeoutMs: 15_000 });
      expect({ runId: r.runId, status: outcome.status }).toEqual({
        runId: r.runId,
        status: r.cancel ? 'cancelled' : 'succeeded',
      });
      const second = [...plain.successors, ...noticed.successors].filter((id) => id === r.runId).length;
      expect({ runId: r.runId, secondSteps: second }).toEqual({
        runId: r.runId,
        secondSteps: !r.cancel && r.then === 'continue' ? 1 : 0,
      });
      if (!r.cancel) expect(outcome.result).toBe(r.then === 'continue' ? 'second step' : 'first step');
    }

    const unaware = runs.filter((r) => r.cancel && (plain.unawares.has(r.runId) || noticed.unawares.has(r.runId)));
    expect(unaware.length).toBeGreaterThan(0);

    const notices = app.get(Notices);
    const expected = runs.filter((r) => r.workflow === 'noticed');
    await waitFor(() => notices.all.length >= expected.length, 'a delivery for every noticed run', 10_000);
    for (const r of expected) {
      const mine = notices.all.filter((o) => o.runId === r.runId);
      expect(mine.map((o) => o.status)).toEqual([r.cancel ? 'cancelled' : 'succeeded']);
    }
    expect(notices.all.filter((o) => o.workflow !== 'noticed')).toEqual([]);
    await waitFor(async () => (await countRows(prefix)).jobs === 0, 'no job left', 10_000);
  });
});
