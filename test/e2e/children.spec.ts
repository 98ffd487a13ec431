/**
 * Child runs: a step spawns runs and waits for all of them (holding no slot); the last
 * child's ending makes the parent's next step claimable, with every child's outcome in
 * spawn order.
 */
import { Injectable } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import {
  type ChildSpec,
  type RunOutcome,
  type Step,
  StepError,
  StepOutcome,
  StepRunner,
  WorkflowService,
  WorkflowWorker,
} from 'nestjs-durable-workflow';
import { WorkflowStorage } from '../../lib/storage/workflow.storage.js';
import { WorkflowNotifier } from '../../lib/workflow.notifier.js';
import { startApp } from '../utils/create-test-app.js';
import { dropTables, uniquePrefix } from '../utils/db.js';
import { deferred, waitFor } from '../utils/wait.js';

type Page = { page: number; mode?: 'fail' | 'hold' };

/** A document pipeline: step 0 fans out one child per page, step 1 joins their results. */
@Injectable()
@StepRunner('document', { concurrency: 1 })
class DocumentRunner {
  joined = new Map<string, readonly RunOutcome[]>();

  runStep(step: Step<{ pages: Page[]; failFast?: boolean; specs?: ChildSpec[] }>) {
    if (step.stepNumber === 0) {
      const children: ChildSpec[] =
        step.payload.specs ??
        step.payload.pages.map((p) => ({ workflow: 'page', input: p, headers: { page: String(p.page) } }));
      return StepOutcome.spawn(children, { pages: step.payload.pages.length }, { failFast: step.payload.failFast });
    }
    this.joined.set(step.runId, step.children!);
    return StepOutcome.succeed(step.children!.map((c) => c.status));
  }
}

@Injectable()
@StepRunner('page', { concurrency: 4 })
class PageRunner {
  readonly gate = deferred();
  seen = new Map<string, Readonly<Record<string, string>>>();

  async runStep(step: Step<Page>) {
    this.seen.set(step.runId, step.headers);
    if (step.payload.mode === 'fail') throw StepError.permanent(`page ${step.payload.page} is unreadable`);
    if (step.payload.mode === 'hold') {
      if (step.stepNumber === 0) return StepOutcome.continueAfter(step.payload, 60_000);
      await this.gate.promise;
    }
    return StepOutcome.succeed({ text: `page ${step.payload.page}` });
  }
}

describe('child runs', () => {
  const prefix = uniquePrefix('children');
  let app: TestingModule;
  /** A second process that hosts only the children's runner. */
  let pages: TestingModule;
  let service: WorkflowService;

  beforeAll(async () => {
    app = await startApp({ prefix, providers: [DocumentRunner], options: { workflows: ['page'] } });
    pages = await startApp({ prefix, providers: [PageRunner] });
    service = app.get(WorkflowService);
  });

  afterAll(async () => {
    pages.get(PageRunner).gate.resolve();
    await pages?.close();
    await app?.close();
    await dropTables(prefix);
  });

  it('fans out, joins with every outcome in spawn order, children in another process', async () => {
    const { runId } = await service.submit('document', {
      input: { pages: [{ page: 1 }, { page: 2 }, { page: 3 }] },
      headers: { tenant: 'acme' },
    });
    const outcome = await service.waitForOutcome(runId, { timeoutMs: 15_000 });
    expect(outcome).toMatchObject({ status: 'succeeded', result: ['succeeded', 'succeeded', 'succeeded'] });
    const joined = app.get(DocumentRunner).joined.get(runId)!;
    expect(joined.map((c) => c.result)).toEqual([{ text: 'page 1' }, { text: 'page 2' }, { text: 'page 3' }]);
    // Derived child ids, the parent linked, headers inherited and overridden.
    expect(joined.map((c) => c.runId)).toEqual([`${runId}-0-0`, `${runId}-0-1`, `${runId}-0-2`]);
    expect(await service.status(`${runId}-0-1`)).toMatchObject({ parentRunId: runId, state: 'succeeded' });
    expect(pages.get(PageRunner).seen.get(`${runId}-0-2`)).toEqual({ tenant: 'acme', page: '3' });
  });

  it('the parent waits holding no slot, and says how many children are left', async () => {
    const { runId } = await service.submit('document', { input: { pages: [{ page: 1, mode: 'hold' }, { page: 2 }] } });
    const waiting = await waitFor(async () => {
      const s = await service.status(runId);
      return s?.state === 'waiting' && s.waitingFor?.children === 1 ? s : undefined;
    }, 'the parent waiting for its one held child');
    expect(waiting.waitingFor).toEqual({ children: 1 });
    // With concurrency 1 for 'document', another document still runs meanwhile.
    const other = await service.submit('document', { input: { pages: [{ page: 9 }] } });
    expect(await service.waitForOutcome(other.runId, { timeoutMs: 15_000 })).toMatchObject({ status: 'succeeded' });
    expect(await service.cancel(runId)).toBe(true);
  });

  it('cancelling a parent cancels its children', async () => {
    const { runId } = await service.submit('document', {
      input: {
        pages: [
          { page: 1, mode: 'hold' },
          { page: 2, mode: 'hold' },
        ],
      },
    });
    await waitFor(async () => (await service.status(runId))?.state === 'waiting', 'the parent waiting');
    expect(await service.cancel(runId)).toBe(true);
    expect(await service.status(runId)).toMatchObject({ state: 'cancelled' });
    for (const child of [`${runId}-0-0`, `${runId}-0-1`]) {
      expect(await service.waitForOutcome(child, { timeoutMs: 10_000 })).toMatchObject({ status: 'cancelled' });
    }
  });

  it('failFast: the first child that fails cancels its siblings and the parent resumes', async () => {
    const { runId } = await service.submit('document', {
      input: {
        pages: [
          { page: 1, mode: 'hold' },
          { page: 2, mode: 'fail' },
          { page: 3, mode: 'hold' },
        ],
        failFast: true,
      },
    });
    const outcome = await service.waitForOutcome(runId, { timeoutMs: 15_000 });
    expect(outcome).toMatchObject({ status: 'succeeded', result: ['cancelled', 'failed', 'cancelled'] });
  });

  it('failFast: a sibling that has children of its own is cancelled with them', async () => {
    const { runId } = await service.submit('document', {
      input: {
        pages: [],
        specs: [
          // A document of its own, waiting for a page that is not due for a minute.
          { workflow: 'document', input: { pages: [{ page: 1, mode: 'hold' }] } },
          { workflow: 'page', input: { page: 2, mode: 'fail' } },
        ],
        failFast: true,
      },
    });
    const outcome = await service.waitForOutcome(runId, { timeoutMs: 15_000 });
    expect(outcome).toMatchObject({ status: 'succeeded', result: ['cancelled', 'failed'] });
    // The cancelled document's page goes with it, not a minute later.
    expect(await service.waitForOutcome(`${runId}-0-0-0-0`, { timeoutMs: 5_000 })).toMatchObject({
      status: 'cancelled',
    });
  });

  it('a spawn of an unknown workflow, of too many children, or onto a taken id fails the step permanently', async () => {
    const unknown = await service.submit('document', { input: { pages: [], specs: [{ workflow: 'nope', input: 1 }] } });
    const tooMany = await service.submit('document', {
      input: { pages: [], specs: Array.from({ length: 1001 }, (_, i) => ({ workflow: 'page', input: { page: i } })) },
    });
    const existing = await service.submit('document', { input: { pages: [{ page: 5 }] } });
    await service.waitForOutcome(existing.runId, { timeoutMs: 15_000 });
    const taken = await service.submit('document', {
      input: { pages: [], specs: [{ workflow: 'page', input: { page: 1 }, runId: existing.runId }] },
    });
    const errors: Record<string, RegExp> = {
      [unknown.runId]: /workflow "nope"/,
      [tooMany.runId]: /1001 children, over the limit of 1000/,
      [taken.runId]: /already taken/,
    };
    for (const [id, message] of Object.entries(errors)) {
      const outcome = await service.waitForOutcome(id, { timeoutMs: 15_000 });
      expect(outcome.status).toBe('failed');
      expect(outcome.error).toMatch(message);
      const dead = (await service.deadSteps({ limit: 1000 })).filter((d) => d.runId === id);
      expect(dead).toHaveLength(1);
    }
  });
});

