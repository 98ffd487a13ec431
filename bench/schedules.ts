/**
 * `npm run bench:schedules`: what a table of 10,000 schedules costs the claim loop. The
 * chain (BENCH_RUNS × BENCH_STEPS, 1,000 × 10) in one worker process, every claim
 * transaction timed, beside:
 *   none    no schedule;
 *   idle    BENCH_SCHEDULES (10,000) hourly crons, at a minute half an hour away: in ix_due,
 *           none due during the run (the tick's index probe finds nothing);
 *   firing  as many crons due once a minute (six fields, `S * * * * *`), S placed about a
 *           second into the chain: one tick of all of them fires while it runs, in the
 *           chain's own worker process. Their runs are of a workflow no process here runs,
 *           so they stay queued: the firing is the cost, not running them.
 * Fresh tables for every measurement (the schedules upserted by a worker: false app at
 * startup, one statement); the variants interleaved, in a rotating order, BENCH_SCHED_REPEAT
 * (3) times, because this machine's disk is noisy. Prints a markdown table and the medians.
 *   BENCH_SCHEDULES, BENCH_SCHED_REPEAT, BENCH_SCHED_VARIANTS (none,idle,firing), BENCH_RUNS,
 *   BENCH_STEPS, BENCH_CONCURRENCY (16), BENCH_POLL_MS (50), WORKFLOW_DB_URL / BENCH_MYSQL_URL.
 *
 * Reaches past the public API for measurement only: it wraps the storage instance's
 * `claimBatch` (WorkflowService's private `storage` field) to time each claim.
 */
import 'reflect-metadata';
import { Inject, Injectable, Module, type OnModuleInit } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import {
  type ScheduleSpec,
  type Step,
  StepOutcome,
  StepRunner,
  WorkflowModule,
  type WorkflowModuleOptions,
  WorkflowService,
} from 'nestjs-durable-workflow';
import {
  type ChainPayload,
  ChainTracker,
  cpuWindow,
  envInt,
  envList,
  fmtCpu,
  loadConfig,
  Samples,
  sleep,
  summarize,
  wallNow,
  withTimeout,
} from './common.js';
import { dropWorkflowTables, scalar, withMysql } from './db.js';

type Variant = 'none' | 'idle' | 'firing';

const PREFIX = 'bench_sch_';
const cfg = loadConfig();
const scheduleCount = envInt('BENCH_SCHEDULES', 10_000);
const repeat = Math.max(1, envInt('BENCH_SCHED_REPEAT', 3));
const probes = envInt('BENCH_SCHED_PROBES', 200);
const variants = envList('BENCH_SCHED_VARIANTS', 'none,idle,firing') as Variant[];
for (const v of variants) if (!['none', 'idle', 'firing'].includes(v)) throw new Error(`unknown variant ${v}`);
/** How far into the chain the firing variant's tick is placed. */
const TICK_LEAD_MS = 1_000;
/** The slowest upsert of the schedules so far (a guess before the first). */
let slowestUpsertMs = 3_000;

let tracker: ChainTracker;
/** Start time, duration and jobs claimed of every claim transaction. */
let claims: { at: number[]; ms: number[]; jobs: number[] };
/** The probe runs' starts, by run id. */
const pinged = new Map<string, (at: number) => void>();

@Injectable()
@StepRunner('chain')
class ChainRunner {
  runStep(step: Step<ChainPayload>) {
    tracker.started(step.stepNumber, step.payload);
    if (tracker.isLast(step.stepNumber)) {
      tracker.finished();
      return StepOutcome.succeed(null);
    }
    return StepOutcome.continue(tracker.next());
  }
}

/** One step, reporting when it started: the probe of a claim on an idle queue. */
@Injectable()
@StepRunner('ping')
class PingRunner {
  runStep(step: Step) {
    pinged.get(step.runId)?.(wallNow());
    return StepOutcome.succeed(null);
  }
}

interface Internals {
  storage?: { claimBatch: (...a: any[]) => Promise<{ jobs: unknown[] }> };
}

