/**
 * Cancelling a parent cancels its children, and theirs, even when the process that
 * cancels dies on the way down: the parent's cancel leaves a durable mark in its own
 * transaction, and any worker process's maintenance finishes the walk from the marks left.
 */
import { Injectable } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import type { Connection } from 'mysql2/promise';
import { type Step, StepOutcome, StepRunner, WorkflowService } from 'nestjs-durable-workflow';
import { CASCADE_LEASE_MS } from '../../lib/storage/cancel.js';
import { JobState } from '../../lib/storage/storage.types.js';
import { WorkflowStorage } from '../../lib/storage/workflow.storage.js';
import { startApp } from '../utils/create-test-app.js';
import { dropTables, rawConnection, uniquePrefix } from '../utils/db.js';
import { startWorker } from '../utils/processes.js';
import { waitFor } from '../utils/wait.js';

type Tree = { depth: number; fanout: number };

/** A tree of runs: each inner run spawns `fanout` children; the leaves wait for a signal that never comes. */
@Injectable()
@StepRunner('tree', { concurrency: 16 })
class TreeRunner {
  runStep(step: Step<Tree>) {
    const { depth, fanout } = step.payload;
    if (step.stepNumber > 0) return StepOutcome.succeed(null);
    if (depth === 0) return StepOutcome.waitForSignal('never', step.payload);
    const children = Array.from({ length: fanout }, () => ({ workflow: 'tree', input: { depth: depth - 1, fanout } }));
    return StepOutcome.spawn(children, step.payload);
  }
}

/** A parent of short-stepping children, for cancels that race their settlements. */
@Injectable()
@StepRunner('brood', { concurrency: 8 })
class BroodRunner {
  runStep(step: Step<{ steps: number[] }>) {
    if (step.stepNumber > 0) return StepOutcome.succeed(null);
    return StepOutcome.spawn(
      step.payload.steps.map((steps) => ({ workflow: 'spin', input: { steps } })),
      step.payload,
    );
  }
}

@Injectable()
@StepRunner('spin', { concurrency: 16 })
class SpinRunner {
  async runStep(step: Step<{ steps: number }>) {
    await new Promise((r) => setTimeout(r, Math.random() * 3));
    return step.stepNumber + 1 < step.payload.steps
      ? StepOutcome.continue(step.payload)
      : StepOutcome.succeed(step.stepNumber);
  }
}

const treeSize = ({ depth, fanout }: Tree) => {
  let n = 1;
  for (let level = 1, width = 1; level <= depth; level++) n += width *= fanout;
  return n;
};

