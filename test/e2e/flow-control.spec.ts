/**
 * keyConcurrency and rateLimit across app instances on one database. The runners of
 * every app in this file share one in-memory tracker (one Jest process), so "running at
 * once" is counted across the apps the way the limit must hold.
 */
import { Injectable } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import { type Step, StepOutcome, StepRunner, WorkflowConfigError, WorkflowService } from 'nestjs-durable-workflow';
import { InvalidRunSpecError } from 'nestjs-durable-workflow';
import { startApp, startupError, testBuilder } from '../utils/create-test-app.js';
import type { Connection } from 'mysql2/promise';
import { DB_URL, Prefixes, rawConnection } from '../utils/db.js';
import { DataSource } from 'typeorm';
import { createJournal, startWorker, type WorkerProcess } from '../utils/processes.js';
import { deferred, waitFor } from '../utils/wait.js';

/** Steps running now and the most seen at once, per key ('' for runs without one). */
class Tracker {
  running = new Map<string, number>();
  peak = new Map<string, number>();
  starts: Array<{ runId: string; key: string; at: number }> = [];
  order: string[] = [];
  enter(key: string, runId: string): void {
    const n = (this.running.get(key) ?? 0) + 1;
    this.running.set(key, n);
    this.peak.set(key, Math.max(n, this.peak.get(key) ?? 0));
    this.starts.push({ runId, key, at: Date.now() });
    this.order.push(runId);
  }
  leave(key: string): void {
    this.running.set(key, (this.running.get(key) ?? 0) - 1);
  }
  reset(): void {
    this.running.clear();
    this.peak.clear();
    this.starts = [];
    this.order = [];
  }
}
const tracker = new Tracker();
/** Runs whose step waits for the test to let it go. */
const gates = new Map<string, Promise<void>>();
const entered = new Map<string, () => void>();

/** Holds `runId`'s step inside its runner: `inside` resolves when it is there, `open()` lets it go. */
function gate(runId: string): { inside: Promise<void>; open: () => void } {
  const go = deferred();
  const inside = deferred();
  gates.set(runId, go.promise);
  entered.set(runId, inside.resolve);
  return {
    inside: inside.promise,
    open: () => {
      go.resolve();
      gates.delete(runId);
      entered.delete(runId);
    },
  };
}

interface Input {
  key?: string;
  steps?: number;
  ms?: number;
  wait?: boolean;
}

async function work(step: Step<Input>): Promise<StepOutcome> {
  const key = step.payload.key ?? '';
  tracker.enter(key, step.runId);
  try {
    entered.get(step.runId)?.();
    await gates.get(step.runId);
    await new Promise((r) => setTimeout(r, step.payload.ms ?? 20));
  } finally {
    tracker.leave(key);
  }
  if (step.payload.wait && step.stepNumber === 0) return StepOutcome.waitForSignal('go', step.payload);
  return step.stepNumber + 1 < (step.payload.steps ?? 1)
    ? StepOutcome.continue(step.payload)
    : StepOutcome.succeed(key);
}

@Injectable()
@StepRunner('keyed', { keyConcurrency: 2 })
class KeyedRunner {
  runStep(step: Step<Input>) {
    return work(step);
  }
}

@Injectable()
@StepRunner('single', { keyConcurrency: 1 })
class SingleRunner {
  runStep(step: Step<Input>) {
    return work(step);
  }
}

@Injectable()
@StepRunner('rated', { rateLimit: { limit: 5, periodMs: 500 } })
class RatedRunner {
  runStep(step: Step<Input>) {
    return work(step);
  }
}

@Injectable()
@StepRunner('rated-per-key', { rateLimit: { limit: 4, periodMs: 500, perKey: true } })
class RatedPerKeyRunner {
  runStep(step: Step<Input>) {
    return work(step);
  }
}

/** Spawns one 'keyed' child with a key of its own (children do not inherit one). */
@Injectable()
@StepRunner('parent')
class ParentRunner {
  runStep(step: Step<null>) {
    if (step.stepNumber === 0)
      return StepOutcome.spawn([{ workflow: 'keyed', input: { key: 'child-key' }, concurrencyKey: 'child-key' }], null);
    return StepOutcome.succeed(step.children!.map((c) => c.runId));
  }
}

const runners = [KeyedRunner, SingleRunner, RatedRunner, RatedPerKeyRunner, ParentRunner];

