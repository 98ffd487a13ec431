/**
 * Our module, used as an application would: a Nest application context with
 * WorkflowModule.forRoot and a @StepRunner, imported by package name (dist/).
 *
 * Two things reach past the public API, for measurement only, and say so:
 * - the SqlClient's `conflictRetries` counter, through WorkflowService's private
 *   `storage` field (WorkflowStorage is not exported);
 * - in the backlog section, a wrapper around the storage instance's `claimBatch`
 *   that times each claim transaction.
 */
import { Inject, Injectable, Module, type OnModuleInit, type Provider } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { createHash } from 'node:crypto';
import { DataSource, type DataSourceOptions } from 'typeorm';
import {
  type Step,
  StepOutcome,
  StepRunner,
  WorkflowModule,
  type WorkflowModuleOptions,
  WorkflowService,
} from 'nestjs-durable-workflow';
import {
  type BacklogFill,
  type BacklogResult,
  type BenchConfig,
  type ChainPayload,
  type ChainResult,
  chainResult,
  ChainTracker,
  cpuWindow,
  type ParentMessage,
  Samples,
  type SubmitResult,
  makePad,
  peakRssMb,
  send,
  prefillNote,
  startProfiler,
  wallNow,
  withTimeout,
} from './common.js';
import {
  describePerStep,
  dropWorkflowTables,
  innodbCounters,
  perStep,
  scalar,
  statementCounters,
  waitForQuietInnodb,
  withMysql,
} from './db.js';

export const PREFIX = 'bench_';
const LOGGER = ['error', 'warn'] as const;

let tracker: ChainTracker;

/** BENCH_STEP_MS: simulated work per step (e.g. a model call), so the latency can be read unsaturated. */
const STEP_MS = Number(process.env.BENCH_STEP_MS ?? 0);
/** BENCH_STEP_JITTER=1: each step takes 0.5–1.5 × BENCH_STEP_MS, so runs drift apart as real ones do. */
const STEP_JITTER = process.env.BENCH_STEP_JITTER === '1';

@Injectable()
@StepRunner('chain')
class ChainRunner {
  async runStep(step: Step<ChainPayload>) {
    tracker.started(step.stepNumber, step.payload);
    if (STEP_MS > 0) await new Promise((r) => setTimeout(r, STEP_MS * (STEP_JITTER ? 0.5 + Math.random() : 1)));
    if (tracker.isLast(step.stepNumber)) {
      tracker.finished();
      return StepOutcome.succeed(null);
    }
    return StepOutcome.continue(tracker.next());
  }
}

/** One step per run: every step is a claim (no in-place continuation), used by the backlog section. */
@Injectable()
@StepRunner('single')
class SingleRunner {
  runStep(step: Step<ChainPayload>) {
    tracker.started(step.stepNumber, step.payload);
    tracker.finished();
    return StepOutcome.succeed(null);
  }
}

function moduleOptions(
  cfg: BenchConfig,
  worker: WorkflowModuleOptions['worker'],
  extra: Partial<WorkflowModuleOptions> = {},
) {
  const options: WorkflowModuleOptions = {
    connection: { url: cfg.mysqlUrl, ...(cfg.oursPool ? { poolSize: cfg.oursPool } : {}) },
    tablePrefix: PREFIX,
    worker,
    ...extra,
  };
  return options;
}

function describeOptions(o: WorkflowModuleOptions): string {
  const w = o.worker
    ? `worker { concurrency: ${o.worker.concurrency}, pollIntervalMs: ${o.worker.pollIntervalMs} }${STEP_MS ? `, steps take ${STEP_JITTER ? `${STEP_MS / 2}–${STEP_MS * 1.5}` : STEP_MS} ms` : ''}`
    : 'worker: false';
  const pool = o.connection?.poolSize ? `poolSize ${o.connection.poolSize}` : 'poolSize default (10)';
  return `${w}, ${pool}`;
}

async function createApp(options: WorkflowModuleOptions, providers: Provider[]) {
  @Module({ imports: [WorkflowModule.forRoot(options)], providers })
  class BenchModule {}
  return NestFactory.createApplicationContext(BenchModule, { logger: [...LOGGER] });
}

interface Internals {
  storage?: {
    ready(): Promise<{ client: { conflictRetries: number } }>;
    claimBatch: (...a: any[]) => Promise<{ jobs: any[]; more: boolean }>;
  };
}