/** Times each claim transaction (measurement only). */
@Injectable()
class ClaimProbe implements OnModuleInit {
  constructor(@Inject(WorkflowService) private readonly svc: WorkflowService) {}
  onModuleInit(): void {
    const storage = (this.svc as unknown as Internals).storage;
    if (!storage) throw new Error('bench: WorkflowService has no `storage` field any more; update bench/schedules.ts');
    const original = storage.claimBatch.bind(storage);
    storage.claimBatch = async (...args: any[]) => {
      const s = wallNow();
      const claimed = await original(...args);
      claims.at.push(s);
      claims.ms.push(wallNow() - s);
      claims.jobs.push(claimed.jobs.length);
      return claimed;
    };
  }
}

async function createApp(options: WorkflowModuleOptions, providers: Array<new (...a: any[]) => unknown>) {
  @Module({ imports: [WorkflowModule.forRoot(options)], providers })
  class ScheduleBenchModule {}
  return NestFactory.createApplicationContext(ScheduleBenchModule, { logger: ['error', 'warn'] });
}

function specs(variant: Variant, tickMs: number): ScheduleSpec[] {
  if (variant === 'none') return [];
  const at = new Date(tickMs);
  // idle: hourly, at a minute 30 minutes away; firing: every minute at the tick's second.
  const cron = variant === 'idle' ? `${(at.getUTCMinutes() + 30) % 60} * * * *` : `${at.getUTCSeconds()} * * * * *`;
  return Array.from({ length: scheduleCount }, (_, i) => ({
    id: `bench-${i}`,
    workflow: 'sink',
    cron,
    overlap: 'allow',
    input: { i },
  }));
}

interface Trial {
  variant: Variant;
  rep: number;
  schedules: number;
  upsertMs: number;
  stepsPerSec: number;
  claims: ReturnType<typeof summarize>;
  /** One run at a time after the chain: submit to step start, and its claims. */
  probe: ReturnType<typeof summarize>;
  probeClaims: ReturnType<typeof summarize>;
  /** Claims that started between the tick and its last run (firing only). */
  claimsWhileFiring?: ReturnType<typeof summarize>;
  cpu: ReturnType<ReturnType<typeof cpuWindow>>;
  explain: string;
  /** firing: how many runs the tick started, from the tick to its last one, and where the tick fell in the chain. */
  fired?: { runs: number; firstMs: number; lastMs: number; tickIntoChainMs: number; chainMs: number };
}