/**
 * Every rate-window start the library records, as it records it: in the database clock, at
 * the claim. Triggers on `flow_starts` copy each ring write to an audit table, so windows
 * are checked where the guarantee is made. (A runner's own clock sees the same starts
 * shifted by each claim's commit and delivery, which a loaded machine stretches to
 * hundreds of ms; the README says so.)
 */
class StartAudit {
  constructor(private readonly prefix: string) {}
  private get table() {
    return `${this.prefix}audit_starts`;
  }
  async attach(): Promise<void> {
    const db = await rawConnection();
    try {
      await db.query(
        `CREATE TABLE IF NOT EXISTS \`${this.table}\` (\`queue\` VARCHAR(191) NOT NULL, \`bucket\` VARCHAR(130) NOT NULL, \`at\` DATETIME(3) NOT NULL)`,
      );
      for (const event of ['INSERT', 'UPDATE'])
        await db.query(
          `CREATE TRIGGER \`${this.prefix}audit_${event.toLowerCase()}\` AFTER ${event} ON \`${this.prefix}flow_starts\`
            FOR EACH ROW INSERT INTO \`${this.table}\` VALUES (NEW.\`queue\`, NEW.\`bucket\`, NEW.\`started_at\`)`,
        );
    } finally {
      await db.end();
    }
  }
  /** Start times in ms (database clock) per bucket ('r*', or 'r:<key>' with perKey). */
  async starts(queue: string): Promise<Map<string, number[]>> {
    const db = await rawConnection();
    try {
      const [rows] = await db.query(
        `SELECT \`bucket\`, TIMESTAMPDIFF(MICROSECOND, '2000-01-01', \`at\`) DIV 1000 AS ms FROM \`${this.table}\` WHERE \`queue\` = ?`,
        [queue],
      );
      const out = new Map<string, number[]>();
      for (const r of rows as Array<{ bucket: string; ms: number | string }>)
        out.set(r.bucket, [...(out.get(r.bucket) ?? []), Number(r.ms)]);
      return out;
    } finally {
      await db.end();
    }
  }
  async drop(): Promise<void> {
    const db = await rawConnection();
    try {
      await db.query(`DROP TABLE IF EXISTS \`${this.table}\``);
    } finally {
      await db.end();
    }
  }
}

/** Sorted start times violate the window when some `limit` + 1 of them fit in less than `periodMs`. */
function windowViolations(times: number[], limit: number, periodMs: number): number[][] {
  const t = [...times].sort((a, b) => a - b);
  const bad: number[][] = [];
  for (let i = 0; i + limit < t.length; i++) if (t[i + limit] - t[i] < periodMs) bad.push(t.slice(i, i + limit + 1));
  return bad;
}

