/**
 * Cron schedules on real apps and a real database, with a ManualClock: a tick fires when
 * the clock reaches it, so nothing here waits for a minute to pass.
 */
import { Injectable } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import {
  InvalidScheduleError,
  type ScheduleSpec,
  type Step,
  StepOutcome,
  StepRunner,
  WorkflowError,
  WorkflowModule,
  WorkflowService,
} from 'nestjs-durable-workflow';
import { drainWorkflows, ManualClock } from 'nestjs-durable-workflow/testing';
import { Test } from '@nestjs/testing';
import { startApp, startupError, testOptions } from '../utils/create-test-app.js';
import { dropTables, rawConnection, uniquePrefix } from '../utils/db.js';
import { deferred, waitFor } from '../utils/wait.js';

const at = (iso: string) => Date.parse(iso);

@Injectable()
@StepRunner('echo')
class Echo {
  runStep(step: Step) {
    return StepOutcome.succeed({ input: step.payload, headers: step.headers });
  }
}

/** Holds every step until the test opens the gate: a run that is still running when the next tick comes. */
@Injectable()
@StepRunner('gated')
class Gated {
  gate = deferred();
  started: string[] = [];
  async runStep(step: Step) {
    this.started.push(step.runId);
    await this.gate.promise;
    return StepOutcome.succeed(null);
  }
}

/** The runs a schedule started, oldest tick first, straight from the table. */
async function runsOf(prefix: string, scheduleId: string): Promise<string[]> {
  const conn = await rawConnection();
  try {
    const [rows] = await conn.query(`SELECT \`id\` FROM \`${prefix}runs\` WHERE \`schedule_id\` = ? ORDER BY \`id\``, [
      scheduleId,
    ]);
    return (rows as Array<{ id: string }>).map((r) => r.id).sort((a, b) => tickOf(a) - tickOf(b));
  } finally {
    await conn.end();
  }
}

const tickOf = (runId: string) => Number(runId.slice(runId.lastIndexOf('-') + 1));

async function storedSchedules(prefix: string): Promise<number> {
  const conn = await rawConnection();
  try {
    const [rows] = await conn.query(`SELECT COUNT(*) AS n FROM \`${prefix}schedules\``);
    return Number((rows as Array<{ n: number }>)[0].n);
  } catch (err) {
    if ((err as { errno?: number }).errno === 1146) return 0; // no table: nothing written either
    throw err;
  } finally {
    await conn.end();
  }
}

describe('schedules declared in forRoot, two processes on one database', () => {
  const prefix = uniquePrefix('sched-decl');
  const clock = new ManualClock(at('2026-03-02T12:00:30Z'));
  const declared: ScheduleSpec[] = [
    { id: 'every-minute', workflow: 'echo', cron: '* * * * *', input: { n: 1 }, headers: { tenant: 'acme' } },
    { id: 'every-two', workflow: 'echo', cron: '*/2 * * * *' },
    { id: 'every-three', workflow: 'echo', cron: '*/3 * * * *', overlap: 'allow' },
  ];
  let a: TestingModule;
  let b: TestingModule;

  beforeAll(async () => {
    // Both upsert the same declared schedules at startup, at once.
    [a, b] = await Promise.all(
      [0, 1].map(() => startApp({ prefix, providers: [Echo], options: { clock, schedules: declared } })),
    );
  });

  afterAll(async () => {
    await Promise.all([a?.close(), b?.close()]);
    await dropTables(prefix);
  });

  const drainBoth = () => Promise.all([drainWorkflows(a), drainWorkflows(b)]);

  it('fires nothing before the first tick after creation, then each tick once with the derived run id', async () => {
    const service = a.get(WorkflowService);
    await drainBoth();
    expect(await runsOf(prefix, 'every-minute')).toEqual([]);
    const [minute] = (await service.schedules()).filter((s) => s.id === 'every-minute');
    // The defaults it applied are shown.
    expect(minute).toEqual({
      ...declared[0],
      timeZone: 'UTC',
      overlap: 'skip',
      paused: false,
      nextRunAt: new Date('2026-03-02T12:01:00Z'),
    });

    const tick = at('2026-03-02T12:01:00Z');
    clock.set(tick);
    await drainBoth();
    const runId = `every-minute-${tick}`;
    expect(await runsOf(prefix, 'every-minute')).toEqual([runId]);
    expect(await service.status(runId)).toMatchObject({
      state: 'succeeded',
      scheduleId: 'every-minute',
      headers: { tenant: 'acme' },
      result: { input: { n: 1 }, headers: { tenant: 'acme' } },
    });
    const after = (await service.schedules()).find((s) => s.id === 'every-minute')!;
    expect(after).toMatchObject({ lastRunId: runId, nextRunAt: new Date('2026-03-02T12:02:00Z') });

    // The same instant again (another clock event) fires nothing more.
    clock.advance(0);
    await drainBoth();
    expect(await runsOf(prefix, 'every-minute')).toEqual([runId]);
  });

  it('two instances with the same declared schedules start each tick exactly once', async () => {
    // From 12:01 to 12:12, one minute at a time: 11 ticks of every-minute, 6 of */2, 4 of */3.
    for (let m = 2; m <= 12; m++) {
      clock.set(at(`2026-03-02T12:${String(m).padStart(2, '0')}:00Z`));
      await drainBoth();
    }
    const minutes = await runsOf(prefix, 'every-minute');
    expect(minutes).toHaveLength(12); // the 12:01 tick of the first test, plus 11
    expect(new Set(minutes.map(tickOf)).size).toBe(12);
    expect(await runsOf(prefix, 'every-two')).toEqual(
      [2, 4, 6, 8, 10, 12].map((m) => `every-two-${at(`2026-03-02T12:${String(m).padStart(2, '0')}:00Z`)}`),
    );
    expect(await runsOf(prefix, 'every-three')).toEqual(
      [3, 6, 9, 12].map((m) => `every-three-${at(`2026-03-02T12:${String(m).padStart(2, '0')}:00Z`)}`),
    );
  });

  it('a restart with the same declarations keeps the next tick; a changed cron moves it', async () => {
    const before = (await a.get(WorkflowService).schedules()).find((s) => s.id === 'every-two')!;
    const c = await startApp({
      prefix,
      providers: [Echo],
      worker: false,
      options: { clock, schedules: [declared[0], { ...declared[1], cron: '*/5 * * * *' }] },
    });
    try {
      const now = await c.get(WorkflowService).schedules();
      expect(now.find((s) => s.id === 'every-minute')!.nextRunAt).toEqual(new Date('2026-03-02T12:13:00Z'));
      expect(before.nextRunAt).toEqual(new Date('2026-03-02T12:14:00Z'));
      expect(now.find((s) => s.id === 'every-two')).toMatchObject({
        cron: '*/5 * * * *',
        nextRunAt: new Date('2026-03-02T12:15:00Z'),
      });
      // Not declared by this process, and not deleted by its startup.
      expect(now.map((s) => s.id)).toContain('every-three');
    } finally {
      await c.close();
    }
  });
});