/** The SqlClient's deadlock/lock-wait retry counter, read through WorkflowService's private `storage`. */
async function conflictRetries(svc: WorkflowService): Promise<number | null> {
  const storage = (svc as unknown as Internals).storage;
  if (!storage) return null;
  const ctx = await storage.ready();
  return typeof ctx.client?.conflictRetries === 'number' ? ctx.client.conflictRetries : null;
}

function specs(tr: ChainTracker, from: number, to: number) {
  const out: Array<{ input: ChainPayload }> = [];
  for (let i = from; i < to; i++) out.push({ input: tr.input() });
  return out;
}

async function submitAll(svc: WorkflowService, workflow: string, cfg: BenchConfig, tr: ChainTracker, runs: number) {
  for (let i = 0; i < runs; i += cfg.submitBatch) {
    await svc.submitMany(workflow, specs(tr, i, Math.min(runs, i + cfg.submitBatch)));
  }
}

// ------------------------------------------------------------------ 1. chain

/**
 * The chain on our module. `notrace`: the app hands the module its own TypeORM
 * DataSource with mysql2's `trace: false` (no stack captured per query), an option a
 * user has today; shows what the driver's default tracing costs.
 */
export async function oursChain(cfg: BenchConfig, variant: 'default' | 'notrace' = 'default'): Promise<ChainResult> {
  await dropWorkflowTables(cfg.mysqlUrl, PREFIX);
  let dataSource: DataSource | undefined;
  if (variant === 'notrace') {
    dataSource = new DataSource({
      type: 'mysql',
      url: cfg.mysqlUrl,
      poolSize: cfg.oursPool ?? 10,
      supportBigNumbers: true,
      bigNumberStrings: false,
      trace: false,
    } as DataSourceOptions);
    await dataSource.initialize();
  }
  const workerOpts = { concurrency: cfg.concurrency, pollIntervalMs: cfg.pollIntervalMs };
  const options = dataSource
    ? { ...moduleOptions(cfg, workerOpts), connection: undefined, dataSource }
    : moduleOptions(cfg, workerOpts);
  const settings = dataSource
    ? `${describeOptions(options).replace('poolSize default (10)', `own DataSource { trace: false, poolSize ${cfg.oursPool ?? 10} }`)}, submitMany ×${cfg.submitBatch}, MariaDB`
    : `${describeOptions(options)}, submitMany ×${cfg.submitBatch}, MariaDB`;
  await send({ type: 'settings', settings });
  tracker = new ChainTracker(cfg.runs, cfg.steps, cfg.payloadBytes);
  let filled = '';
  if (cfg.prefill) {
    // Queued by an app without a worker, written back to disk, before the worker's app starts.
    const t = wallNow();
    const submitter = await createApp({ ...options, worker: false, workflows: ['chain'] }, []);
    await submitAll(submitter.get(WorkflowService), 'chain', cfg, tracker, cfg.runs);
    await submitter.close();
    filled = prefillNote(cfg.runs, wallNow() - t);
    await waitForQuietInnodb(cfg.mysqlUrl);
  }
  // With a prefill the worker drains from the moment its app starts: the counters and CPU
  // window open before it (the time counts from the first step).
  const early = cfg.prefill ? { counters: await statementCounters(cfg.mysqlUrl), cpu: cpuWindow() } : undefined;
  const app = await createApp(options, [ChainRunner]);
  const svc = app.get(WorkflowService);
  const retries0 = await conflictRetries(svc);
  const counters0 = early?.counters ?? (await statementCounters(cfg.mysqlUrl));
  const stopProfiler = await startProfiler(cfg.profileFile);
  const t0 = wallNow();
  const cpu = early?.cpu ?? cpuWindow();
  if (!cfg.prefill) await submitAll(svc, 'chain', cfg, tracker, cfg.runs);
  const submitMs = wallNow() - t0;
  await withTimeout(tracker.done, cfg.timeoutS * 1000, `${cfg.runs} runs to finish (${tracker.completed} did)`);
  const elapsedMs = tracker.lastAt - (cfg.prefill ? tracker.firstStepAt : t0);
  const cpuShare = cpu();
  await stopProfiler();
  const retries1 = await conflictRetries(svc);
  await app.close();
  await dataSource?.destroy();
  const serverPerStep = perStep(counters0, await statementCounters(cfg.mysqlUrl), cfg.runs * cfg.steps);
  const notes = [cfg.prefill ? filled : `submit took ${submitMs.toFixed(0)} ms of it`];
  if (retries0 !== null && retries1 !== null) notes.push(`conflict retries ${retries1 - retries0}`);
  const described = describePerStep(serverPerStep);
  if (described) notes.push(described);
  notes.push(...(await verify(cfg, cfg.runs)));
  return chainResult({
    system: variant === 'notrace' ? 'ours (trace: false)' : 'ours',
    settings,
    runs: cfg.runs,
    steps: cfg.steps,
    elapsedMs,
    tracker,
    cpu: cpuShare,
    serverPerStep,
    notes,
  });
}

