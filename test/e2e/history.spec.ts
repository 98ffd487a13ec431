/**
 * WorkflowService.history: one StepRecord per delivery of a step, written with its
 * settlement (or by the reaper for a lease that expired), gone with its run.
 */
import { Injectable } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import { hostname } from 'node:os';
import {
  InvalidRunIdError,
  type Step,
  StepError,
  StepOutcome,
  StepRunner,
  WorkflowService,
} from 'nestjs-durable-workflow';
import { startApp } from '../utils/create-test-app.js';
import { Prefixes, rawConnection } from '../utils/db.js';
import { createJournal, startWorker, type WorkerProcess } from '../utils/processes.js';
import { waitFor } from '../utils/wait.js';

interface Plan {
  /** Step 1 fails transiently on its first attempt. */
  flaky?: boolean;
  wait?: boolean;
  hang?: boolean;
}

@Injectable()
@StepRunner('story', { maxAttempts: 3, timeoutMs: 2_000 })
class StoryRunner {
  async runStep(step: Step<Plan>) {
    const p = step.payload;
    if (step.stepNumber === 1 && p.flaky && step.attempts === 1) throw StepError.transient('provider busy');
    if (step.stepNumber === 1 && p.wait) return StepOutcome.waitForSignal('go', p);
    if (step.stepNumber === 1 && p.hang && step.attempts === 1) {
      // Until the timeout takes it.
      await new Promise((r) => step.signal.addEventListener('abort', r));
    }
    return step.stepNumber < 2 ? StepOutcome.continue(p) : StepOutcome.succeed('done');
  }
}

const me = `${hostname()}#${process.pid}`;

describe('step history', () => {
  const prefixes = new Prefixes('history');
  const prefix = prefixes.next();
  let app: TestingModule;
  let service: WorkflowService;

  beforeAll(async () => {
    app = await startApp({ prefix, providers: [StoryRunner] });
    service = app.get(WorkflowService);
  });

  afterAll(async () => {
    await app?.close();
    await prefixes.dropAll();
  });

  const brief = (records: Awaited<ReturnType<WorkflowService['history']>>) =>
    records.map((r) => [r.stepNumber, r.attempt, r.outcome]);

  it('one record per delivery, oldest first: a retry keeps its error, the redelivery its own record', async () => {
    const { runId } = await service.submit('story', { input: { flaky: true } });
    await service.waitForOutcome(runId, { timeoutMs: 10_000 });
    const records = await service.history(runId);
    expect(brief(records)).toEqual([
      [0, 1, 'continue'],
      [1, 1, 'retry'],
      [1, 2, 'continue'],
      [2, 1, 'succeed'],
    ]);
    expect(records[1].error).toMatch(/provider busy/);
    expect(records.filter((r) => r.error !== undefined)).toHaveLength(1);
    for (const r of records) {
      expect(r.worker).toBe(me);
      expect(r.finishedAt.getTime()).toBeGreaterThanOrEqual(r.startedAt.getTime());
    }
    for (let i = 1; i < records.length; i++)
      expect(records[i].startedAt.getTime()).toBeGreaterThanOrEqual(records[i - 1].startedAt.getTime());
  });

  it('a wait, a timeout and a cancel are recorded as such', async () => {
    const waiting = await service.submit('story', { input: { wait: true } });
    await waitFor(async () => (await service.status(waiting.runId))?.state === 'waiting', 'waiting');
    await service.signal(waiting.runId, 'go', null);
    await service.waitForOutcome(waiting.runId, { timeoutMs: 10_000 });
    expect(brief(await service.history(waiting.runId))).toEqual([
      [0, 1, 'continue'],
      [1, 1, 'wait'],
      [2, 1, 'succeed'],
    ]);

    const slow = await service.submit('story', { input: { hang: true } });
    await service.waitForOutcome(slow.runId, { timeoutMs: 10_000 });
    const timedOut = await service.history(slow.runId);
    expect(brief(timedOut)).toEqual([
      [0, 1, 'continue'],
      [1, 1, 'timeout'],
      [1, 2, 'continue'],
      [2, 1, 'succeed'],
    ]);
    expect(timedOut[1].error).toMatch(/timed out/);

    const cancelled = await service.submit('story', { input: { hang: true } });
    await waitFor(async () => (await service.history(cancelled.runId)).length === 1, 'step 0 recorded');
    await waitFor(async () => (await service.status(cancelled.runId))?.state === 'running', 'step 1 running');
    await service.cancel(cancelled.runId);
    await service.waitForOutcome(cancelled.runId, { timeoutMs: 10_000 });
    expect(brief(await service.history(cancelled.runId))).toEqual([
      [0, 1, 'continue'],
      [1, 1, 'cancelled'],
    ]);
  });

  it('an unknown run has no history; an id no run can have throws InvalidRunIdError', async () => {
    expect(await service.history('never-submitted')).toEqual([]);
    await expect(service.history('not an id!')).rejects.toThrow(InvalidRunIdError);
  });

  it('history: false writes none', async () => {
    const off = prefixes.next();
    const quiet = await startApp({ prefix: off, providers: [StoryRunner], options: { history: false } });
    try {
      const svc = quiet.get(WorkflowService);
      const { runId } = await svc.submit('story', { input: {} });
      await svc.waitForOutcome(runId, { timeoutMs: 10_000 });
      expect(await svc.history(runId)).toEqual([]);
    } finally {
      await quiet.close();
    }
  });

  it('retention deletes a run’s history with the run', async () => {
    const short = prefixes.next();
    const swept = await startApp({ prefix: short, providers: [StoryRunner], options: { retention: { runsMs: 1 } } });
    try {
      const svc = swept.get(WorkflowService);
      const { runId } = await svc.submit('story', { input: {} });
      await svc.waitForOutcome(runId, { timeoutMs: 10_000 });
      await waitFor(async () => (await svc.status(runId)) === null, 'the run swept', 20_000);
      const db = await rawConnection();
      try {
        const [rows] = await db.query(`SELECT COUNT(*) AS n FROM \`${short}history\` WHERE run_id = ?`, [runId]);
        expect(Number((rows as Array<{ n: number }>)[0].n)).toBe(0);
      } finally {
        await db.end();
      }
    } finally {
      await swept.close();
    }
  });
});

