/**
 * `npm run bench:listing`: what a dashboard's page view costs beside BENCH_LIST_RUNS
 * (1,000,000) finished runs. The runs table is filled straight from SQL (rows as the module
 * writes them: 4 workflows, 90% succeeded, 8% failed, 2% cancelled, one submit time per
 * row), plus BENCH_LIST_LIVE (1,000) live runs parked on a signal, with their jobs; the
 * counts are seeded as the schema's version 4 does. Then, in a worker: false app, each
 * call BENCH_LIST_PROBES (50) times, timed:
 *   countRuns()                              the counts table and two ix_claim ranges
 *   listRuns() first page / a later page     ix_list, one range per state
 *   listRuns({ state: 'waiting' })           the live runs only
 *   listRuns({ workflow, state: 'failed' })  ix_list_workflow
 * beside the statement countRuns replaces, `SELECT workflow, state, COUNT(*) ... GROUP BY`
 * over the runs table (an index-only scan of ix_list_workflow), timed the same way.
 *   BENCH_LIST_RUNS, BENCH_LIST_LIVE, BENCH_LIST_PROBES, WORKFLOW_DB_URL / BENCH_MYSQL_URL.
 */
import 'reflect-metadata';
import { Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { WorkflowModule, WorkflowService } from 'nestjs-durable-workflow';
import { envInt, fmt, fmtMs, loadConfig, summarize, wallNow } from './common.js';
import { dropWorkflowTables, scalar, withMysql } from './db.js';

const PREFIX = 'bench_list_';
const cfg = loadConfig();
const total = envInt('BENCH_LIST_RUNS', 1_000_000);
const live = envInt('BENCH_LIST_LIVE', 1_000);
const probes = Math.max(1, envInt('BENCH_LIST_PROBES', 50));
const WORKFLOWS = ['ingest', 'agent', 'payment', 'report'];

async function timed(what: string, fn: () => Promise<unknown>): Promise<string> {
  const first = await fn(); // warm
  const rows = Array.isArray(first) ? first.length : (first as { runs: unknown[] }).runs.length;
  const ms: number[] = [];
  for (let i = 0; i < probes; i++) {
    const t0 = wallNow();
    await fn();
    ms.push(wallNow() - t0);
  }
  const s = summarize(ms);
  return `| ${what} | ${rows} | ${fmtMs(s.p50)} | ${fmtMs(s.p99)} |`;
}

async function fill(): Promise<void> {
  await withMysql(cfg.mysqlUrl, async (c) => {
    const t = (n: string) => `\`${PREFIX}${n}\``;
    const start = Date.now() - total - 60_000;
    const batch = 5_000;
    for (let i = 0; i < total + live; i += batch) {
      const rows: unknown[][] = [];
      const jobs: unknown[][] = [];
      for (let k = i; k < Math.min(i + batch, total + live); k++) {
        const id = `run-${String(k).padStart(9, '0')}`;
        const isLive = k >= total;
        const r = Math.floor(k / WORKFLOWS.length);
        const state = isLive ? 'active' : r % 50 === 0 ? 'cancelled' : r % 12 === 0 ? 'failed' : 'succeeded';
        const at = start + k;
        const jobId = `J${String(k).padStart(25, '0')}`;
        rows.push([
          id,
          WORKFLOWS[k % 4],
          state,
          isLive ? 1 : 2,
          isLive ? jobId : null,
          '0'.repeat(64),
          '{}',
          at,
          at,
          isLive ? null : at + 5,
        ]);
        if (isLive)
          jobs.push([jobId, WORKFLOWS[k % 4], 0, 3, 0, 8_000_000_000_000, id, 1, 1, 3, '{}', '{}', at, 'approve']);
      }
      await c.query(
        `INSERT INTO ${t('runs')} (id, workflow, state, current_step, current_job_id, input_hash, headers, submitted_at, updated_at, finished_at) VALUES ?`,
        [rows],
      );
      if (jobs.length)
        await c.query(
          `INSERT INTO ${t('jobs')} (id, queue, kind, state, priority, run_at, run_id, step_number, attempts, max_attempts, payload, headers, created_at, wait_for) VALUES ?`,
          [jobs],
        );
    }
    await c.query(`DELETE FROM ${t('counts')}`);
    await c.query(
      `INSERT INTO ${t('counts')} (id, workflow, state, n) SELECT CONCAT('seed:', SHA1(CONCAT(workflow, '/', state))), workflow, state, COUNT(*) FROM ${t('runs')} GROUP BY workflow, state`,
    );
    await c.query(`ANALYZE TABLE ${t('runs')}, ${t('jobs')}`);
  });
}

@Module({
  imports: [
    WorkflowModule.forRoot({
      connection: { url: cfg.mysqlUrl },
      tablePrefix: PREFIX,
      worker: false,
      workflows: WORKFLOWS,
    }),
  ],
})
class ListingModule {}

async function main(): Promise<void> {
  await dropWorkflowTables(cfg.mysqlUrl, PREFIX);
  const app = await NestFactory.createApplicationContext(ListingModule, { logger: ['error', 'warn'] });
  const lines: string[] = [];
  try {
    const t0 = wallNow();
    await fill();
    const filled = await withMysql(cfg.mysqlUrl, (c) => scalar(c, `SELECT COUNT(*) FROM \`${PREFIX}runs\``));
    lines.push(
      `listing: ${fmt(filled)} runs (${fmt(total)} finished, ${fmt(live)} waiting), filled in ${fmt((wallNow() - t0) / 1000, 1)} s; ${probes} probes each`,
    );
    const service = app.get(WorkflowService);
    const counts = await service.countRuns();
    const waiting = counts.reduce((a, c) => a + c.states.waiting, 0);
    const sum = counts.reduce((a, c) => a + c.total, 0);
    if (sum !== filled || waiting !== live) throw new Error(`countRuns says ${sum} runs, ${waiting} waiting`);
    const later = (await service.listRuns({ limit: 50 })).nextCursor;
    lines.push('| call | rows | p50 ms | p99 ms |', '|---|---|---|---|');
    lines.push(await timed('countRuns()', () => service.countRuns()));
    lines.push(await timed('listRuns() first page (50)', () => service.listRuns()));
    lines.push(await timed('listRuns() second page', () => service.listRuns({ cursor: later })));
    lines.push(await timed("listRuns({ state: 'waiting' })", () => service.listRuns({ state: 'waiting' })));
    lines.push(
      await timed("listRuns({ workflow, state: 'failed' })", () =>
        service.listRuns({ workflow: 'agent', state: 'failed' }),
      ),
    );
    await withMysql(cfg.mysqlUrl, async (c) => {
      lines.push(
        await timed('(the GROUP BY count it replaces)', () =>
          c.query(`SELECT workflow, state, COUNT(*) FROM \`${PREFIX}runs\` GROUP BY workflow, state`).then(([r]) => r),
        ),
      );
    });
  } finally {
    await app.close();
    if (!process.env.BENCH_KEEP) await dropWorkflowTables(cfg.mysqlUrl, PREFIX);
  }
  process.stdout.write(`${lines.join('\n')}\n`);
}

main().catch((err) => {
  process.stderr.write(`${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