/** Every run succeeded and the live queue is empty once the app has drained. */
async function verify(cfg: BenchConfig, runs: number): Promise<string[]> {
  return withMysql(cfg.mysqlUrl, async (c) => {
    const ok = await scalar(c, `SELECT COUNT(*) FROM \`${PREFIX}runs\` WHERE \`state\` = 'succeeded'`);
    const left = await scalar(c, `SELECT COUNT(*) FROM \`${PREFIX}jobs\``);
    const dead = await scalar(c, `SELECT COUNT(*) FROM \`${PREFIX}dead\``);
    const out: string[] = [];
    if (ok !== runs || left !== 0 || dead !== 0)
      out.push(`VERIFY FAILED: ${ok}/${runs} runs succeeded, ${left} jobs left, ${dead} dead`);
    else out.push('verified: all runs succeeded, queue empty');
    return out;
  });
}

// ------------------------------------------------------------------ 3. submission

export async function oursSubmit(cfg: BenchConfig): Promise<SubmitResult[]> {
  await dropWorkflowTables(cfg.mysqlUrl, PREFIX);
  const options = moduleOptions(cfg, false, { workflows: ['chain'] });
  const base = `${describeOptions(options)}, ${cfg.submitRuns} single-step runs, ${cfg.payloadBytes} B input`;
  await send({ type: 'settings', settings: base });
  const app = await createApp(options, []);
  const svc = app.get(WorkflowService);
  const pad = makePad(cfg.payloadBytes);
  const input = () => ({ t: 0, p: pad });
  const results: SubmitResult[] = [];
  const stopProfiler = await startProfiler(cfg.profileFile);
  const truncate = () =>
    withMysql(cfg.mysqlUrl, async (c) => {
      await c.query(`TRUNCATE TABLE \`${PREFIX}jobs\``);
      await c.query(`TRUNCATE TABLE \`${PREFIX}runs\``);
    });

  // a) N concurrent callers of submit(), one run per call.
  {
    await truncate();
    const calls = new Samples(cfg.submitRuns);
    let next = 0;
    const t0 = wallNow();
    const cpu = cpuWindow();
    await Promise.all(
      Array.from({ length: cfg.submitConcurrency }, async () => {
        while (next < cfg.submitRuns) {
          next++;
          const s = wallNow();
          await svc.submit('chain', { input: input() });
          calls.add(wallNow() - s);
        }
      }),
    );
    const elapsedMs = wallNow() - t0;
    const cpuShare = cpu();
    results.push({
      section: 'submit',
      system: 'ours',
      settings: base,
      mode: `submit(), ${cfg.submitConcurrency} concurrent callers`,
      runs: cfg.submitRuns,
      elapsedMs,
      runsPerSec: cfg.submitRuns / (elapsedMs / 1000),
      callLatency: calls.summary(),
      cpu: cpuShare,
      peakRssMb: peakRssMb(),
      notes: await countRuns(cfg, cfg.submitRuns),
    });
  }

  // b) submitMany() in batches, one caller.
  {
    await truncate();
    const calls = new Samples(Math.ceil(cfg.submitRuns / cfg.submitBatch));
    const t0 = wallNow();
    const cpu = cpuWindow();
    for (let i = 0; i < cfg.submitRuns; i += cfg.submitBatch) {
      const n = Math.min(cfg.submitBatch, cfg.submitRuns - i);
      const s = wallNow();
      await svc.submitMany(
        'chain',
        Array.from({ length: n }, () => ({ input: input() })),
      );
      calls.add(wallNow() - s);
    }
    const elapsedMs = wallNow() - t0;
    const cpuShare = cpu();
    results.push({
      section: 'submit',
      system: 'ours',
      settings: base,
      mode: `submitMany(), batches of ${cfg.submitBatch}, 1 caller`,
      runs: cfg.submitRuns,
      elapsedMs,
      runsPerSec: cfg.submitRuns / (elapsedMs / 1000),
      callLatency: calls.summary(),
      cpu: cpuShare,
      peakRssMb: peakRssMb(),
      notes: await countRuns(cfg, cfg.submitRuns),
    });
  }
  await stopProfiler();
  await app.close();
  return results;
}

