/**
 * WorkflowService.listRuns and countRuns: newest first with a cursor that stays valid while
 * runs are added, every filter, read in index order (EXPLAIN), counts that match the
 * runs through every transition, and the same answers from a second, submit-only app.
 */
import { Injectable } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import {
  InvalidRunIdError,
  InvalidRunSpecError,
  type RunState,
  type RunStatus,
  type Step,
  StepError,
  StepOutcome,
  StepRunner,
  WorkflowService,
} from 'nestjs-durable-workflow';
import { WorkflowStorage } from '../../lib/storage/workflow.storage.js';
import { startApp } from '../utils/create-test-app.js';
import { Prefixes, rawConnection } from '../utils/db.js';
import { deferred, waitFor } from '../utils/wait.js';

type End = 'succeed' | 'fail' | 'dead' | 'wait' | 'delay' | 'hang' | 'spawn';
interface Plan {
  end: End;
  children?: number;
}

const release = deferred();
const hanging = new Set<string>();

async function behave(step: Step<Plan>) {
  const p = step.payload;
  if (step.stepNumber > 0) return StepOutcome.succeed('after');
  switch (p.end) {
    case 'succeed':
      return StepOutcome.succeed('ok');
    case 'fail':
      return StepOutcome.fail('refused');
    case 'dead':
      throw StepError.permanent('broken');
    case 'wait':
      return StepOutcome.waitForSignal('go', p);
    case 'delay':
      return StepOutcome.continueAfter(p, 3_600_000);
    case 'hang':
      hanging.add(step.runId);
      await release.promise;
      return StepOutcome.succeed('released');
    case 'spawn':
      return StepOutcome.spawn(
        Array.from({ length: p.children ?? 1 }, () => ({ workflow: 'beta', input: { end: 'wait' } })),
        p,
      );
  }
}

@Injectable()
@StepRunner('alpha', { maxAttempts: 1 })
class AlphaRunner {
  runStep = behave;
}

@Injectable()
@StepRunner('beta', { maxAttempts: 1 })
class BetaRunner {
  runStep = behave;
}

const newestFirst = (a: RunStatus, b: RunStatus) =>
  b.submittedAt.getTime() - a.submittedAt.getTime() || (a.runId < b.runId ? 1 : a.runId > b.runId ? -1 : 0);