describe('flow control across two worker apps', () => {
  const prefixes = new Prefixes('flow');
  const prefix = prefixes.next();
  let a: TestingModule;
  let b: TestingModule;
  let service: WorkflowService;
  const audit = new StartAudit(prefix);
  const freshAudits: StartAudit[] = [];

  beforeAll(async () => {
    a = await startApp({ prefix, providers: runners, worker: { pollIntervalMs: 50, leaseMs: 5_000, concurrency: 8 } });
    b = await startApp({ prefix, providers: runners, worker: { pollIntervalMs: 50, leaseMs: 5_000, concurrency: 8 } });
    service = a.get(WorkflowService);
    await audit.attach();
  });

  afterAll(async () => {
    await a?.close();
    await b?.close();
    for (const x of [audit, ...freshAudits]) await x.drop();
    await prefixes.dropAll();
  });

  beforeEach(() => tracker.reset());

  async function all(runIds: string[]) {
    return Promise.all(runIds.map((id) => service.waitForOutcome(id, { timeoutMs: 30_000 })));
  }

  it('keyConcurrency 2: at most two steps of one key run at once across both apps, and two do', async () => {
    const specs = ['k1', 'k2', 'k3', 'k4'].flatMap((key) =>
      Array.from({ length: 6 }, () => ({ input: { key, steps: 3 }, concurrencyKey: key })),
    );
    const runs = await service.submitMany('keyed', specs);
    const outcomes = await all(runs.map((r) => r.runId));
    expect(outcomes.every((o) => o.status === 'succeeded')).toBe(true);
    expect(Object.fromEntries(tracker.peak)).toEqual({ k1: 2, k2: 2, k3: 2, k4: 2 });
    expect((await service.status(runs[0].runId))?.concurrencyKey).toBe('k1');
  });

  it('runs without a key are not limited by keyConcurrency', async () => {
    const runs = await service.submitMany(
      'single',
      Array.from({ length: 8 }, () => ({ input: { ms: 100 } })),
    );
    await all(runs.map((r) => r.runId));
    expect(tracker.peak.get('')).toBeGreaterThan(1);
  });

  it('a held-back step holds no worker slot: another key runs while one key’s steps wait', async () => {
    const first = 'hold-first';
    const gated = gate(first);
    try {
      await service.submit('single', { runId: first, input: { key: 'busy' }, concurrencyKey: 'busy' });
      await gated.inside;
      // 20 more of the busy key: far more than the 16 slots of both apps, all held back.
      const held = await service.submitMany(
        'single',
        Array.from({ length: 20 }, () => ({ input: { key: 'busy' }, concurrencyKey: 'busy' })),
      );
      const other = await service.submit('single', { input: { key: 'free' }, concurrencyKey: 'free' });
      expect((await service.waitForOutcome(other.runId, { timeoutMs: 10_000 })).status).toBe('succeeded');
      expect((await service.status(held[0].runId))?.state).toBe('pending');
      gated.open();
      await all(held.map((r) => r.runId));
    } finally {
      gated.open();
    }
    expect(tracker.peak.get('busy')).toBe(1);
  });

  it('a run continuing in place holds its slot until a step of its key waits, then hands it over', async () => {
    const a = await service.submit('single', {
      input: { key: 'inplace', steps: 6, ms: 60 },
      concurrencyKey: 'inplace',
    });
    await waitFor(
      () =>
        tracker.starts.some((s) => s.runId === a.runId && s.at > 0) &&
        tracker.order.filter((id) => id === a.runId).length >= 2,
      'a past its first step',
    );
    const b = await service.submit('single', { input: { key: 'inplace' }, concurrencyKey: 'inplace' });
    const [oa, ob] = await Promise.all([a, b].map((r) => service.waitForOutcome(r.runId, { timeoutMs: 15_000 })));
    expect([oa.status, ob.status]).toEqual(['succeeded', 'succeeded']);
    expect(tracker.peak.get('inplace')).toBe(1);
    // b did not wait for all of a's steps: a handed its slot over at its next step.
    const order = tracker.order.filter((id) => id === a.runId || id === b.runId);
    expect(order.indexOf(b.runId)).toBeLessThan(order.length - 1);
  });

  it('priorities keep their order within the limit', async () => {
    const first = 'prio-first';
    const gated = gate(first);
    await service.submit('single', { runId: first, input: { key: 'p' }, concurrencyKey: 'p' });
    await gated.inside;
    const low = await service.submitMany(
      'single',
      Array.from({ length: 3 }, (_, i) => ({
        runId: `prio-low-${i}`,
        input: { key: 'p' },
        concurrencyKey: 'p',
        priority: 10,
      })),
    );
    const high = await service.submitMany(
      'single',
      Array.from({ length: 3 }, (_, i) => ({
        runId: `prio-high-${i}`,
        input: { key: 'p' },
        concurrencyKey: 'p',
        priority: -10,
      })),
    );
    // Every one of them has been looked at by a claim and held back.
    await waitFor(async () => {
      const states = await Promise.all([...low, ...high].map((r) => service.status(r.runId)));
      return states.every((s) => s?.state === 'pending');
    }, 'held back');
    gated.open();
    await all([...low, ...high].map((r) => r.runId));
    expect(tracker.order.filter((id) => id.startsWith('prio-'))).toEqual([
      'prio-first',
      'prio-high-0',
      'prio-high-1',
      'prio-high-2',
      'prio-low-0',
      'prio-low-1',
      'prio-low-2',
    ]);
  });

  it('a run waiting for a signal holds no key slot', async () => {
    const waiter = await service.submit('single', { input: { key: 'w', wait: true }, concurrencyKey: 'w' });
    await waitFor(async () => (await service.status(waiter.runId))?.state === 'waiting', 'waiting');
    const next = await service.submit('single', { input: { key: 'w' }, concurrencyKey: 'w' });
    expect((await service.waitForOutcome(next.runId, { timeoutMs: 10_000 })).status).toBe('succeeded');
    await service.signal(waiter.runId, 'go', null);
    expect((await service.waitForOutcome(waiter.runId, { timeoutMs: 10_000 })).status).toBe('succeeded');
  });

  it('a child gets the ChildSpec’s key, not its parent’s; a schedule’s ticks get the ScheduleSpec’s', async () => {
    const parent = await service.submit('parent', { input: null, concurrencyKey: 'parent-key' });
    const outcome = await service.waitForOutcome(parent.runId, { timeoutMs: 10_000 });
    const [child] = outcome.result as string[];
    expect((await service.status(parent.runId))?.concurrencyKey).toBe('parent-key');
    expect((await service.status(child))?.concurrencyKey).toBe('child-key');

    await service.schedule({ id: 'keyed-tick', workflow: 'keyed', cron: '* * * * * *', concurrencyKey: 'sched-key' });
    try {
      expect((await service.schedules()).find((x) => x.id === 'keyed-tick')?.concurrencyKey).toBe('sched-key');
      const ticked = await waitFor(async () => {
        const info = (await service.schedules()).find((x) => x.id === 'keyed-tick');
        return info?.lastRunId;
      }, 'a tick');
      expect((await service.status(ticked))?.concurrencyKey).toBe('sched-key');
    } finally {
      await service.unschedule('keyed-tick');
    }
  });

  it('rateLimit 5 per 500 ms: no 500 ms window holds more than 5 starts across both apps', async () => {
    const runs = await service.submitMany(
      'rated',
      Array.from({ length: 25 }, () => ({ input: { ms: 1 } })),
    );
    const began = Date.now();
    await all(runs.map((r) => r.runId));
    expect(tracker.starts).toHaveLength(25);
    const starts = (await audit.starts('rated')).get('r*') ?? [];
    expect(starts).toHaveLength(25);
    expect(windowViolations(starts, 5, 500)).toEqual([]);
    // And the budget is used: 25 starts need 4 more windows after the first, not many more.
    expect(Date.now() - began).toBeLessThan(6_000);
  });

  it('rateLimit perKey: each key has its own window, runs without a key share one', async () => {
    const specs = [
      ...Array.from({ length: 12 }, () => ({ input: { key: 'x', ms: 1 }, concurrencyKey: 'x' })),
      ...Array.from({ length: 12 }, () => ({ input: { key: 'y', ms: 1 }, concurrencyKey: 'y' })),
      ...Array.from({ length: 8 }, () => ({ input: { ms: 1 } })),
    ];
    const runs = await service.submitMany('rated-per-key', specs);
    await all(runs.map((r) => r.runId));
    const buckets = await audit.starts('rated-per-key');
    expect([...buckets.keys()].sort()).toEqual(['r:', 'r:x', 'r:y']);
    for (const key of ['x', 'y', '']) {
      const starts = buckets.get(`r:${key}`)!;
      expect(starts).toHaveLength(tracker.starts.filter((s) => s.key === key).length);
      expect(windowViolations(starts, 4, 500)).toEqual([]);
    }
    // The keys did not wait for each other: the first window started more than one key's 4.
    const all3 = [...buckets.values()].flat();
    const firstWindow = Math.min(...all3) + 500;
    expect(all3.filter((at) => at < firstWindow).length).toBeGreaterThan(4);
  });

  it('the rate window survives every process stopping: a fresh app does not burst past it', async () => {
    const fresh = prefixes.next();
    const one = await startApp({ prefix: fresh, providers: runners });
    const freshAudit = new StartAudit(fresh);
    freshAudits.push(freshAudit);
    await freshAudit.attach();
    const first = await one.get(WorkflowService).submitMany(
      'rated',
      Array.from({ length: 5 }, () => ({ input: { ms: 1 } })),
    );
    await Promise.all(first.map((r) => one.get(WorkflowService).waitForOutcome(r.runId, { timeoutMs: 10_000 })));
    await one.close();
    const two = await startApp({ prefix: fresh, providers: runners });
    try {
      const svc = two.get(WorkflowService);
      const second = await svc.submitMany(
        'rated',
        Array.from({ length: 5 }, () => ({ input: { ms: 1 } })),
      );
      await Promise.all(second.map((r) => svc.waitForOutcome(r.runId, { timeoutMs: 10_000 })));
    } finally {
      await two.close();
    }
    const starts = (await freshAudit.starts('rated')).get('r*') ?? [];
    expect(starts).toHaveLength(10);
    expect(windowViolations(starts, 5, 500)).toEqual([]);
  });
});

