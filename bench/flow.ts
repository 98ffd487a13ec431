/**
 * `npm run bench:flow`: what flow control and step.transaction cost the chain.
 *
 * - chain: BENCH_RUNS (1000) runs of BENCH_STEPS (10) steps, BENCH_CONCURRENCY (16) slots,
 *   with no limits; then the same with BENCH_KEYS (100) concurrency keys and
 *   `keyConcurrency: 2` (goal: at least 70% of the unkeyed chain's steps/s).
 * - history: the unkeyed chain with `history` on (the default) and off (goal: on costs at
 *   most 10% of the steps/s).
 * - tx: the chain on a shared TypeORM DataSource, every step writing one row through
 *   `step.transaction`, against the same chain without it on the same DataSource.
 * - rate: a workflow with `rateLimit: { limit: BENCH_RATE (100), periodMs: 1000 }` fed
 *   more than it may start, for BENCH_RATE_S (60) seconds: starts per second held (goal:
 *   within 2% of the limit, never above).
 * Variants are interleaved BENCH_REPEAT (2) times, as this machine's disk is noisy.
 *   BENCH_FLOW_ONLY=chain,history,tx,rate picks sections. WORKFLOW_DB_URL / BENCH_MYSQL_URL.
 *   BENCH_FLOW_JSON=file also writes the chain section's samples there (bench/targets.ts reads them).
 */