describe('listRuns and countRuns', () => {
  const prefixes = new Prefixes('listing');
  const prefix = prefixes.next();
  let app: TestingModule;
  let web: TestingModule;
  let service: WorkflowService;
  let webService: WorkflowService;
  const runs: string[] = [];

  async function submit(workflow: string, plan: Plan, concurrencyKey?: string): Promise<string> {
    const { runId } = await service.submit(workflow, { input: plan, ...(concurrencyKey ? { concurrencyKey } : {}) });
    runs.push(runId);
    return runId;
  }

  /** Every run of the prefix as status() sees it, newest first: the truth listings are held to. */
  async function everyRun(): Promise<RunStatus[]> {
    const conn = await rawConnection();
    try {
      const [rows] = await conn.query<Array<{ id: string } & import('mysql2').RowDataPacket>>(
        `SELECT id FROM \`${prefix}runs\``,
      );
      const all = await Promise.all(rows.map((r) => service.status(r.id)));
      return (all.filter(Boolean) as RunStatus[]).sort(newestFirst);
    } finally {
      await conn.end();
    }
  }

  async function allPages(filter: Parameters<WorkflowService['listRuns']>[0], limit = 3): Promise<string[]> {
    const ids: string[] = [];
    let cursor: string | undefined;
    do {
      const page = await webService.listRuns({ ...filter, limit, cursor });
      expect(page.runs.length).toBeLessThanOrEqual(limit);
      ids.push(...page.runs.map((r) => r.runId));
      cursor = page.nextCursor;
    } while (cursor);
    return ids;
  }

  /** Every submitted run where its plan leaves it (or gone by retention). */
  const settled = async () =>
    waitFor(async () => {
      const all = await Promise.all(runs.map((id) => service.status(id)));
      return all.every(
        (r) =>
          !r || ['succeeded', 'failed', 'waiting', 'cancelled'].includes(r.state) || r.runAt || hanging.has(r.runId),
      );
    }, 'every run to reach where its plan leaves it');

  beforeAll(async () => {
    app = await startApp({ prefix, providers: [AlphaRunner, BetaRunner] });
    web = await startApp({ prefix, providers: [AlphaRunner, BetaRunner], worker: false });
    service = app.get(WorkflowService);
    webService = web.get(WorkflowService);
    for (const end of ['succeed', 'fail', 'dead', 'wait', 'delay', 'succeed', 'wait'] as End[])
      await submit('alpha', { end });
    for (const end of ['succeed', 'wait', 'delay'] as End[]) await submit('beta', { end }, 'tenant-1');
    await submit('alpha', { end: 'spawn', children: 4 });
    await submit('alpha', { end: 'hang' });
    await settled();
  });

  afterAll(async () => {
    release.resolve();
    await web?.close();
    await app?.close();
    await prefixes.dropAll();
  });

  it('pages newest first, ties by run id, and a cursor stays valid while runs are added', async () => {
    const before = (await everyRun()).map((r) => r.runId);
    const first = await webService.listRuns({ limit: 4 });
    expect(first.runs.map((r) => r.runId)).toEqual(before.slice(0, 4));
    expect(first.nextCursor).toEqual(expect.any(String));
    // New runs come before the cursor: later pages neither repeat nor skip a run.
    const added = [await submit('alpha', { end: 'succeed' }), await submit('beta', { end: 'succeed' })];
    const rest: string[] = [];
    let cursor = first.nextCursor;
    while (cursor) {
      const page = await webService.listRuns({ limit: 4, cursor });
      rest.push(...page.runs.map((r) => r.runId));
      cursor = page.nextCursor;
    }
    expect([...first.runs.map((r) => r.runId), ...rest]).toEqual(before);
    expect(rest).not.toEqual(expect.arrayContaining([added[0]]));
    await settled();
    const after = await webService.listRuns({ limit: 500 });
    expect(after.runs.map((r) => r.runId)).toEqual((await everyRun()).map((r) => r.runId));
    expect(after.nextCursor).toBeUndefined();
    expect(
      after.runs
        .slice(0, 2)
        .map((r) => r.runId)
        .sort(),
    ).toEqual([...added].sort());
  });

  const filters: Array<[string, Parameters<WorkflowService['listRuns']>[0], (r: RunStatus) => boolean]> = [
    ['one state', { state: 'waiting' }, (r) => r.state === 'waiting'],
    ['running', { state: 'running' }, (r) => r.state === 'running'],
    [
      'running in a workflow',
      { workflow: 'alpha', state: 'running' },
      (r) => r.workflow === 'alpha' && r.state === 'running',
    ],
    ['running or waiting', { state: ['running', 'waiting'] }, (r) => r.state === 'running' || r.state === 'waiting'],
    ['pending (a delayed step)', { state: 'pending' }, (r) => r.state === 'pending'],
    ['several states', { state: ['failed', 'succeeded'] }, (r) => r.state === 'failed' || r.state === 'succeeded'],
    [
      'live and finished together',
      { state: ['waiting', 'failed'] },
      (r) => r.state === 'waiting' || r.state === 'failed',
    ],
    ['a workflow', { workflow: 'beta' }, (r) => r.workflow === 'beta'],
    [
      'a workflow in a state',
      { workflow: 'alpha', state: ['waiting', 'pending'] },
      (r) => r.workflow === 'alpha' && (r.state === 'waiting' || r.state === 'pending'),
    ],
    ['a concurrency key', { concurrencyKey: 'tenant-1' }, (r) => r.concurrencyKey === 'tenant-1'],
    [
      'a key in a state',
      { concurrencyKey: 'tenant-1', state: 'pending' },
      (r) => r.concurrencyKey === 'tenant-1' && r.state === 'pending',
    ],
    ['an unknown workflow', { workflow: 'nobody' }, () => false],
  ];
  it.each(filters)('filters by %s, across pages', async (_name, filter, keep) => {
    const expected = (await everyRun()).filter(keep).map((r) => r.runId);
    expect(await allPages(filter)).toEqual(expected);
    if (filter?.workflow !== 'nobody') expect(expected.length).toBeGreaterThan(0);
  });

  it("lists a parent's children", async () => {
    const all = await everyRun();
    const parent = all.find((r) => r.workflow === 'alpha' && r.state === 'waiting' && r.waitingFor?.children)!;
    expect(parent).toBeDefined();
    const children = all.filter((r) => r.parentRunId === parent.runId).map((r) => r.runId);
    expect(children).toHaveLength(4);
    expect(await allPages({ parentRunId: parent.runId })).toEqual(children);
    expect(await allPages({ parentRunId: parent.runId, state: 'waiting', workflow: 'beta' })).toEqual(children);
    expect((await webService.listRuns({ parentRunId: 'no-such-parent' })).runs).toEqual([]);
  });

  it("finds a run's dead letters by run id", async () => {
    const all = await webService.deadSteps({ workflow: 'alpha' });
    expect(all.length).toBeGreaterThan(0);
    const [one] = all;
    expect(await webService.deadSteps({ runId: one.runId })).toEqual(all.filter((d) => d.runId === one.runId));
    const other = (await everyRun()).find((r) => r.state === 'succeeded')!;
    expect(await webService.deadSteps({ runId: other.runId })).toEqual([]);
    await expect(webService.deadSteps({ runId: 'bad id!' })).rejects.toThrow(InvalidRunIdError);
  });

  /** What the truth says countRuns should say. */
  async function expectedCounts() {
    const byWorkflow = new Map<string, Record<string, number>>();
    for (const r of await everyRun()) {
      const c = byWorkflow.get(r.workflow) ?? {};
      c[r.state] = (c[r.state] ?? 0) + 1;
      byWorkflow.set(r.workflow, c);
    }
    return byWorkflow;
  }

  async function expectCountsMatch(s: WorkflowService) {
    const truth = await expectedCounts();
    const counts = await s.countRuns();
    for (const workflow of ['alpha', 'beta']) {
      const c = counts.find((x) => x.workflow === workflow)!;
      const want = truth.get(workflow) ?? {};
      const states: RunState[] = ['pending', 'running', 'waiting', 'cancelling', 'succeeded', 'failed', 'cancelled'];
      expect(Object.fromEntries(states.map((s) => [s, c.states[s]]))).toEqual(
        Object.fromEntries(states.map((s) => [s, want[s] ?? 0])),
      );
      expect(c.total).toBe(Object.values(want).reduce((a, b) => a + b, 0));
    }
  }

  it('counts runs per workflow and state through cancel, retryDead, folding and retention, in both apps', async () => {
    await settled();
    await expectCountsMatch(service);
    await expectCountsMatch(webService);

    const waiting = (await webService.listRuns({ workflow: 'alpha', state: 'waiting' })).runs.find(
      (r) => !r.waitingFor?.children,
    )!;
    expect(await webService.cancel(waiting.runId)).toBe(true);
    await expectCountsMatch(webService);

    const [dead] = await webService.deadSteps({ workflow: 'alpha' });
    expect(await webService.retryDead(dead.jobId)).toBe(true);
    await waitFor(async () => (await service.status(dead.runId))?.state === 'failed', 'the retried step to die again');
    await expectCountsMatch(webService);

    const storage = app.get(WorkflowStorage);
    const conn = await rawConnection();
    try {
      const rowsOf = async () =>
        Number(((await conn.query(`SELECT COUNT(*) AS n FROM \`${prefix}counts\``))[0] as Array<{ n: number }>)[0].n);
      await storage.foldCounts();
      const groups = Number(
        (
          (await conn.query(`SELECT COUNT(DISTINCT workflow, state) AS n FROM \`${prefix}counts\``))[0] as Array<{
            n: number;
          }>
        )[0].n,
      );
      expect(await rowsOf()).toBe(groups);
      await expectCountsMatch(webService);

      // Retention takes every finished run, and its share of the counts.
      const removed = await storage.sweepRetention(Date.now() + 60_000, 0);
      expect(removed?.runs).toBeGreaterThan(0);
      await expectCountsMatch(webService);
      const alpha = (await webService.countRuns()).find((c) => c.workflow === 'alpha')!;
      expect(alpha.states.succeeded + alpha.states.failed + alpha.states.cancelled).toBe(0);
      expect(alpha.states.waiting).toBeGreaterThan(0);
    } finally {
      await conn.end();
    }
  });

  it('reads every filter shape from an index, in index order (EXPLAIN: no filesort)', async () => {
    const storage = app.get(WorkflowStorage);
    const ctx = await storage.ready();
    const seen: Array<[string, unknown[]]> = [];
    const query = ctx.client.query.bind(ctx.client);
    ctx.client.query = (async (sql: string, params?: unknown[]) => {
      // Listing statements only (tables aliased r and j): the worker's own polls read these indexes too.
      if (/AS [rj] FORCE INDEX \(`ix_(list|state|claim)/.test(sql)) seen.push([sql, params ?? []]);
      return query(sql, params);
    }) as typeof ctx.client.query;
    const parent = (await service.listRuns({ state: 'waiting' })).runs.find((r) => r.waitingFor?.children)!;
    // The table each statement starts from, and the index it reads it by.
    const shapes: Array<[Parameters<WorkflowService['listRuns']>[0], string[]]> = [
      [{}, ['r:ix_list']],
      [{ state: ['waiting', 'failed'] }, ['r:ix_list']],
      [{ state: 'running' }, ['j:ix_state']],
      [{ state: ['running', 'failed'] }, ['j:ix_state', 'r:ix_list']],
      [{ workflow: 'alpha', state: 'running' }, ['j:ix_claim']],
      [{ workflow: 'alpha' }, ['r:ix_list_workflow']],
      [{ workflow: 'alpha', state: 'succeeded' }, ['r:ix_list_workflow']],
      [{ concurrencyKey: 'tenant-1' }, ['r:ix_list_key']],
      [{ parentRunId: parent.runId }, ['r:ix_list_parent']],
    ];
    const conn = await rawConnection();
    try {
      for (const [filter, drivers] of shapes) {
        for (const cursor of [undefined, (await service.listRuns({ ...filter, limit: 1 })).nextCursor]) {
          seen.length = 0;
          await service.listRuns({ ...filter, limit: 2, ...(cursor ? { cursor } : {}) });
          const used = new Set<string>();
          for (const [sql, params] of seen) {
            const [plan] = (await conn.query(`EXPLAIN ${sql}`, params)) as unknown as [
              Array<{ table: string; key: string | null; Extra: string | null }>,
            ];
            used.add(`${plan[0].table}:${plan[0].key}`);
            for (const p of plan)
              expect([JSON.stringify(filter), p.Extra ?? '']).not.toEqual([
                JSON.stringify(filter),
                expect.stringMatching(/filesort|temporary/i),
              ]);
          }
          expect([JSON.stringify(filter), [...used].sort()]).toEqual([JSON.stringify(filter), [...drivers].sort()]);
        }
      }
    } finally {
      ctx.client.query = query;
      await conn.end();
    }
  });

  it('folds from two processes at once, while runs move, without counting a row twice', async () => {
    let stop = false;
    let folded = 0;
    const folds = [app, web].map(async (a) => {
      const storage = a.get(WorkflowStorage);
      while (!stop) folded += await storage.foldCounts(10);
    });
    await Promise.all(Array.from({ length: 40 }, (_, i) => submit(i % 2 ? 'alpha' : 'beta', { end: 'succeed' })));
    await settled();
    stop = true;
    await Promise.all(folds);
    expect(folded).toBeGreaterThan(0);
    await expectCountsMatch(webService);
  });

  it('refuses bad filters with named errors', async () => {
    await expect(webService.listRuns({ limit: 0 })).rejects.toThrow(InvalidRunSpecError);
    await expect(webService.listRuns({ limit: 501 })).rejects.toThrow(/at most|1 to 500/);
    await expect(webService.listRuns({ state: 'asleep' as RunState })).rejects.toThrow(InvalidRunSpecError);
    await expect(webService.listRuns({ state: [] })).rejects.toThrow(InvalidRunSpecError);
    await expect(webService.listRuns({ cursor: 'not-a-cursor' })).rejects.toThrow(/not one that listRuns returned/);
    await expect(webService.listRuns({ concurrencyKey: '' })).rejects.toThrow(InvalidRunSpecError);
    await expect(webService.listRuns({ parentRunId: 'bad id!' })).rejects.toThrow(InvalidRunIdError);
  });
});
