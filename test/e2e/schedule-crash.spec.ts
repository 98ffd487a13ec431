/**
 * Schedules under crashes, on real clocks with a six-field cron (a tick every 2 s), on a
 * private MariaDB: two worker processes (test/fixtures/schedule-process.ts) declare the
 * same 200 schedules and fire them; nobody runs the runs, so every tick's run stays in
 * the tables to be counted. A process SIGKILLed while its tick transaction is open, and
 * the database SIGKILLed while one is open, neither double nor drop a tick: with a
 * process running, every tick has exactly one run; ticks that passed while the database
 * was down collapse into the latest, fired once, late.
 *
 * "While its tick transaction is open" is made to happen for real, not through a hook:
 * 200 schedules due at once make a tick four transactions of 50 runs; the test reads the
 * tick's runs at READ UNCOMMITTED and at READ COMMITTED, and kills the moment some are
 * not committed yet. Whether the kill cut a transaction off is told afterwards by the
 * runs' `submit_key` (one per transaction): a cut-off one never commits. (When both
 * processes tick, the open transaction may be the survivor's; such a kill is repeated.)
 */
import type { TestingModule } from '@nestjs/testing';
import type { Connection } from 'mysql2/promise';
import { WorkflowService } from 'nestjs-durable-workflow';
import { startApp } from '../utils/create-test-app.js';
import { rawConnection } from '../utils/db.js';
import { PrivateMariaDb } from '../utils/private-db.js';
import { startWorker, type WorkerProcess } from '../utils/processes.js';
import { waitFor } from '../utils/wait.js';

const PERIOD = 2_000;
const CRON = '*/2 * * * * *';
const SCHEDULES = 200;
const ids = Array.from({ length: SCHEDULES }, (_, i) => `s${i}`);
/** The latest tick at or before `ms`. */
const tickAt = (ms: number) => Math.floor(ms / PERIOD) * PERIOD;

interface TickRun {
  id: string;
  schedule: string;
  tick: number;
  submittedAt: number;
  key: string;
}