describe('schedules at runtime', () => {
  const prefix = uniquePrefix('sched-rt');
  const clock = new ManualClock(at('2026-03-02T12:00:30Z'));
  let app: TestingModule;
  let service: WorkflowService;

  beforeAll(async () => {
    app = await startApp({ prefix, providers: [Echo, Gated], options: { clock } });
    service = app.get(WorkflowService);
  });

  afterAll(async () => {
    app.get(Gated).gate.resolve();
    await app?.close();
    await dropTables(prefix);
  });

  const info = async (id: string) => (await service.schedules()).find((s) => s.id === id);

  it("overlap 'skip' drops a tick while the previous run is still running; 'allow' starts it", async () => {
    clock.set(at('2026-03-03T08:00:30Z'));
    await service.schedule({ id: 'skip', workflow: 'gated', cron: '* * * * *' });
    await service.schedule({ id: 'allow', workflow: 'gated', cron: '* * * * *', overlap: 'allow' });
    const t1 = at('2026-03-03T08:01:00Z');
    const t2 = at('2026-03-03T08:02:00Z');
    clock.set(t1);
    await waitFor(
      async () =>
        (await service.status(`skip-${t1}`))?.state === 'running' &&
        (await service.status(`allow-${t1}`))?.state === 'running',
      'both first runs running',
    );
    clock.set(t2);
    // The tick at t2 has been handled once both schedules point past it.
    await waitFor(
      async () => (await service.schedules()).every((s) => s.nextRunAt?.getTime() === at('2026-03-03T08:03:00Z')),
      'the t2 tick handled',
    );
    expect(await runsOf(prefix, 'skip')).toEqual([`skip-${t1}`]);
    expect(await runsOf(prefix, 'allow')).toEqual([`allow-${t1}`, `allow-${t2}`]);
    expect((await info('skip'))!.lastRunId).toBe(`skip-${t1}`);

    // Dropped, not deferred: once the run ends, the next tick fires, and t2 never does.
    app.get(Gated).gate.resolve();
    await drainWorkflows(app);
    const t3 = at('2026-03-03T08:03:00Z');
    clock.set(t3);
    await drainWorkflows(app);
    expect(await runsOf(prefix, 'skip')).toEqual([`skip-${t1}`, `skip-${t3}`]);
    expect(await runsOf(prefix, 'allow')).toEqual([`allow-${t1}`, `allow-${t2}`, `allow-${t3}`]);
    expect(await service.unschedule('skip')).toBe(true);
    expect(await service.unschedule('allow')).toBe(true);
  });

  it('a paused schedule has no next tick and fires nothing; resumed, it fires from the next tick on', async () => {
    clock.set(at('2026-03-04T08:00:30Z'));
    await service.schedule({ id: 'paused', workflow: 'echo', cron: '* * * * *', paused: true });
    expect(await info('paused')).toMatchObject({ paused: true, nextRunAt: null });
    clock.set(at('2026-03-04T08:05:00Z'));
    await drainWorkflows(app);
    expect(await runsOf(prefix, 'paused')).toEqual([]);

    await service.schedule({ id: 'paused', workflow: 'echo', cron: '* * * * *' });
    expect(await info('paused')).toMatchObject({ paused: false, nextRunAt: new Date('2026-03-04T08:06:00Z') });
    clock.set(at('2026-03-04T08:06:00Z'));
    await drainWorkflows(app);
    expect(await runsOf(prefix, 'paused')).toEqual([`paused-${at('2026-03-04T08:06:00Z')}`]);
    await service.unschedule('paused');
  });

  it('unschedule removes it: nothing fires, and a second unschedule is false', async () => {
    clock.set(at('2026-03-05T08:00:30Z'));
    await service.schedule({ id: 'gone', workflow: 'echo', cron: '* * * * *' });
    expect(await info('gone')).toBeDefined();
    expect(await service.unschedule('gone')).toBe(true);
    expect(await info('gone')).toBeUndefined();
    clock.set(at('2026-03-05T08:03:00Z'));
    await drainWorkflows(app);
    expect(await runsOf(prefix, 'gone')).toEqual([]);
    expect(await service.unschedule('gone')).toBe(false);
    expect(await service.unschedule('no such id!')).toBe(false);
  });

  it('ticks skipped by a clock jump of 10 ticks are not replayed: the latest fires once, late', async () => {
    clock.set(at('2026-03-06T08:00:30Z'));
    await service.schedule({ id: 'jump', workflow: 'echo', cron: '* * * * *' });
    // From 08:00:30 to 08:10:40: ticks 08:01 ... 08:10 all passed.
    clock.set(at('2026-03-06T08:10:40Z'));
    await drainWorkflows(app);
    expect(await runsOf(prefix, 'jump')).toEqual([`jump-${at('2026-03-06T08:10:00Z')}`]);
    expect(await info('jump')).toMatchObject({ nextRunAt: new Date('2026-03-06T08:11:00Z') });
    await service.unschedule('jump');
  });

  it('six fields: seconds first', async () => {
    clock.set(at('2026-03-07T08:00:05Z'));
    await service.schedule({ id: 'seconds', workflow: 'echo', cron: '*/15 * * * * *' });
    expect(await info('seconds')).toMatchObject({ nextRunAt: new Date('2026-03-07T08:00:15Z') });
    for (const s of ['15', '30', '45']) {
      clock.set(at(`2026-03-07T08:00:${s}Z`));
      await drainWorkflows(app);
    }
    expect(await runsOf(prefix, 'seconds')).toEqual(
      ['15', '30', '45'].map((s) => `seconds-${at(`2026-03-07T08:00:${s}Z`)}`),
    );
    await service.unschedule('seconds');
  });

  it("timeZone 'Europe/Berlin' across the spring DST change: 02:30 does not exist on 2026-03-29, it fires at 03:00 CEST", async () => {
    // croner's documented rule: a fixed-time tick in a DST gap runs at the first valid time after the gap.
    clock.set(at('2026-03-27T12:00:00Z'));
    await service.schedule({ id: 'berlin', workflow: 'echo', cron: '30 2 * * *', timeZone: 'Europe/Berlin' });
    expect(await info('berlin')).toMatchObject({
      timeZone: 'Europe/Berlin',
      nextRunAt: new Date('2026-03-28T01:30:00Z'), // 02:30 CET (UTC+1)
    });
    clock.set(at('2026-03-28T01:30:00Z'));
    await drainWorkflows(app);
    expect(await info('berlin')).toMatchObject({ nextRunAt: new Date('2026-03-29T01:00:00Z') }); // 03:00 CEST
    clock.set(at('2026-03-29T01:00:00Z'));
    await drainWorkflows(app);
    expect(await info('berlin')).toMatchObject({ nextRunAt: new Date('2026-03-30T00:30:00Z') }); // 02:30 CEST (UTC+2)
    clock.set(at('2026-03-30T00:30:00Z'));
    await drainWorkflows(app);
    expect(await runsOf(prefix, 'berlin')).toEqual(
      ['2026-03-28T01:30:00Z', '2026-03-29T01:00:00Z', '2026-03-30T00:30:00Z'].map((t) => `berlin-${at(t)}`),
    );
    await service.unschedule('berlin');
  });

  it("timeZone 'Europe/Berlin' across the autumn DST change: 02:30 occurs twice on 2026-10-25, it fires once", async () => {
    clock.set(at('2026-10-24T12:00:00Z'));
    await service.schedule({ id: 'berlin-autumn', workflow: 'echo', cron: '30 2 * * *', timeZone: 'Europe/Berlin' });
    // The first 02:30 (CEST, UTC+2) fires; the second (CET, UTC+1) one hour later does not.
    for (const t of ['2026-10-25T00:30:00Z', '2026-10-25T01:30:00Z', '2026-10-26T01:30:00Z']) {
      clock.set(at(t));
      await drainWorkflows(app);
    }
    expect(await runsOf(prefix, 'berlin-autumn')).toEqual(
      ['2026-10-25T00:30:00Z', '2026-10-26T01:30:00Z'].map((t) => `berlin-autumn-${at(t)}`),
    );
    await service.unschedule('berlin-autumn');
  });

  it('an invalid cron, time zone, workflow or id throws InvalidScheduleError and writes nothing', async () => {
    const before = await service.schedules();
    const good: ScheduleSpec = { id: 'ok', workflow: 'echo', cron: '* * * * *' };
    for (const bad of [
      { ...good, cron: 'every minute' },
      { ...good, cron: '61 * * * *' },
      { ...good, cron: '* * * *' },
      { ...good, timeZone: 'Mars/Olympus_Mons' },
      { ...good, workflow: 'no-such-workflow' },
      { ...good, id: 'not a safe id' },
      { ...good, id: 'x'.repeat(101) },
      { ...good, overlap: 'queue' as 'skip' },
      { ...good, headers: { 'workflow.reserved': 'x' } },
    ]) {
      const err = await service.schedule(bad).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(InvalidScheduleError);
      expect(err).toBeInstanceOf(WorkflowError);
    }
    expect(await service.schedules()).toEqual(before);
  });
});

