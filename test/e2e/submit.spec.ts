import { Injectable } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import {
  InputMismatchError,
  InvalidPayloadError,
  InvalidRunIdError,
  PayloadTooLargeError,
  ReservedHeaderError,
  type RunSpec,
  type Step,
  StepOutcome,
  StepRunner,
  UnknownWorkflowError,
  WorkflowService,
} from 'nestjs-durable-workflow';
import { startApp } from '../utils/create-test-app.js';
import { dropTables, uniquePrefix } from '../utils/db.js';
import { countRows, snapshotRows } from '../utils/tables.js';
import { deferred } from '../utils/wait.js';

/** Succeeds at once with its input. */
@Injectable()
@StepRunner('echo')
class EchoRunner {
  ranAt = new Map<string, number>();

  runStep(step: Step) {
    this.ranAt.set(step.runId, Date.now());
    return StepOutcome.succeed(step.payload);
  }
}

@Injectable()
@StepRunner('summarize')
class SummarizeRunner {
  runStep(step: Step) {
    return StepOutcome.succeed(step.payload);
  }
}

/** Records the order its runs started in; a run whose input says `hold` waits on the gate. */
@Injectable()
@StepRunner('ordered')
class OrderedRunner {
  order: string[] = [];
  holding = deferred();
  gate = deferred();

  async runStep(step: Step<{ name: string; hold?: boolean }>) {
    this.order.push(step.payload.name);
    if (step.payload.hold) {
      this.holding.resolve();
      await this.gate.promise;
    }
    return StepOutcome.succeed(step.payload.name);
  }
}