describe('a key slot freed in one app, for steps another app held back', () => {
  const prefixes = new Prefixes('flowpark');
  afterAll(() => prefixes.dropAll());

  let ds: DataSource | undefined;
  afterAll(() => ds?.destroy());

  // The app that frees the slot never saw the key's steps wait (its settlement tries to commit
  // in one trip and finds them in the database), so this is the path the hint skips. Its
  // statements go as one packet on the module's own pool, one by one on the app's DataSource.
  it.each(['its own pool', "the app's TypeORM DataSource"])(
    'the freeing settlement finds the held-back step and makes it ready (holder on %s)',
    async (on) => {
      const prefix = prefixes.next();
      const worker = { pollIntervalMs: 50, leaseMs: 5_000, concurrency: 1 };
      if (on !== 'its own pool' && !ds) {
        ds = new DataSource({ type: 'mysql', url: DB_URL, poolSize: 10 } as never);
        await ds.initialize();
      }
      const options = on === 'its own pool' ? {} : { connection: undefined, dataSource: ds };
      const holder = await startApp({ prefix, providers: runners, worker, options });
      let parker: TestingModule | undefined;
      const first = 'park-first';
      const gated = gate(first);
      try {
        const svc = holder.get(WorkflowService);
        await svc.submit('single', { runId: first, input: { key: 'parked', steps: 2 }, concurrencyKey: 'parked' });
        await gated.inside;
        // The holder's one slot is taken, so only the second app can claim, and it parks these.
        parker = await startApp({ prefix, providers: runners, worker });
        const held = await svc.submitMany(
          'single',
          Array.from({ length: 3 }, () => ({ input: { key: 'parked' }, concurrencyKey: 'parked' })),
        );
        const db = await rawConnection();
        try {
          await waitFor(async () => {
            const [rows] = await db.query(
              `SELECT COUNT(*) AS n FROM \`${prefix}jobs\` WHERE \`run_id\` IN (?) AND \`state\` = 4`,
              [held.map((r) => r.runId)],
            );
            return Number((rows as Array<{ n: number }>)[0].n) === 3;
          }, 'the three parked by the second app');
        } finally {
          await db.end();
        }
        gated.open();
        const outcomes = await Promise.all(
          [first, ...held.map((r) => r.runId)].map((id) => svc.waitForOutcome(id, { timeoutMs: 15_000 })),
        );
        expect(outcomes.map((o) => o.status)).toEqual(['succeeded', 'succeeded', 'succeeded', 'succeeded']);
      } finally {
        gated.open();
        await parker?.close();
        await holder.close();
      }
    },
  );
});