/** Spawns a failFast pair (one fails, one is not due for a minute) at steps 0 and 1, then reports the last pair. */
@Injectable()
@StepRunner('relay')
class RelayRunner {
  runStep(step: Step) {
    if (step.stepNumber < 2) {
      const pair: ChildSpec[] = [
        { workflow: 'page', input: { page: 1, mode: 'fail' } },
        { workflow: 'page', input: { page: 2, mode: 'hold' } },
      ];
      return StepOutcome.spawn(pair, {}, { failFast: true });
    }
    return StepOutcome.succeed(step.children!.map((c) => c.status));
  }
}

/**
 * Every worker process handles tripped failFast joins (it cancels the siblings). A pass that
 * read a join before another process handled it, and gets to it only once the parent has
 * resumed and spawned again, must leave the parent's later spawn alone.
 */
describe('child runs: a tripped failFast join handled late', () => {
  const prefix = uniquePrefix('failfast');
  let app: TestingModule;

  beforeAll(async () => {
    // A poll of a minute: maintenance handles tripped joins only when this test says so.
    app = await startApp({
      prefix,
      providers: [RelayRunner, PageRunner],
      worker: { pollIntervalMs: 60_000, leaseMs: 5_000, shutdownTimeoutMs: 2_000 },
    });
  });

  afterAll(async () => {
    app.get(PageRunner).gate.resolve();
    await app?.close();
    await dropTables(prefix);
  });

  it('cancels only the children of the spawn that tripped, and keeps a later trip of the same parent', async () => {
    const service = app.get(WorkflowService);
    const storage = app.get(WorkflowStorage);
    const maintenance = (app.get(WorkflowWorker) as unknown as { maintenance: { joins(): Promise<void> } }).maintenance;
    const pass = async () => {
      await maintenance.joins();
      app.get(WorkflowNotifier).wake();
    };
    const trippedAt = (runId: string, step: number) =>
      waitFor(async () => {
        const joins = await storage.trippedJoins();
        const at = (j: (typeof joins)[number]) => (j as { stepNumber?: number }).stepNumber ?? step;
        return joins.some((j) => j.runId === runId && at(j) === step) ? joins : undefined;
      }, `the join of ${runId} tripped at step ${step}`);

    const { runId } = await service.submit('relay', { input: null });
    // The first pair's failure trips the join; this pass reads it now and gets to it late.
    const stale = await trippedAt(runId, 1);
    await pass();
    // The parent resumed and spawned its second pair, whose failure trips the join again.
    await trippedAt(runId, 2);
    expect(await service.status(`${runId}-1-1`)).toMatchObject({ state: 'pending' });

    const read = storage.trippedJoins.bind(storage);
    storage.trippedJoins = async () => ((storage.trippedJoins = read), stale);
    await pass();
    // The late pass cancelled nothing of the second pair and left its trip to be handled.
    expect(await service.status(`${runId}-1-1`)).toMatchObject({ state: 'pending' });

    await pass();
    expect(await service.waitForOutcome(runId, { timeoutMs: 10_000 })).toMatchObject({
      status: 'succeeded',
      result: ['failed', 'cancelled'],
    });
  });
});