describe('submit', () => {
  const prefix = uniquePrefix('submit');
  let app: TestingModule;
  let workflows: WorkflowService;

  beforeAll(async () => {
    app = await startApp({ prefix, providers: [EchoRunner, SummarizeRunner] });
    workflows = app.get(WorkflowService);
  });
  afterAll(async () => {
    await app?.close();
    await dropTables(prefix);
  });

  /** Runs `fn`, which must throw `type`, and proves that it wrote nothing. */
  async function rejectsWithoutWriting(
    fn: () => Promise<unknown>,
    type: new (...args: any[]) => Error,
  ): Promise<Error> {
    const before = await countRows(prefix);
    const err = await fn().then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err).toBeInstanceOf(type);
    expect(await countRows(prefix)).toEqual(before);
    return err!;
  }

  it('is idempotent: the same runId and input (in any key order) return the same run, newlySubmitted false', async () => {
    const first = await workflows.submit('echo', {
      runId: 'idem-1',
      input: { topic: 'queues', opts: { depth: 2, lang: 'en' } },
    });
    expect(first).toEqual({ runId: 'idem-1', newlySubmitted: true });
    await workflows.waitForOutcome('idem-1', { timeoutMs: 10_000 });
    const before = await snapshotRows(prefix);

    const again = await workflows.submit('echo', {
      runId: 'idem-1',
      input: { opts: { lang: 'en', depth: 2 }, topic: 'queues' },
    });
    expect(again).toEqual({ runId: 'idem-1', newlySubmitted: false });
    expect(await snapshotRows(prefix)).toEqual(before);
    expect(await workflows.status('idem-1')).toMatchObject({ state: 'succeeded', result: { topic: 'queues' } });
  });

  it('rejects the same runId with a different input (InputMismatchError) and changes nothing', async () => {
    await workflows.submit('echo', { runId: 'idem-2', input: { topic: 'queues' } });
    await workflows.waitForOutcome('idem-2', { timeoutMs: 10_000 });
    const before = await snapshotRows(prefix);

    await expect(workflows.submit('echo', { runId: 'idem-2', input: { topic: 'locks' } })).rejects.toBeInstanceOf(
      InputMismatchError,
    );
    // The same id under another workflow is a mismatch too.
    await expect(workflows.submit('summarize', { runId: 'idem-2', input: { topic: 'queues' } })).rejects.toBeInstanceOf(
      InputMismatchError,
    );
    expect(await snapshotRows(prefix)).toEqual(before);
    expect(await workflows.status('idem-2')).toMatchObject({ workflow: 'echo', result: { topic: 'queues' } });
  });

  it('rejects an unknown workflow with a message that lists the known ones', async () => {
    const err = await rejectsWithoutWriting(() => workflows.submit('nope', { input: 1 }), UnknownWorkflowError);
    expect(err.message).toContain('"nope"');
    expect(err.message).toContain('"echo"');
    expect(err.message).toContain('"summarize"');
    expect(err.message).toContain("@StepRunner('nope')");
  });

  it.each([
    ['empty', ''],
    ['with a space', 'a b'],
    ['129 characters long', 'x'.repeat(129)],
    ['non-ASCII', 'é'],
  ])('rejects a run id that is %s (InvalidRunIdError) and writes nothing', async (_what, runId) => {
    await rejectsWithoutWriting(() => workflows.submit('echo', { runId, input: {} }), InvalidRunIdError);
  });

  it('accepts a run id of exactly 128 allowed characters', async () => {
    const runId = `A-z_9${'x'.repeat(123)}`;
    expect(await workflows.submit('echo', { runId, input: {} })).toEqual({ runId, newlySubmitted: true });
    expect(await workflows.waitForOutcome(runId, { timeoutMs: 10_000 })).toMatchObject({ status: 'succeeded' });
  });

  it('rejects a reserved workflow.* header (ReservedHeaderError) and writes nothing', async () => {
    const err = await rejectsWithoutWriting(
      () => workflows.submit('echo', { runId: 'hdr-1', input: {}, headers: { tenant: 'acme', 'workflow.x': '1' } }),
      ReservedHeaderError,
    );
    expect(err.message).toContain('workflow.x');
  });

  it('rejects an input over maxPayloadBytes (PayloadTooLargeError) and writes nothing', async () => {
    // startApp sets maxPayloadBytes to 1 MiB.
    await rejectsWithoutWriting(
      () => workflows.submit('echo', { runId: 'big-1', input: { blob: 'x'.repeat(1024 * 1024) } }),
      PayloadTooLargeError,
    );
  });

  it('rejects inputs that are not JSON, a BigInt or a cycle (InvalidPayloadError), and writes nothing', async () => {
    const err = await rejectsWithoutWriting(
      () => workflows.submit('echo', { runId: 'json-1', input: { tokens: 10n } }),
      InvalidPayloadError,
    );
    expect(err.message).toContain('BigInt');

    const cyclic: Record<string, unknown> = { name: 'loop' };
    cyclic.self = cyclic;
    await rejectsWithoutWriting(
      () => workflows.submit('echo', { runId: 'json-2', input: cyclic }),
      InvalidPayloadError,
    );
  });

  it('submitMany creates 50 runs in one call, and all of them complete', async () => {
    const specs: RunSpec<{ i: number }>[] = Array.from({ length: 50 }, (_, i) => ({
      runId: `many-${i}`,
      input: { i },
    }));

    const submitted = await workflows.submitMany('echo', specs);
    expect(submitted).toEqual(specs.map((s) => ({ runId: s.runId, newlySubmitted: true })));

    const outcomes = await Promise.all(specs.map((s) => workflows.waitForOutcome(s.runId!, { timeoutMs: 15_000 })));
    expect(outcomes.map((o) => o.status)).toEqual(specs.map(() => 'succeeded'));
    expect(outcomes.map((o) => o.result)).toEqual(specs.map((s) => s.input));
  });

  it('submitMany writes nothing when one spec is invalid', async () => {
    const specs = [
      { runId: 'batch-ok-1', input: {} },
      { runId: 'batch-ok-2', input: {} },
      { runId: 'batch bad', input: {} },
    ];
    await rejectsWithoutWriting(() => workflows.submitMany('echo', specs), InvalidRunIdError);
    expect(await workflows.status('batch-ok-1')).toBeNull();
    expect(await workflows.status('batch-ok-2')).toBeNull();
  });

  it('submitMany writes none of the batch when one runId exists with a different input', async () => {
    await workflows.submit('echo', { runId: 'batch-exists', input: { v: 1 } });
    await workflows.waitForOutcome('batch-exists', { timeoutMs: 10_000 });
    const before = await snapshotRows(prefix);

    await expect(
      workflows.submitMany('echo', [
        { runId: 'batch-new-1', input: {} },
        { runId: 'batch-exists', input: { v: 2 } },
        { runId: 'batch-new-2', input: {} },
      ]),
    ).rejects.toBeInstanceOf(InputMismatchError);
    expect(await snapshotRows(prefix)).toEqual(before);
    expect(await workflows.status('batch-new-1')).toBeNull();
    expect(await workflows.status('batch-new-2')).toBeNull();
  });

  it('concurrent submits of one new runId create it once: exactly one is newlySubmitted', async () => {
    for (let round = 0; round < 10; round++) {
      const runId = `race-${round}`;
      const results = await Promise.all([0, 1, 2, 3].map(() => workflows.submit('echo', { runId, input: { round } })));

      expect(results.every((r) => r.runId === runId)).toBe(true);
      expect(results.filter((r) => r.newlySubmitted)).toHaveLength(1);
      expect(await workflows.waitForOutcome(runId, { timeoutMs: 10_000 })).toMatchObject({ status: 'succeeded' });
    }
  });

  it('delayMs keeps step 0 pending until it is due, then runs it', async () => {
    const runner = app.get(EchoRunner);
    const submittedAt = Date.now();
    const { runId } = await workflows.submit('echo', { input: { late: true }, delayMs: 500 });
    const returnedAt = Date.now();

    const status = await workflows.status(runId);
    expect(status).toMatchObject({ state: 'pending', currentStep: 0 });
    expect(status!.runAt!.getTime()).toBeGreaterThanOrEqual(submittedAt + 500);
    expect(status!.runAt!.getTime()).toBeLessThanOrEqual(returnedAt + 500);

    const outcome = await workflows.waitForOutcome(runId, { timeoutMs: 10_000 });
    expect(outcome).toMatchObject({ status: 'succeeded', result: { late: true } });
    expect(runner.ranAt.get(runId)).toBeGreaterThanOrEqual(status!.runAt!.getTime());
  });
});