describe('schedules under crashes (real clock, a six-field cron every 2 s)', () => {
  let db: PrivateMariaDb;
  let admin: Connection;
  /** READ UNCOMMITTED: sees a tick transaction's runs before it commits. */
  let dirty: Connection;
  let app: TestingModule | undefined;
  const processes: WorkerProcess[] = [];

  beforeAll(async () => {
    db = await PrivateMariaDb.create(0);
    admin = await rawConnection(db.url);
    dirty = await rawConnection(db.url);
    await dirty.query('SET SESSION TRANSACTION ISOLATION LEVEL READ UNCOMMITTED');
  }, 60_000);

  afterEach(async () => {
    await Promise.all(processes.splice(0).map((p) => p.kill('SIGKILL')));
    await app?.close();
    app = undefined;
  });

  afterAll(async () => {
    await dirty?.end().catch(() => undefined);
    await admin?.end().catch(() => undefined);
    await db?.destroy();
  });

  async function start(prefix: string, pollMs = 50): Promise<WorkerProcess> {
    const p = await startWorker(
      { WORKFLOW_DB_URL: db.url, PREFIX: prefix, SCHEDULES: String(SCHEDULES), CRON, POLL_MS: String(pollMs) },
      'schedule-process',
    );
    processes.push(p);
    return p;
  }

  /** The schema, created by the module itself, and a worker: false app to read statuses with. */
  async function statusApp(prefix: string): Promise<TestingModule> {
    const started = await startApp({
      prefix,
      worker: false,
      options: { connection: { url: db.url }, workflows: ['tick'] },
    });
    app = started;
    return started;
  }

  async function tickRuns(conn: Connection, prefix: string, ticks?: number[]): Promise<TickRun[]> {
    const [rows] = ticks
      ? await conn.query(
          `SELECT \`id\`, \`schedule_id\`, \`submitted_at\`, \`submit_key\` FROM \`${prefix}runs\` WHERE \`id\` IN (?)`,
          [ticks.flatMap((t) => ids.map((s) => `${s}-${t}`))],
        )
      : await conn.query(
          `SELECT \`id\`, \`schedule_id\`, \`submitted_at\`, \`submit_key\` FROM \`${prefix}runs\` WHERE \`schedule_id\` IS NOT NULL`,
        );
    return (rows as Array<{ id: string; schedule_id: string; submitted_at: number; submit_key: string }>).map((r) => ({
      id: r.id,
      schedule: r.schedule_id,
      tick: Number(r.id.slice(r.schedule_id.length + 1)),
      submittedAt: Number(r.submitted_at),
      key: r.submit_key,
    }));
  }

  /**
   * Waits for a moment when a tick transaction is open with runs in it not committed yet
   * (seen at READ UNCOMMITTED, not at READ COMMITTED), then calls `kill` at once. Returns
   * those runs (with the submit key of their transaction).
   */
  async function killMidTick(prefix: string, kill: () => void): Promise<TickRun[]> {
    const deadline = Date.now() + 20_000;
    let polls = 0;
    for (;;) {
      if (Date.now() > deadline) throw new Error(`no open tick transaction seen in 20 s (${polls} polls)`);
      polls++;
      const now = Date.now();
      const ticks = [tickAt(now), tickAt(now) - PERIOD];
      const seen = await tickRuns(dirty, prefix, ticks);
      const committed = new Set((await tickRuns(admin, prefix, ticks)).map((r) => r.key));
      const open = seen.filter((r) => !committed.has(r.key));
      if (open.length > 0) {
        kill();
        return open;
      }
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  /** Waits until every schedule has the run of `tick`. */
  async function allFired(prefix: string, tick: number, what: string): Promise<void> {
    await waitFor(async () => (await tickRuns(admin, prefix, [tick])).length === SCHEDULES, what, 30_000, 50);
  }

  /** Checks what every tick run has: exactly one run per (schedule, tick), on the cron, with its step 0 queued. */
  async function checkRuns(prefix: string): Promise<Map<string, TickRun[]>> {
    const runs = await tickRuns(admin, prefix);
    const bySchedule = new Map<string, TickRun[]>(ids.map((s) => [s, []]));
    const perTick = new Map<string, number>();
    // The derived run id names its schedule and a tick of its cron.
    expect(runs.filter((r) => !r.id.startsWith(`${r.schedule}-`) || r.tick % PERIOD !== 0)).toEqual([]);
    for (const r of runs) {
      perTick.set(`${r.schedule}@${r.tick}`, (perTick.get(`${r.schedule}@${r.tick}`) ?? 0) + 1);
      bySchedule.get(r.schedule)!.push(r);
    }
    expect([...perTick.values()].filter((n) => n !== 1)).toEqual([]);
    for (const list of bySchedule.values()) list.sort((a, b) => a.tick - b.tick);
    // No run without its step 0: every one is queued, nobody runs them here.
    const [orphans] = await admin.query(
      `SELECT COUNT(*) AS n FROM \`${prefix}runs\` r LEFT JOIN \`${prefix}jobs\` j ON j.\`id\` = r.\`current_job_id\`
        WHERE r.\`schedule_id\` IS NOT NULL AND (j.\`id\` IS NULL OR j.\`state\` <> 0 OR j.\`step_number\` <> 0)`,
    );
    expect(Number((orphans as Array<{ n: number }>)[0].n)).toBe(0);
    return bySchedule;
  }

  /** The ticks from `from` to `to` (inclusive) a schedule has no run for. */
  const missing = (list: TickRun[], from: number, to: number) => {
    const have = new Set(list.map((r) => r.tick));
    const out: number[] = [];
    for (let t = from; t <= to; t += PERIOD) if (!have.has(t)) out.push(t);
    return out;
  };

  /** Of the runs open at a kill, those whose transaction never committed: the kill cut it off. */
  async function cutOff(prefix: string, open: TickRun[]): Promise<TickRun[]> {
    const committed = new Set((await tickRuns(admin, prefix)).map((r) => r.key));
    return open.filter((r) => !committed.has(r.key));
  }

  /** How many of these run ids exist (committed). */
  async function existing(prefix: string, runIds: string[]): Promise<number> {
    const [rows] = await admin.query(`SELECT COUNT(*) AS n FROM \`${prefix}runs\` WHERE \`id\` IN (?)`, [runIds]);
    return Number((rows as Array<{ n: number }>)[0].n);
  }

  it('a process SIGKILLed mid-tick: the other one fires the ticks it held, once each, and no tick is lost', async () => {
    const prefix = 'kill_';
    const service = (await statusApp(prefix)).get(WorkflowService);
    // The survivor polls every 500 ms, the victim every 50: the victim is mostly first at a
    // tick and fires it all, so the open transaction a kill meets is mostly its own.
    const [, other] = await Promise.all([start(prefix), start(prefix, 500)]);
    const from = tickAt(Date.now()) + 2 * PERIOD; // the first tick both processes certainly saw coming
    await allFired(prefix, from, 'the first tick');

    // The runs of each tick transaction a kill cut off.
    const cuts: TickRun[][] = [];
    let kills = 0;
    while (cuts.length < 3 && kills < 10) {
      const victim = processes.find((p) => p !== other && p.child.exitCode === null && p.child.signalCode === null)!;
      const open = await killMidTick(prefix, () => victim.child.kill('SIGKILL'));
      kills++;
      await victim.kill();
      // Whether their transaction was cut off or had just committed, the runs open at the kill
      // exist: fired again at once by the other process (under another key) if it was.
      const runIds = open.map((r) => r.id);
      await waitFor(
        async () => (await existing(prefix, runIds)) === runIds.length,
        'the runs open at the kill',
        30_000,
        20,
      );
      const cut = await cutOff(prefix, open);
      if (cut.length) cuts.push(cut);
      await start(prefix); // the killed process comes back, as a restarted pod would
    }
    const to = tickAt(Date.now()) + PERIOD;
    await allFired(prefix, to, 'the last tick');

    const bySchedule = await checkRuns(prefix);
    // A process was running all along: no tick is missing, none fired twice, none late-collapsed.
    const gaps = [...bySchedule].flatMap(([s, list]) => missing(list, from, to).map((t) => `${s}-${t}`));
    expect(gaps).toEqual([]);
    console.log(
      `${kills} kill(s) with a tick transaction open, ${cuts.length} cut one off ` +
        `(${cuts.map((c) => c.length).join(', ')} runs uncommitted, never committed); ` +
        `${(to - from) / PERIOD + 1} ticks x ${SCHEDULES} schedules, each fired once`,
    );
    expect(cuts.length).toBeGreaterThanOrEqual(1);
    // The runs a cut-off transaction held exist once each, written by another transaction.
    const all = new Map((await tickRuns(admin, prefix)).map((r) => [r.id, r]));
    for (const r of cuts.flat())
      expect({ id: r.id, key: all.get(r.id)?.key === r.key }).toEqual({ id: r.id, key: false });
    expect(await service.status(cuts[0][0].id)).toMatchObject({ scheduleId: cuts[0][0].schedule });
  }, 180_000);

  it('the database SIGKILLed mid-tick and restarted: ticks before and after fire once each, those it was down for collapse into one late run', async () => {
    const prefix = 'dbkill_';
    await Promise.all([start(prefix), start(prefix)]);
    const from = tickAt(Date.now()) + 2 * PERIOD;
    await allFired(prefix, from, 'the first tick');

    const outages: Array<{ killAt: number; upAt: number; cut: TickRun[] }> = [];
    // A kill lands after the tick's COMMIT now and then (the commit races the signal): up to
    // six outages, until one cut a tick transaction off.
    while (outages.length < 6 && !outages.some((o) => o.cut.length)) {
      let killAt = 0;
      let stopped!: Promise<void>;
      const open = await killMidTick(prefix, () => {
        killAt = Date.now();
        stopped = db.stop('SIGKILL');
      });
      await stopped;
      // Down for more than a tick on purpose, so that ticks pass while nothing can fire them.
      await new Promise((r) => setTimeout(r, 2.5 * PERIOD - (Date.now() - killAt)));
      await db.start();
      const upAt = Date.now();
      admin = await reconnect(admin);
      dirty = await reconnect(dirty);
      await dirty.query('SET SESSION TRANSACTION ISOLATION LEVEL READ UNCOMMITTED');
      // Both processes are back by themselves: the next tick after the restart fires for all.
      await allFired(prefix, tickAt(upAt) + 2 * PERIOD, 'the ticks after the restart');
      outages.push({ killAt, upAt, cut: await cutOff(prefix, open) });
    }
    const to = tickAt(Date.now()) + PERIOD;
    await allFired(prefix, to, 'the last tick');

    const bySchedule = await checkRuns(prefix);
    let collapsed = 0;
    for (const [s, list] of bySchedule) {
      const explained = new Set<number>();
      for (const o of outages) {
        const lastBefore = Math.max(...list.filter((r) => r.tick <= o.killAt).map((r) => r.tick));
        const resumed = list.find((r) => r.tick > o.killAt)!;
        const skipped = missing(list, lastBefore + PERIOD, resumed.tick - PERIOD);
        // Up to the kill the processes kept up: at most the tick in flight is missing before it.
        expect(lastBefore).toBeGreaterThanOrEqual(tickAt(o.killAt) - PERIOD);
        // Down for more than a period: ticks passed that nothing could fire, and they are not replayed...
        expect({ s, skipped: skipped.length > 0 }).toEqual({ s, skipped: true });
        // ...except the latest, once, late: the first run after the restart is the latest tick at its firing.
        expect(resumed.submittedAt).toBeGreaterThanOrEqual(o.upAt - PERIOD);
        expect(resumed.submittedAt).toBeGreaterThanOrEqual(resumed.tick);
        expect(resumed.submittedAt).toBeLessThan(resumed.tick + PERIOD);
        for (const t of skipped) explained.add(t);
        collapsed += skipped.length;
      }
      // Between the outages, and after the last, every tick fired.
      expect({ s, lost: missing(list, from, to).filter((t) => !explained.has(t)) }).toEqual({ s, lost: [] });
    }
    // The runs the database rolled back were not written later: their ticks were among those collapsed.
    for (const o of outages)
      if (o.cut.length)
        expect(
          await existing(
            prefix,
            o.cut.map((r) => r.id),
          ),
        ).toBe(0);
    console.log(
      `${outages.length} database kill(s) with a tick transaction open, ` +
        `${outages.filter((o) => o.cut.length).length} cut one off (${outages.map((o) => o.cut.length).join(', ')} runs uncommitted, never committed); down ${outages.map((o) => o.upAt - o.killAt).join(', ')} ms; ` +
        `${(to - from) / PERIOD + 1} ticks x ${SCHEDULES} schedules, ${collapsed} ticks collapsed`,
    );
    expect(outages.some((o) => o.cut.length)).toBe(true);
  }, 240_000);

  async function reconnect(conn: Connection): Promise<Connection> {
    conn.destroy();
    return rawConnection(db.url);
  }
});
