import { Injectable } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import { type Step, StepError, StepOutcome, StepRunner, WorkflowService } from 'nestjs-durable-workflow';
import { startApp } from '../utils/create-test-app.js';
import { dropTables, rawConnection, uniquePrefix } from '../utils/db.js';
import { countRows } from '../utils/tables.js';
import { deferred, waitFor } from '../utils/wait.js';

const DAY = 24 * 3600 * 1000;

@Injectable()
@StepRunner('keeper')
class Keeper {
  gate = deferred();
  async runStep(step: Step<{ mode: 'ok' | 'die' | 'wait' }>) {
    if (step.payload.mode === 'die') throw StepError.permanent('boom');
    if (step.payload.mode === 'wait') await this.gate.promise;
    return StepOutcome.succeed('done');
  }
}

/** Finished runs and dead letters leave after their retention window; nothing else does. */
describe('retention', () => {
  const prefix = uniquePrefix('retain');
  let app: TestingModule;
  let offset = 0;

  beforeAll(async () => {
    app = await startApp({
      prefix,
      providers: [Keeper],
      options: { clock: { now: () => Date.now() + offset }, retention: { runsMs: 7 * DAY, deadMs: 3 * DAY } },
    });
  });
  afterAll(async () => {
    app.get(Keeper).gate.resolve();
    await app?.close();
    await dropTables(prefix);
  });

  it('sweeps expired finished runs and dead letters, keeps active and recent ones', async () => {
    const service = app.get(WorkflowService);
    const [ok, died, waiting] = await service.submitMany('keeper', [
      { input: { mode: 'ok' } },
      { input: { mode: 'die' } },
      { input: { mode: 'wait' } },
    ]);
    await service.waitForOutcome(ok.runId, { timeoutMs: 10_000 });
    await service.waitForOutcome(died.runId, { timeoutMs: 10_000 });
    expect((await service.deadSteps({ workflow: 'keeper' })).map((d) => d.runId)).toEqual([died.runId]);

    // Four days on: the dead letter (3 days) is past retention, the finished runs (7 days) are not.
    offset = 4 * DAY;
    await waitFor(
      async () => (await service.deadSteps({ workflow: 'keeper' })).length === 0,
      'dead letter swept',
      20_000,
    );
    expect(await service.status(ok.runId)).not.toBeNull();
    expect(await service.status(died.runId)).not.toBeNull();

    // Eight days on: finished runs go; the run still waiting at its step stays, however old.
    offset = 8 * DAY;
    await waitFor(async () => (await service.status(ok.runId)) === null, 'finished run swept', 70_000);
    expect(await service.status(died.runId)).toBeNull();
    expect(await service.status(waiting.runId)).toMatchObject({ state: 'running' });
    expect(await countRows(prefix)).toMatchObject({ runs: 1, jobs: 1, dead: 0 });
  }, 120_000);
});

/** Step 0 waits for `go`; step 1 ends with what it received. */
@Injectable()
@StepRunner('inbox')
class InboxRunner {
  runStep(step: Step) {
    if (step.stepNumber === 0) return StepOutcome.waitForSignal('go', null);
    return StepOutcome.succeed(step.received);
  }
}

/** Step 0 spawns one member per entry; step 1 ends with the members' statuses, in spawn order. */
@Injectable()
@StepRunner('family')
class FamilyRunner {
  runStep(step: Step<Array<'ok' | 'hold'>>) {
    if (step.stepNumber === 0)
      return StepOutcome.spawn(
        step.payload.map((mode) => ({ workflow: 'member', input: mode })),
        null,
      );
    return StepOutcome.succeed(step.children!.map((c) => c.status));
  }
}

@Injectable()
@StepRunner('member')
class MemberRunner {
  gate = deferred();
  async runStep(step: Step<'ok' | 'hold'>) {
    if (step.payload === 'hold') await this.gate.promise;
    return StepOutcome.succeed(step.payload);
  }
}