async function countRuns(cfg: BenchConfig, expected: number): Promise<string[]> {
  return withMysql(cfg.mysqlUrl, async (c) => {
    const runs = await scalar(c, `SELECT COUNT(*) FROM \`${PREFIX}runs\``);
    const jobs = await scalar(c, `SELECT COUNT(*) FROM \`${PREFIX}jobs\``);
    return runs === expected && jobs === expected
      ? ['verified: every run and its step 0 stored']
      : [`VERIFY FAILED: ${runs} runs, ${jobs} jobs stored (expected ${expected})`];
  });
}

// ------------------------------------------------------------------ 4. backlog

const JOB_INSERT =
  'INSERT INTO `' +
  PREFIX +
  'jobs` (`id`, `queue`, `kind`, `state`, `priority`, `run_at`, `run_id`, `step_number`, `attempts`, ' +
  '`max_attempts`, `lease_token`, `lease_until`, `payload`, `headers`, `created_at`) VALUES ?';
const RUN_INSERT =
  'INSERT INTO `' +
  PREFIX +
  'runs` (`id`, `workflow`, `state`, `current_step`, `current_job_id`, `input_hash`, `headers`, ' +
  '`priority`, `max_attempts`, `submitted_at`, `updated_at`) VALUES ?';

/** Run ids that sort in submission order, as the module's generated (ULID) run ids do. */
function backlogRunId(i: number): string {
  return `bl-${String(i).padStart(8, '0')}`;
}

/** 26 ASCII characters that sort in insertion order, like the module's ULIDs. */
function backlogJobId(i: number): string {
  return `0BENCH${i.toString(36).toUpperCase().padStart(20, '0')}`;
}

/**
 * Fills the queue with `n` ready step-0 jobs of workflow 'single' (plus their runs rows)
 * straight through multi-row INSERTs matching lib/storage/schema/migrations.ts, and then
 * `cfg.backlogWaiting` more parked on a signal (state 3, no timeout), as a million runs
 * awaiting approval would be, `cfg.backlogDelayed` more delayed by a day (state 1, as after
 * `continueAfter`), and `cfg.backlogSchedules` hourly schedules of another workflow, none
 * due during the run.
 */
async function insertBacklog(cfg: BenchConfig, ready: number): Promise<number> {
  const n = ready + cfg.backlogWaiting + cfg.backlogDelayed;
  const parked = ready + cfg.backlogWaiting;
  const later = Date.now() + 86_400_000;
  const pad = makePad(cfg.payloadBytes);
  const payload = JSON.stringify({ t: 0, p: pad });
  const inputHash = createHash('sha256').update(payload).digest('hex');
  const now = Date.now();
  const start = now - n; // an accumulated backlog: older jobs first
  const t0 = wallNow();
  const insert = async (sql: string, row: (i: number) => unknown[]) =>
    withMysql(cfg.mysqlUrl, async (c) => {
      for (let i = 0; i < n; i += cfg.backlogInsertBatch) {
        const rows: unknown[][] = [];
        for (let j = i; j < Math.min(n, i + cfg.backlogInsertBatch); j++) rows.push(row(j));
        await c.query(sql, [rows]);
      }
    });
  await Promise.all([
    insert(RUN_INSERT, (i) => [
      backlogRunId(i),
      'single',
      'active',
      0,
      backlogJobId(i),
      inputHash,
      '{}',
      0,
      null,
      start + i,
      start + i,
    ]),
    insert(JOB_INSERT, (i) => [
      backlogJobId(i),
      'single',
      0,
      i < ready ? 0 : i < parked ? 3 : 1,
      0,
      i < ready ? start + i : i < parked ? Number.MAX_SAFE_INTEGER : later + i,
      backlogRunId(i),
      0,
      0,
      null,
      null,
      null,
      payload,
      '{}',
      start + i,
    ]),
  ]);
  await withMysql(cfg.mysqlUrl, async (c) => {
    for (let i = 0; i < cfg.backlogSchedules; i += cfg.backlogInsertBatch) {
      const rows: unknown[][] = [];
      for (let j = i; j < Math.min(cfg.backlogSchedules, i + cfg.backlogInsertBatch); j++)
        rows.push([`sched-${j}`, 'elsewhere', '30 * * * *', 'UTC', '{}', inputHash, '{}', 'skip', later + j, now, now]);
      await c.query(
        `INSERT INTO \`${PREFIX}schedules\` (\`id\`, \`workflow\`, \`cron\`, \`time_zone\`, \`input\`, \`input_hash\`, \`headers\`, \`overlap\`, \`next_run_at\`, \`created_at\`, \`updated_at\`) VALUES ?`,
        [rows],
      );
    }
    await c.query(`ANALYZE TABLE \`${PREFIX}jobs\`, \`${PREFIX}runs\``);
  });
  return wallNow() - t0;
}