async function trial(variant: Variant, rep: number): Promise<Trial> {
  await dropWorkflowTables(cfg.mysqlUrl, PREFIX);
  // The tick the firing variant fires: far enough ahead for the upsert (as long as the
  // slowest one so far, twice over) and the worker's start.
  const tickMs = Math.ceil((Date.now() + 3_000 + 2 * slowestUpsertMs) / 1000) * 1000;
  const declared = specs(variant, tickMs);
  const u0 = wallNow();
  const setup = await createApp(
    {
      connection: { url: cfg.mysqlUrl },
      tablePrefix: PREFIX,
      worker: false,
      workflows: ['chain', 'ping', 'sink'],
      schedules: declared,
    },
    [],
  );
  const upsertMs = wallNow() - u0;
  if (declared.length) slowestUpsertMs = Math.max(slowestUpsertMs, upsertMs);
  await setup.close();
  const explain = await withMysql(cfg.mysqlUrl, async (c) => {
    await c.query(`ANALYZE TABLE \`${PREFIX}schedules\``);
    const [rows] = await c.query(
      `EXPLAIN SELECT * FROM \`${PREFIX}schedules\` FORCE INDEX (\`ix_due\`)
        WHERE \`next_run_at\` <= ? AND \`paused\` = 0 ORDER BY \`next_run_at\` LIMIT 50 FOR UPDATE SKIP LOCKED`,
      [Date.now()],
    );
    const r = (rows as Array<Record<string, unknown>>)[0] ?? {};
    return `type=${r.type} key=${r.key} rows=${r.rows}`;
  });

  tracker = new ChainTracker(cfg.runs, cfg.steps, cfg.payloadBytes);
  claims = { at: [], ms: [], jobs: [] };
  const app = await createApp(
    {
      connection: { url: cfg.mysqlUrl },
      tablePrefix: PREFIX,
      worker: { concurrency: cfg.concurrency, pollIntervalMs: cfg.pollIntervalMs },
      workflows: ['sink'],
    },
    [ChainRunner, PingRunner, ClaimProbe],
  );
  const svc = app.get(WorkflowService);
  if (variant === 'firing') {
    const wait = tickMs - TICK_LEAD_MS - Date.now();
    if (wait > 0) await sleep(wait);
  }
  const cpu = cpuWindow();
  const t0 = wallNow();
  for (let i = 0; i < cfg.runs; i += cfg.submitBatch) {
    const n = Math.min(cfg.submitBatch, cfg.runs - i);
    await svc.submitMany(
      'chain',
      Array.from({ length: n }, () => ({ input: tracker.input() })),
    );
  }
  await withTimeout(tracker.done, cfg.timeoutS * 1000, `${cfg.runs} runs (${tracker.completed} done)`);
  const chainMs = tracker.lastAt - t0;
  const cpuShare = cpu();
  const inWindow = (at: number) => at >= t0 && at <= tracker.lastAt;
  const windowClaims = claims.ms.filter((_, i) => inWindow(claims.at[i]));
  let fired: Trial['fired'];
  let claimsWhileFiring: Trial['claimsWhileFiring'];
  if (variant === 'firing') {
    // Every schedule fires its tick once; wait for the last of them if the chain ended first.
    const count = () =>
      withMysql(cfg.mysqlUrl, (c) =>
        scalar(c, `SELECT COUNT(*) FROM \`${PREFIX}runs\` WHERE \`schedule_id\` IS NOT NULL`),
      );
    const deadline = Date.now() + 120_000;
    while ((await count()) < scheduleCount && Date.now() < deadline) await sleep(100);
    const span = await withMysql(cfg.mysqlUrl, async (c) => {
      const [rows] = await c.query(
        `SELECT COUNT(*) AS n, MIN(\`submitted_at\`) AS first, MAX(\`submitted_at\`) AS last FROM \`${PREFIX}runs\` WHERE \`schedule_id\` IS NOT NULL`,
      );
      return (rows as Array<{ n: number; first: number; last: number }>)[0];
    });
    // submitted_at is each tick transaction's start; the runs fall in [tick, last + one transaction].
    const tickWall = tickMs; // Date.now() and wallNow() share the epoch
    fired = {
      runs: Number(span.n),
      firstMs: Number(span.first) - tickMs,
      lastMs: Number(span.last) - tickMs,
      tickIntoChainMs: tickWall - t0,
      chainMs,
    };
    const firingEnd = Number(span.last) + 100;
    claimsWhileFiring = summarize(claims.ms.filter((_, i) => claims.at[i] >= tickWall && claims.at[i] <= firingEnd));
  }
  // One run at a time on an idle queue: submit to its step's start, and the claims that took them.
  const p0 = wallNow();
  const probe = new Samples(probes);
  for (let i = 0; i < probes; i++) {
    const runId = `ping-${i}`;
    const started = new Promise<number>((r) => pinged.set(runId, r));
    const s0 = wallNow();
    await svc.submit('ping', { runId, input: null });
    probe.add((await started) - s0);
    pinged.delete(runId);
  }
  const probeClaims = claims.ms.filter((_, i) => claims.at[i] >= p0 && claims.jobs[i] > 0);
  await app.close();
  return {
    probe: probe.summary(),
    probeClaims: summarize(probeClaims),
    variant,
    rep,
    schedules: declared.length,
    upsertMs,
    stepsPerSec: (cfg.runs * cfg.steps) / (chainMs / 1000),
    claims: summarize(windowClaims),
    claimsWhileFiring,
    cpu: cpuShare,
    explain,
    fired,
  };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const ms = (n: number | undefined) => (n === undefined || Number.isNaN(n) ? '–' : n.toFixed(2));

const trials: Trial[] = [];
for (let rep = 1; rep <= repeat; rep++) {
  // Rotate the order, so that no variant always runs first (or after the same one).
  const order = variants.map((_, i) => variants[(i + rep - 1) % variants.length]);
  for (const v of order) {
    const t = await trial(v, rep);
    trials.push(t);
    process.stderr.write(
      `rep ${rep} ${v}: ${t.stepsPerSec.toFixed(0)} steps/s, claim p50 ${ms(t.claims.p50)} ms, submit→start p50 ${ms(t.probe.p50)} ms` +
        (t.fired
          ? `, ${t.fired.runs} ticks fired in ${t.fired.lastMs} ms, ${t.fired.tickIntoChainMs.toFixed(0)} ms into the chain`
          : '') +
        '\n',
    );
  }
}
await dropWorkflowTables(cfg.mysqlUrl, PREFIX);

const lines = [
  `chain ${cfg.runs} × ${cfg.steps} in one worker process (concurrency ${cfg.concurrency}, pollIntervalMs ${cfg.pollIntervalMs}), ` +
    `then ${probes} single-step runs one at a time; beside 0 or ${scheduleCount} schedules; ${repeat} interleaved repetitions; ` +
    'a claim is one claimBatch transaction',
  '',
  '| variant | rep | schedules | upsert ms | chain steps/s | chain claims p50 / p99 ms (n) | claims while firing p50 / p99 / max ms (n) | one at a time: submit→start p50 / p99 ms | its claims p50 / p99 ms | tick: runs, first–last ms after it, at ms into the chain | CPU self/db/other | EXPLAIN of the tick query |',
  '|---|---:|---:|---:|---:|---|---|---|---|---|---|---|',
  ...trials.map(
    (t) =>
      `| ${t.variant} | ${t.rep} | ${t.schedules} | ${t.upsertMs.toFixed(0)} | ${t.stepsPerSec.toFixed(0)} | ` +
      `${ms(t.claims.p50)} / ${ms(t.claims.p99)} (${t.claims.count}) | ` +
      `${t.claimsWhileFiring ? `${ms(t.claimsWhileFiring.p50)} / ${ms(t.claimsWhileFiring.p99)} / ${ms(t.claimsWhileFiring.max)} (${t.claimsWhileFiring.count})` : '–'} | ` +
      `${ms(t.probe.p50)} / ${ms(t.probe.p99)} | ${ms(t.probeClaims.p50)} / ${ms(t.probeClaims.p99)} | ` +
      `${t.fired ? `${t.fired.runs}, ${t.fired.firstMs}–${t.fired.lastMs}, at ${t.fired.tickIntoChainMs.toFixed(0)} of ${t.fired.chainMs.toFixed(0)}` : '–'} | ${fmtCpu(t.cpu)} | ${t.explain} |`,
  ),
  '',
  '| variant | median chain steps/s | vs none | median chain claim p50 ms | median submit→start p50 ms | median probe claim p50 ms |',
  '|---|---:|---:|---:|---:|---:|',
];
const base = median(trials.filter((t) => t.variant === 'none').map((t) => t.stepsPerSec));
for (const v of variants) {
  const ts = trials.filter((t) => t.variant === v);
  const sps = median(ts.map((t) => t.stepsPerSec));
  lines.push(
    `| ${v} | ${sps.toFixed(0)} | ${Number.isFinite(base) ? `${(sps / base).toFixed(2)}×` : '–'} | ${ms(median(ts.map((t) => t.claims.p50)))} | ` +
      `${ms(median(ts.map((t) => t.probe.p50)))} | ${ms(median(ts.map((t) => t.probeClaims.p50)))} |`,
  );
}
process.stdout.write(`${lines.join('\n')}\n`);