/** A run's mailbox and its children leave with it; nothing a live run still needs leaves before it. */
describe('retention: mailboxes and children', () => {
  const prefix = uniquePrefix('retainfam');
  let app: TestingModule;
  let service: WorkflowService;
  let offset = 0;
  const rows = async (sql: string, params: unknown[] = []) => {
    const conn = await rawConnection();
    try {
      return (await conn.query(sql.replaceAll('{p}', prefix), params))[0] as Array<Record<string, unknown>>;
    } finally {
      await conn.end();
    }
  };
  const gone = (runId: string, what: string) =>
    waitFor(async () => (await service.status(runId)) === null, what, 70_000);

  beforeAll(async () => {
    app = await startApp({
      prefix,
      providers: [InboxRunner, FamilyRunner, MemberRunner],
      options: { clock: { now: () => Date.now() + offset }, retention: { runsMs: 7 * DAY, deadMs: 7 * DAY } },
    });
    service = app.get(WorkflowService);
  });
  afterAll(async () => {
    app.get(MemberRunner).gate.resolve();
    await app?.close();
    await dropTables(prefix);
  });

  it("takes a finished run's signals with it, read or not, and keeps a waiting run's mailbox", async () => {
    const [done, waiting] = await service.submitMany('inbox', [{ input: null }, { input: null }]);
    await service.signal(done.runId, 'note', 'never read');
    await service.signal(done.runId, 'go', 'read');
    await service.signal(waiting.runId, 'note', 'still waiting');
    expect(await service.waitForOutcome(done.runId, { timeoutMs: 10_000 })).toMatchObject({ status: 'succeeded' });
    expect(await rows('SELECT run_id FROM `{p}signals` WHERE run_id = ?', [done.runId])).toHaveLength(2);

    offset += 8 * DAY;
    await gone(done.runId, 'the finished run swept');
    expect(await rows('SELECT run_id FROM `{p}signals` WHERE run_id = ?', [done.runId])).toEqual([]);
    expect(await rows('SELECT name FROM `{p}signals` WHERE run_id = ?', [waiting.runId])).toEqual([{ name: 'note' }]);
    expect(await service.status(waiting.runId)).toMatchObject({ state: 'waiting' });
    expect(await service.cancel(waiting.runId)).toBe(true);
  }, 90_000);

  it('sweeps a finished family together, and no child before its parent, however long the join takes', async () => {
    const finished = await service.submit('family', { input: ['ok', 'ok'] });
    expect(await service.waitForOutcome(finished.runId, { timeoutMs: 10_000 })).toMatchObject({
      result: ['succeeded', 'succeeded'],
    });
    // A join that outlasts the retention window: its first member ends now, its second in eight days.
    const long = await service.submit('family', { input: ['ok', 'hold'] });
    const early = `${long.runId}-0-0`;
    await waitFor(async () => (await service.status(early))?.state === 'succeeded', 'the first member done');

    offset += 8 * DAY;
    await gone(finished.runId, 'the finished family swept');
    expect(await service.status(`${finished.runId}-0-0`)).toBeNull();
    expect(await service.status(`${finished.runId}-0-1`)).toBeNull();
    // The waiting parent still needs its first member's outcome: it stays, however old.
    expect(await service.status(long.runId)).toMatchObject({ state: 'waiting', waitingFor: { children: 1 } });
    expect(await service.status(early)).toMatchObject({ state: 'succeeded', parentRunId: long.runId });

    app.get(MemberRunner).gate.resolve();
    expect(await service.waitForOutcome(long.runId, { timeoutMs: 10_000 })).toMatchObject({
      status: 'succeeded',
      result: ['succeeded', 'succeeded'],
    });
    offset += 8 * DAY;
    await gone(long.runId, 'the long family swept');
    expect(await rows('SELECT id FROM `{p}runs`')).toEqual([]);
  }, 180_000);
});