let claimProbe: { times: Samples; jobs: number; claims: number; empty: number; firstAt: number; stopAt: number };

/** Wraps the storage instance's claimBatch to time each claim transaction (measurement only). */
@Injectable()
class ClaimProbe implements OnModuleInit {
  constructor(@Inject(WorkflowService) private readonly svc: WorkflowService) {}

  async onModuleInit(): Promise<void> {
    const storage = (this.svc as unknown as Internals).storage;
    if (!storage)
      throw new Error('bench: WorkflowService has no `storage` field any more; update bench/ours.ts ClaimProbe');
    const original = storage.claimBatch.bind(storage);
    storage.claimBatch = async (...args: any[]) => {
      const s = wallNow();
      if (claimProbe.firstAt === 0) claimProbe.firstAt = s;
      const claimed = await original(...args);
      if (claimProbe.stopAt === 0 || s < claimProbe.stopAt) {
        claimProbe.claims++;
        claimProbe.jobs += claimed.jobs.length;
        if (claimed.jobs.length === 0) claimProbe.empty++;
        claimProbe.times.add(wallNow() - s);
      }
      return claimed;
    };
  }
}

/**
 * Fresh tables, created through the module itself (a worker: false app), then filled
 * with `backlog` ready steps behind its back. Runs in its own process before the
 * measuring one, so the insert's memory does not count in the worker's peak RSS.
 */
export async function oursBacklogFill(cfg: BenchConfig, backlog: number): Promise<BacklogFill> {
  await dropWorkflowTables(cfg.mysqlUrl, PREFIX);
  const setup = await createApp(moduleOptions(cfg, false, { workflows: ['single'] }), []);
  await setup.close();
  const insertMs = await insertBacklog(cfg, backlog);
  const quiet = await waitForQuietInnodb(cfg.mysqlUrl);
  const explain = await withMysql(cfg.mysqlUrl, async (c) => {
    const [rows] = await c.query(
      `EXPLAIN SELECT \`id\`, \`queue\`, \`kind\`, \`run_id\`, \`step_number\`, \`attempts\`, \`max_attempts\`, \`priority\`, \`payload\`, \`headers\`
        FROM \`${PREFIX}jobs\` FORCE INDEX (\`ix_claim\`) WHERE \`queue\` = 'single' AND \`state\` = 0
        ORDER BY \`priority\`, \`run_at\`, \`id\` LIMIT 32 FOR UPDATE SKIP LOCKED`,
    );
    const r = (rows as Array<Record<string, unknown>>)[0] ?? {};
    return `type=${r.type} key=${r.key} rows=${r.rows} extra=${r.Extra ?? ''}`;
  });
  return { section: 'backlog-fill', backlog, insertMs, explain, quiet };
}