describe('step history of a delivery whose worker was SIGKILLed', () => {
  const prefixes = new Prefixes('histkill');
  const workers: WorkerProcess[] = [];
  afterAll(async () => {
    for (const w of workers) await w.kill();
    await prefixes.dropAll();
  });

  it('the reaper records the cut-off delivery as lease-expired, naming its worker by lease token', async () => {
    const prefix = prefixes.next();
    const db = await rawConnection();
    await createJournal(db, prefix);
    await db.end();
    const env = { PREFIX: prefix, STEPS: '2', LEASE_MS: '1500' };
    const first = await startWorker({ ...env, HANG_STEPS: '0' });
    workers.push(first);
    const web = await startApp({ prefix, worker: false, options: { workflows: ['crashy'] } });
    try {
      const svc = web.get(WorkflowService);
      const { runId } = await svc.submit('crashy', { input: { n: 0 } });
      await first.waitForLine(new RegExp(`^started ${runId} 0 1$`));
      await first.kill('SIGKILL');
      workers.push(await startWorker(env));
      await svc.waitForOutcome(runId, { timeoutMs: 20_000 });
      const records = await svc.history(runId);
      expect(records.map((r) => [r.stepNumber, r.attempt, r.outcome])).toEqual([
        [0, 1, 'lease-expired'],
        [0, 2, 'continue'],
        [1, 1, 'succeed'],
      ]);
      expect(records[0].error).toMatch(/lease expired/);
      expect(records[0].worker).toMatch(/^lease [0-9a-f]+$/);
      expect(records[1].worker).toMatch(/#\d+$/);
    } finally {
      await web.close();
    }
  });
});
