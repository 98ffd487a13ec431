/**
 * graphile-worker 0.17 on PostgreSQL, as its users run a chain: the task adds the next
 * step's job with helpers.addJob. Concurrency 16, maxPoolSize raised to the concurrency
 * (graphile-worker warns when the pool is smaller), LISTEN/NOTIFY wake-ups, own schema.
 */
import { Logger, makeWorkerUtils, run } from 'graphile-worker';
import pg from 'pg';
import {
  type BenchConfig,
  type ChainPayload,
  type ChainResult,
  ChainTracker,
  chainResult,
  send,
  cpuWindow,
  startProfiler,
  wallNow,
  withTimeout,
} from '../common.js';

const SCHEMA = 'bench_graphile_worker';

interface StepData {
  step: number;
  payload: ChainPayload;
}

const quiet = new Logger(() => (level: string, message: string) => {
  if (level === 'error') console.error(`graphile-worker: ${message}`);
});

export async function graphileChain(cfg: BenchConfig): Promise<ChainResult> {
  const client = new pg.Client({ connectionString: cfg.pgUrl });
  await client.connect();
  await client.query(`DROP SCHEMA IF EXISTS ${SCHEMA} CASCADE`);
  await client.end();

  const settings = `concurrency ${cfg.concurrency}, maxPoolSize ${cfg.concurrency}, LISTEN/NOTIFY (pollInterval 2000 default), addJobs ×${cfg.submitBatch}, PostgreSQL`;
  await send({ type: 'settings', settings });
  const tracker = new ChainTracker(cfg.runs, cfg.steps, cfg.payloadBytes);

  const utils = await makeWorkerUtils({ connectionString: cfg.pgUrl, schema: SCHEMA, logger: quiet });
  await utils.migrate();
  const runner = await run({
    connectionString: cfg.pgUrl,
    schema: SCHEMA,
    concurrency: cfg.concurrency,
    maxPoolSize: cfg.concurrency,
    noHandleSignals: true,
    logger: quiet,
    taskList: {
      step: async (raw, helpers) => {
        const { step, payload } = raw as StepData;
        tracker.started(step, payload);
        if (tracker.isLast(step)) {
          tracker.finished();
          return;
        }
        await helpers.addJob('step', { step: step + 1, payload: tracker.next() });
      },
    },
  });

  const stopProfiler = await startProfiler(cfg.profileFile);
  const t0 = wallNow();
  const cpu = cpuWindow();
  for (let i = 0; i < cfg.runs; i += cfg.submitBatch) {
    const n = Math.min(cfg.submitBatch, cfg.runs - i);
    await utils.addJobs(
      Array.from({ length: n }, () => ({ identifier: 'step', payload: { step: 0, payload: tracker.input() } })),
    );
  }
  const submitMs = wallNow() - t0;
  await withTimeout(
    tracker.done,
    cfg.timeoutS * 1000,
    `${cfg.runs} graphile-worker chains (${tracker.completed} done)`,
  );
  const elapsedMs = tracker.lastAt - t0;
  const cpuShare = cpu();
  await stopProfiler();
  await runner.stop();
  const left = await utils
    .withPgClient(async (c) => {
      const r = await c.query(`SELECT COUNT(*)::int AS n FROM ${SCHEMA}._private_jobs`);
      return Number(r.rows[0].n);
    })
    .catch(() => NaN);
  await utils.release();

  const notes = [`submit took ${submitMs.toFixed(0)} ms of it`];
  notes.push(left === 0 ? 'verified: queue empty' : `VERIFY: ${left} jobs left`);
  return chainResult({
    system: 'graphile-worker',
    settings,
    runs: cfg.runs,
    steps: cfg.steps,
    elapsedMs,
    tracker,
    cpu: cpuShare,
    notes,
  });
}