export async function oursBacklog(cfg: BenchConfig, backlog: number, fill: BacklogFill): Promise<BacklogResult> {
  const { insertMs, explain } = fill;
  const workerOpts = { concurrency: cfg.concurrency, pollIntervalMs: cfg.pollIntervalMs };
  const drain = Math.min(backlog, cfg.backlogDrain);
  const waiting =
    (cfg.backlogWaiting ? `, ${cfg.backlogWaiting} more runs waiting for a signal in the same queue` : '') +
    (cfg.backlogDelayed ? `, ${cfg.backlogDelayed} more delayed a day` : '') +
    (cfg.backlogSchedules ? `, ${cfg.backlogSchedules} idle schedules` : '');
  const settings = `${describeOptions(moduleOptions(cfg, workerOpts))}, single-step runs, drain first ${drain}${waiting}`;
  await send({ type: 'settings', settings });

  tracker = new ChainTracker(drain, 1, cfg.payloadBytes);
  claimProbe = { times: new Samples(), jobs: 0, claims: 0, empty: 0, firstAt: 0, stopAt: 0 };
  const stopProfiler = await startProfiler(cfg.profileFile);
  const cpu = cpuWindow();
  const app = await createApp(moduleOptions(cfg, workerOpts), [SingleRunner, ClaimProbe]);
  await withTimeout(tracker.done, cfg.timeoutS * 1000, `${drain} backlog steps (${tracker.completed} done)`);
  const cpuShare = cpu();
  await stopProfiler();
  claimProbe.stopAt = tracker.lastAt;
  const elapsedMs = tracker.lastAt - claimProbe.firstAt;
  await app.close();
  const leftover = await withMysql(cfg.mysqlUrl, (c) => scalar(c, `SELECT COUNT(*) FROM \`${PREFIX}jobs\``));
  const claimMs = claimProbe.times.summary();
  return {
    section: 'backlog',
    system: 'ours',
    settings,
    backlog,
    insertMs,
    drained: tracker.completed,
    elapsedMs,
    stepsPerSec: tracker.completed / (elapsedMs / 1000),
    claims: claimProbe.claims,
    jobsPerClaim: claimProbe.claims ? claimProbe.jobs / claimProbe.claims : NaN,
    claimMs,
    explain,
    cpu: cpuShare,
    peakRssMb: peakRssMb(),
    notes: [
      `drain started after the server wrote back the insert (${(fill.quiet.waitedMs / 1000).toFixed(1)} s; then ${fill.quiet.dirtyPages} dirty pages, history ${fill.quiet.history})`,
      `${claimProbe.empty} empty claims`,
      `${leftover} jobs left queued after shutdown (expected about ${backlog + cfg.backlogWaiting + cfg.backlogDelayed - tracker.completed})`,
    ],
  };
}

// ------------------------------------------------------------------ 5. scale-out worker process

/**
 * One of K worker processes on one database. Index 0 also submits when told to and
 * reads the server's InnoDB counters around the run. Reports completions every 50 ms.
 */
export async function oursScaleWorker(cfg: BenchConfig, index: number, processes: number): Promise<void> {
  const options = moduleOptions(cfg, { concurrency: cfg.concurrency, pollIntervalMs: cfg.pollIntervalMs });
  if (index === 0) await send({ type: 'settings', settings: `${processes} process(es) × ${describeOptions(options)}` });
  tracker = new ChainTracker(cfg.runs, cfg.steps, cfg.payloadBytes, 0);
  const app = await createApp(options, [ChainRunner]);
  const svc = app.get(WorkflowService);
  const retries0 = (await conflictRetries(svc)) ?? 0;
  let server0: { deadlocks: number; rowLockWaits: number } | null = null;
  let reported = -1;
  const stopProfiler = await startProfiler(cfg.profileFile);
  const progress = setInterval(() => {
    if (tracker.completed !== reported) {
      reported = tracker.completed;
      void send({ type: 'progress', completed: tracker.completed, lastAt: tracker.lastAt });
    }
  }, 50);

  const stopped = new Promise<void>((resolve) => {
    process.on('message', async (msg: ParentMessage) => {
      if (msg.type === 'submit') {
        server0 = await innodbCounters(cfg.mysqlUrl);
        const t0 = wallNow();
        await submitAll(svc, 'chain', cfg, tracker, cfg.runs);
        await send({ type: 'submitted', t0, submitMs: wallNow() - t0 });
      } else if (msg.type === 'stop') {
        resolve();
      }
    });
  });
  await send({ type: 'ready', pid: process.pid });
  await stopped;
  clearInterval(progress);
  await stopProfiler();
  const retries = await conflictRetries(svc);
  await app.close();
  let server: { deadlocks: number; rowLockWaits: number } | null = null;
  if (index === 0 && server0) {
    const s1 = await innodbCounters(cfg.mysqlUrl);
    const s0: { deadlocks: number; rowLockWaits: number } = server0;
    if (s1) server = { deadlocks: s1.deadlocks - s0.deadlocks, rowLockWaits: s1.rowLockWaits - s0.rowLockWaits };
  }
  await send({
    type: 'final',
    completed: tracker.completed,
    executed: tracker.executed,
    lastAt: tracker.lastAt,
    samples: tracker.samples.values(),
    conflictRetries: retries === null ? null : retries - retries0,
    peakRssMb: peakRssMb(),
    server,
  });
}