import 'reflect-metadata';
import { Injectable, Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { writeFileSync } from 'node:fs';
import { DataSource } from 'typeorm';
import { type Step, StepOutcome, StepRunner, WorkflowModule, WorkflowService } from 'nestjs-durable-workflow';
import { loadConfig, wallNow } from './common.js';
import { dropWorkflowTables } from './db.js';

const PREFIX = 'bench_flow_';
const cfg = loadConfig();
const keys = Number(process.env.BENCH_KEYS ?? 100);
const repeat = Number(process.env.BENCH_REPEAT ?? 2);
const rate = Number(process.env.BENCH_RATE ?? 100);
const rateSeconds = Number(process.env.BENCH_RATE_S ?? 60);
const only = new Set((process.env.BENCH_FLOW_ONLY ?? 'chain,history,tx,rate').split(','));
const ledger = `\`${PREFIX}ledger\``;

let remaining = 0;
let allDone: () => void = () => undefined;
const starts: number[] = [];

function chainStep(step: Step<null>): StepOutcome {
  if (step.stepNumber + 1 < cfg.steps) return StepOutcome.continue(null);
  if (--remaining === 0) allDone();
  return StepOutcome.succeed(null);
}

@Injectable()
@StepRunner('plain')
class Plain {
  runStep(step: Step<null>) {
    return chainStep(step);
  }
}

@Injectable()
@StepRunner('keyed', { keyConcurrency: 2 })
class Keyed {
  runStep(step: Step<null>) {
    return chainStep(step);
  }
}

@Injectable()
@StepRunner('tx')
class Tx {
  runStep(step: Step<null>) {
    return step.transaction(async (manager) => {
      await manager.query(`INSERT INTO ${ledger} (run_id, step_number) VALUES (?, ?)`, [step.runId, step.stepNumber]);
      return chainStep(step);
    });
  }
}

@Injectable()
@StepRunner('rated', { rateLimit: { limit: rate, periodMs: 1000 } })
class Rated {
  runStep() {
    starts.push(wallNow());
    return StepOutcome.succeed(null);
  }
}

async function start(dataSource?: DataSource, worker = true, history = true) {
  @Module({
    imports: [
      WorkflowModule.forRoot({
        ...(dataSource ? { dataSource } : { connection: { url: cfg.mysqlUrl } }),
        tablePrefix: PREFIX,
        history,
        worker: worker ? { concurrency: cfg.concurrency, pollIntervalMs: cfg.pollIntervalMs } : false,
        workflows: ['rated'],
      }),
    ],
    providers: worker ? [Plain, Keyed, Tx, Rated] : [],
  })
  class FlowBenchModule {}
  return NestFactory.createApplicationContext(FlowBenchModule, { logger: ['error', 'warn'] });
}

/** Steps per second of one chain run: submitted in batches, timed from the first submit to the last ending. */
async function chain(service: WorkflowService, workflow: string, keyed: boolean): Promise<number> {
  remaining = cfg.runs;
  const done = new Promise<void>((r) => (allDone = r));
  const t0 = wallNow();
  for (let i = 0; i < cfg.runs; i += 500) {
    const specs = Array.from({ length: Math.min(500, cfg.runs - i) }, (_, j) => ({
      input: null,
      ...(keyed ? { concurrencyKey: `key-${(i + j) % keys}` } : {}),
    }));
    await service.submitMany(workflow, specs);
  }
  await done;
  return (cfg.runs * cfg.steps) / ((wallNow() - t0) / 1000);
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const fmt = (xs: number[]) => `${Math.round(median(xs))} steps/s (${xs.map((x) => Math.round(x)).join(', ')})`;

await dropWorkflowTables(cfg.mysqlUrl, PREFIX);
const lines: string[] = [
  `runs ${cfg.runs} x ${cfg.steps} steps, concurrency ${cfg.concurrency}, poll ${cfg.pollIntervalMs} ms, repeat ${repeat}`,
];

if (only.has('chain')) {
  const app = await start();
  const service = app.get(WorkflowService);
  const plain: number[] = [];
  const keyed: number[] = [];
  for (let i = 0; i < repeat; i++) {
    plain.push(await chain(service, 'plain', false));
    keyed.push(await chain(service, 'keyed', true));
  }
  await app.close();
  if (process.env.BENCH_FLOW_JSON) writeFileSync(process.env.BENCH_FLOW_JSON, JSON.stringify({ plain, keyed }));
  lines.push(`chain, no limits:                      ${fmt(plain)}`);
  lines.push(
    `chain, ${keys} keys, keyConcurrency 2:     ${fmt(keyed)}  = ${(median(keyed) / median(plain)).toFixed(2)}x`,
  );
}

if (only.has('history')) {
  const on: number[] = [];
  const off: number[] = [];
  for (let i = 0; i < repeat; i++) {
    for (const [history, into] of [
      [true, on],
      [false, off],
    ] as const) {
      const app = await start(undefined, true, history);
      into.push(await chain(app.get(WorkflowService), 'plain', false));
      await app.close();
    }
  }
  lines.push(`chain, history on (the default):       ${fmt(on)}`);
  lines.push(`chain, history: false:                 ${fmt(off)}  on/off = ${(median(on) / median(off)).toFixed(2)}x`);
}

if (only.has('tx')) {
  const ds = new DataSource({ type: 'mysql', url: cfg.mysqlUrl, poolSize: 40 } as never);
  await ds.initialize();
  await ds.query(`DROP TABLE IF EXISTS ${ledger}`);
  await ds.query(
    `CREATE TABLE ${ledger} (id BIGINT AUTO_INCREMENT PRIMARY KEY, run_id VARCHAR(128) NOT NULL, step_number INT NOT NULL)`,
  );
  const app = await start(ds);
  const service = app.get(WorkflowService);
  const plain: number[] = [];
  const tx: number[] = [];
  for (let i = 0; i < repeat; i++) {
    plain.push(await chain(service, 'plain', false));
    tx.push(await chain(service, 'tx', false));
  }
  await app.close();
  // The floor: bare TypeORM transactions with as many statements as a transactional step
  // sends (the lock, the write, three of the settlement's), 16 callers at once.
  const floorN = Math.min(cfg.runs * cfg.steps, 5000);
  const t0 = wallNow();
  await Promise.all(
    Array.from({ length: cfg.concurrency }, async (_, w) => {
      for (let i = w; i < floorN; i += cfg.concurrency) {
        await ds.transaction('READ COMMITTED', async (m) => {
          await m.query('SELECT 1');
          await m.query(`INSERT INTO ${ledger} (run_id, step_number) VALUES (?, ?)`, ['floor', i]);
          for (let k = 0; k < 3; k++) await m.query('SELECT 1');
        });
      }
    }),
  );
  const floor = floorN / ((wallNow() - t0) / 1000);
  await ds.query(`DROP TABLE IF EXISTS ${ledger}`);
  await ds.destroy();
  lines.push(`chain on a shared DataSource:          ${fmt(plain)}`);
  lines.push(`same, each step in step.transaction:   ${fmt(tx)}  = ${(median(tx) / median(plain)).toFixed(2)}x`);
  lines.push(
    `bare TypeORM transactions of 5 statements: ${Math.round(floor)} tx/s (the floor for a step that commits alone)`,
  );
}

if (only.has('rate')) {
  // More than the window allows, the whole time, submitted before the worker starts (so
  // submitting does not hold up the runner calls whose times are recorded).
  const web = await start(undefined, false);
  const total = Math.ceil(rate * rateSeconds * 1.2);
  for (let i = 0; i < total; i += 1000) {
    await web.get(WorkflowService).submitMany(
      'rated',
      Array.from({ length: Math.min(1000, total - i) }, () => ({ input: null })),
    );
  }
  await web.close();
  const app = await start();
  const until = wallNow() + (rateSeconds + 3) * 1000;
  while (wallNow() < until) await new Promise((r) => setTimeout(r, 250));
  await app.close();
  // The first full second after the first start, to the end of the measured minute.
  const t0 = starts[0];
  const inWindow = starts.filter((t) => t >= t0 && t < t0 + rateSeconds * 1000).length;
  // Runner calls lag the claim that counted them (database clock) by a few ms, and one
  // claim's steps start together: a window a little shorter than the period is the fair check.
  const slackMs = 20;
  let worst = 0;
  for (let i = 0, j = 0; i < starts.length; i++) {
    while (starts[j] <= starts[i] - (1000 - slackMs)) j++;
    worst = Math.max(worst, i - j + 1);
  }
  lines.push(
    `rateLimit ${rate}/s for ${rateSeconds} s: ${(inWindow / rateSeconds).toFixed(2)} starts/s ` +
      `(${((inWindow / rateSeconds / rate) * 100).toFixed(1)}% of the limit); most in any ${1000 - slackMs} ms: ${worst}`,
  );
}

await dropWorkflowTables(cfg.mysqlUrl, PREFIX);
process.stdout.write(`${lines.join('\n')}\n`);