describe('flow control declarations and keys are checked', () => {
  const prefixes = new Prefixes('flowbad');
  afterAll(() => prefixes.dropAll());

  it.each([
    ['keyConcurrency 0', { keyConcurrency: 0 }, /keyConcurrency/],
    ['rateLimit without a period', { rateLimit: { limit: 3 } }, /rateLimit\.periodMs/],
    ['rateLimit.limit too big', { rateLimit: { limit: 1e9, periodMs: 1000 } }, /rateLimit\.limit/],
    ['perKey not a boolean', { rateLimit: { limit: 1, periodMs: 1000, perKey: 'yes' } }, /perKey/],
  ])('%s fails startup with WorkflowConfigError', async (_name, options, message) => {
    @Injectable()
    @StepRunner('bad', options as never)
    class BadRunner {
      runStep() {
        return StepOutcome.succeed(null);
      }
    }
    const err = await startupError(() => testBuilder({ prefix: prefixes.next(), providers: [BadRunner] }));
    expect(err).toBeInstanceOf(WorkflowConfigError);
    expect(err.message).toMatch(message);
  });

  it('a concurrencyKey that is not a 1-128 character string throws InvalidRunSpecError', async () => {
    const app = await startApp({ prefix: prefixes.next(), providers: runners, worker: false });
    try {
      const svc = app.get(WorkflowService);
      for (const concurrencyKey of ['', 'x'.repeat(129), 42 as unknown as string]) {
        await expect(svc.submit('keyed', { input: null, concurrencyKey })).rejects.toThrow(InvalidRunSpecError);
      }
    } finally {
      await app.close();
    }
  });
});