describe('submit priorities', () => {
  const prefix = uniquePrefix('priority');
  let app: TestingModule;

  beforeAll(async () => {
    app = await startApp({
      prefix,
      providers: [OrderedRunner],
      worker: { concurrency: 1, pollIntervalMs: 50, leaseMs: 5_000, shutdownTimeoutMs: 2_000 },
    });
  });
  afterAll(async () => {
    app?.get(OrderedRunner).gate.resolve();
    await app?.close();
    await dropTables(prefix);
  });

  it('runs lower priority numbers first', async () => {
    const workflows = app.get(WorkflowService);
    const runner = app.get(OrderedRunner);

    // Occupy the only slot, so everything below queues up behind it.
    await workflows.submit('ordered', { input: { name: 'blocker', hold: true } });
    await runner.holding.promise;

    const queued = [
      { name: 'low-1', priority: 10 },
      { name: 'low-2', priority: 10 },
      { name: 'normal', priority: undefined },
      { name: 'high-1', priority: -5 },
      { name: 'high-2', priority: -5 },
    ];
    const ids: string[] = [];
    for (const q of queued)
      ids.push((await workflows.submit('ordered', { input: { name: q.name }, priority: q.priority })).runId);
    runner.gate.resolve();

    for (const id of ids) await workflows.waitForOutcome(id, { timeoutMs: 10_000 });
    expect(runner.order).toEqual(['blocker', 'high-1', 'high-2', 'normal', 'low-1', 'low-2']);
  });
});