describe('cancel cascade, crash-durable', () => {
  const prefix = uniquePrefix('cascade');
  /** Hosts the runners and runs maintenance: the process that finishes cascades others left. */
  let worker: TestingModule;
  /** A web process (no worker, no maintenance): cancels from outside. */
  let web: TestingModule;
  let db: Connection;

  beforeAll(async () => {
    worker = await startApp({ prefix, providers: [TreeRunner, BroodRunner, SpinRunner] });
    web = await startApp({ prefix, worker: false, options: { workflows: ['tree', 'brood', 'spin'] } });
    db = await rawConnection();
  });

  afterAll(async () => {
    await db?.end();
    await web?.close();
    await worker?.close();
    await dropTables(prefix);
  });

  /** Runs of the tree under `root` (child ids extend their parent's) by state. */
  const states = async (root: string): Promise<Record<string, number>> => {
    const [rows] = await db.query(
      `SELECT r.\`state\`, j.\`state\` AS job, COUNT(*) AS n FROM \`${prefix}runs\` r
        LEFT JOIN \`${prefix}jobs\` j ON j.\`id\` = r.\`current_job_id\` WHERE r.\`id\` = ? OR r.\`id\` LIKE ? GROUP BY 1, 2`,
      [root, `${root}-%`],
    );
    const out: Record<string, number> = {};
    for (const r of rows as Array<{ state: string; job: number | null; n: number }>) {
      const key = r.state === 'active' && Number(r.job) === JobState.Waiting ? 'waiting' : r.state;
      out[key] = (out[key] ?? 0) + Number(r.n);
    }
    return out;
  };
  const marks = async (): Promise<number> => {
    const [rows] = await db.query(`SELECT COUNT(*) AS n FROM \`${prefix}jobs\` WHERE \`state\` = ?`, [
      JobState.Cascade,
    ]);
    return Number((rows as Array<{ n: number }>)[0].n);
  };
  const grow = async (tree: Tree): Promise<string> => {
    const { runId } = await web.get(WorkflowService).submit('tree', { input: tree });
    const size = treeSize(tree);
    await waitFor(async () => (await states(runId)).waiting === size, `all ${size} runs of the tree waiting`, 60_000);
    return runId;
  };

  it('a cancel cut off right after its commit: another process cancels the whole tree, three levels down', async () => {
    const tree = { depth: 3, fanout: 3 };
    const root = await grow(tree);
    // What a canceller that died right after committing leaves: the root cancelled, the mark, nothing below touched.
    expect(await web.get(WorkflowStorage).cancelRun(root)).toBe('cancelled');
    expect(await states(root)).toEqual({ cancelled: 1, waiting: treeSize(tree) - 1 });
    expect(await marks()).toBe(1);

    const started = Date.now();
    await waitFor(
      async () => (await states(root)).cancelled === treeSize(tree),
      'every run of the tree cancelled by the worker process',
      CASCADE_LEASE_MS + 10_000,
    );
    // Not before the lease of the canceller's mark ran out: a live canceller is not raced.
    expect(Date.now() - started).toBeGreaterThanOrEqual(CASCADE_LEASE_MS - 1_000);
    // A mark goes in its own statement after the last cancel below it.
    await waitFor(async () => (await marks()) === 0, 'every cascade mark removed', 10_000);
    expect(await web.get(WorkflowService).status(`${root}-0-2-0-1-0-0`)).toMatchObject({ state: 'cancelled' });
  });

  it('a canceller SIGKILLed halfway down a tree of 1,111 runs: the rest is cancelled by another process', async () => {
    const tree = { depth: 3, fanout: 10 };
    const size = treeSize(tree);
    const root = await grow(tree);
    const canceller = await startWorker({ PREFIX: prefix, CANCEL_RUN: root }, 'cancel-process');
    // Killed once its walk is under way: some runs cancelled, most not yet.
    let atKill: Record<string, number>;
    try {
      atKill = await waitFor(
        async () => {
          const s = await states(root);
          return (s.cancelled ?? 0) >= 40 ? s : undefined;
        },
        'the canceller part way down the tree',
        30_000,
        5,
      );
    } finally {
      await canceller.kill('SIGKILL');
    }
    // Else the walk was over before the kill and this test proves nothing: make the tree bigger.
    expect({ afterKill: await states(root), marks: await marks(), lines: canceller.lines }).toMatchObject({
      afterKill: { waiting: expect.any(Number) },
      marks: expect.any(Number),
      lines: ['ready', 'cancelling'],
    });
    expect(await marks()).toBeGreaterThan(0);

    await waitFor(
      async () => (await states(root)).cancelled === size,
      `all ${size} runs cancelled (at the kill: ${JSON.stringify(atKill)})`,
      CASCADE_LEASE_MS + 30_000,
    );
    await waitFor(async () => (await marks()) === 0, 'every cascade mark removed', 10_000);
  });

  it('children settling while their parents are cancelled: no deadlock, none left live', async () => {
    const service = web.get(WorkflowService);
    // Children of 3 to 60 steps: some end as their parent is cancelled, some are mid-step, some between steps.
    const parents = await Promise.all(
      Array.from({ length: 12 }, async (_, i) => {
        const steps = Array.from({ length: 5 }, (_, k) => 3 + ((i * 7 + k * 13) % 58));
        return (await service.submit('brood', { input: { steps }, runId: `brood${i}z` })).runId;
      }),
    );
    await waitFor(async () => {
      for (const p of parents) if ((await service.status(p))?.state !== 'waiting') return false;
      return true;
    }, 'every parent waiting on its children');
    await new Promise((r) => setTimeout(r, 100));
    // Every cancel resolves (a deadlock would reject one), in parallel with the children's settlements.
    expect(await Promise.all(parents.map((p) => service.cancel(p)))).toEqual(parents.map(() => true));
    for (const p of parents) {
      for (let k = 0; k < 5; k++) {
        const outcome = await service.waitForOutcome(`${p}-0-${k}`, { timeoutMs: 15_000 });
        expect(['cancelled', 'succeeded']).toContain(outcome.status);
      }
    }
    const all = await Promise.all(parents.map((p) => states(p)));
    expect(all.filter((s) => s.active || s.waiting || s.cancelling)).toEqual([]);
    expect(all.reduce((n, s) => n + (s.cancelled ?? 0), 0)).toBeGreaterThan(12);
    expect(await marks()).toBe(0);
  });
});