describe('flow control with worker processes that are SIGKILLed', () => {
  const prefixes = new Prefixes('flowkill');
  const workers: WorkerProcess[] = [];
  let db: Connection;

  beforeAll(async () => {
    db = await rawConnection();
  });

  afterEach(async () => {
    for (const w of workers.splice(0)) await w.kill();
  });

  afterAll(async () => {
    await db?.end();
    await prefixes.dropAll();
  });

  /** The fixture's journal, with when each row was written by the server's clock (the clock rate windows use). */
  async function journalWithTimes(prefix: string) {
    await createJournal(db, prefix);
    await db.query(`ALTER TABLE \`${prefix}journal\` ADD COLUMN at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)`);
  }

  async function journal(prefix: string) {
    const [rows] = await db.query(
      `SELECT run_id, step_number, kind, pid, at FROM \`${prefix}journal\` WHERE kind IN ('step', 'end') ORDER BY at, id`,
    );
    return (rows as Array<{ run_id: string; step_number: number; kind: string; pid: number; at: Date }>).map((r) => ({
      ...r,
      at: r.at.getTime(),
    }));
  }

  it('keyConcurrency 1: a process killed holding the slot gives it back when its lease expires; no two steps overlap', async () => {
    const prefix = prefixes.next();
    await journalWithTimes(prefix);
    const env = {
      PREFIX: prefix,
      STEPS: '2',
      KEY_CONCURRENCY: '1',
      LEASE_MS: '1500',
      JOURNAL_ENDS: '1',
      STEP_DELAY_MS: '30',
    };
    const first = await startWorker({ ...env, HANG_STEPS: '0' });
    workers.push(first);
    const web = await startApp({ prefix, worker: false, options: { workflows: ['crashy'] } });
    try {
      const svc = web.get(WorkflowService);
      const runs = await svc.submitMany(
        'crashy',
        Array.from({ length: 4 }, () => ({ input: { n: 0 }, concurrencyKey: 'tenant-1' })),
      );
      const line = await first.waitForLine(/^started \S+ 0 1$/);
      // The others are held back behind the hung step's slot.
      await waitFor(async () => {
        const [rows] = await db.query(`SELECT COUNT(*) AS n FROM \`${prefix}jobs\` WHERE state = 4`);
        return Number((rows as Array<{ n: number }>)[0].n) === 3;
      }, 'three steps blocked behind the slot');
      await first.kill('SIGKILL');
      workers.push(await startWorker(env));
      const outcomes = await Promise.all(runs.map((r) => svc.waitForOutcome(r.runId, { timeoutMs: 30_000 })));
      expect(outcomes.every((o) => o.status === 'succeeded')).toBe(true);
      const rows = await journal(prefix);
      const hung = line.split(' ')[1];
      // Every step start after the hung one waited for the one before it to end.
      let openUntil = -1;
      let open = 0;
      for (const r of rows.filter((r) => r.pid !== first.pid)) {
        if (r.kind === 'step') {
          expect(open).toBe(0);
          expect(r.at).toBeGreaterThanOrEqual(openUntil);
          open++;
        } else {
          open--;
          openUntil = r.at;
        }
      }
      expect(rows.filter((r) => r.kind === 'step' && r.run_id === hung)).toHaveLength(3);
    } finally {
      await web.close();
    }
  });

  it('rateLimit 4 per second: a process killed mid-window and its replacement never exceed the window together', async () => {
    const prefix = prefixes.next();
    await journalWithTimes(prefix);
    const env = { PREFIX: prefix, STEPS: '1', RATE_LIMIT: '4/1000', LEASE_MS: '1500' };
    const first = await startWorker(env);
    workers.push(first);
    const web = await startApp({ prefix, worker: false, options: { workflows: ['crashy'] } });
    const audit = new StartAudit(prefix);
    await audit.attach();
    try {
      const svc = web.get(WorkflowService);
      const runs = await svc.submitMany(
        'crashy',
        Array.from({ length: 14 }, () => ({ input: { n: 0 } })),
      );
      // Killed after its sixth start: inside its second window.
      await waitFor(() => first.lines.filter((l) => l.startsWith('started ')).length >= 6, 'six starts');
      await first.kill('SIGKILL');
      workers.push(await startWorker(env));
      const outcomes = await Promise.all(runs.map((r) => svc.waitForOutcome(r.runId, { timeoutMs: 30_000 })));
      expect(outcomes.every((o) => o.status === 'succeeded')).toBe(true);
      // Every step the runners began was counted (a claim the kill cut short counts too).
      const begun = (await journal(prefix)).filter((r) => r.kind === 'step').length;
      expect(begun).toBeGreaterThanOrEqual(14);
      const starts = (await audit.starts('crashy')).get('r*') ?? [];
      expect(starts.length).toBeGreaterThanOrEqual(begun);
      expect(windowViolations(starts, 4, 1000)).toEqual([]);
    } finally {
      await web.close();
      await audit.drop();
    }
  });
});