describe('many schedules due in one tick', () => {
  const prefix = uniquePrefix('sched-many');
  const clock = new ManualClock(at('2026-03-09T12:00:30Z'));
  const count = 500;
  let app: TestingModule;

  beforeAll(async () => {
    // Promotion runs every minute of real time here: within this test, the only promotion
    // is the one the clock's jump calls.
    app = await startApp({
      prefix,
      providers: [Echo],
      worker: { pollIntervalMs: 60_000, leaseMs: 5_000, shutdownTimeoutMs: 2_000 },
      options: {
        clock,
        schedules: Array.from({ length: count }, (_, i) => ({ id: `many-${i}`, workflow: 'echo', cron: '* * * * *' })),
      },
    });
  });

  afterAll(async () => {
    await app?.close();
    await dropTables(prefix);
  });

  it('one promotion fires all of them, not one batch of 50 per poll interval', async () => {
    const tick = at('2026-03-09T12:01:00Z');
    clock.set(tick);
    const conn = await rawConnection();
    try {
      const fired = async () => {
        const [rows] = await conn.query(
          `SELECT COUNT(*) AS n FROM \`${prefix}runs\` WHERE \`schedule_id\` IS NOT NULL AND \`id\` LIKE ?`,
          [`%-${tick}`],
        );
        return Number((rows as Array<{ n: number }>)[0].n);
      };
      await waitFor(async () => (await fired()) === count, `${count} runs of the 12:01 tick`, 10_000).catch(
        async (err: Error) => {
          throw new Error(`${err.message}: ${await fired()} fired`);
        },
      );
    } finally {
      await conn.end();
    }
    await drainWorkflows(app, { timeoutMs: 30_000 });
  });
});

describe('declared schedules that are invalid fail startup', () => {
  const prefix = uniquePrefix('sched-bad');

  afterAll(async () => {
    await dropTables(prefix);
  });

  it.each([
    ['an invalid cron', { cron: '* * *' }, /invalid cron/],
    ['an unknown time zone', { timeZone: 'Europe/Atlantis' }, /timeZone/],
    ['an unknown workflow', { workflow: 'nobody-runs-this' }, /unknown workflow/],
  ])('%s: InvalidScheduleError, and not even the valid ones are written', async (_what, change, message) => {
    const valid: ScheduleSpec = { id: 'valid', workflow: 'echo', cron: '* * * * *' };
    const err = await startupError(() =>
      Test.createTestingModule({
        imports: [
          WorkflowModule.forRoot(
            testOptions({ prefix, options: { schedules: [valid, { ...valid, id: 'bad', ...change }] } }),
          ),
        ],
        providers: [Echo],
      }),
    );
    expect(err).toBeInstanceOf(InvalidScheduleError);
    expect(err.message).toMatch(message);
    expect(err.message).toContain('"bad"');
    expect(await storedSchedules(prefix)).toBe(0);
  });
});
