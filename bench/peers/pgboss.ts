/**
 * pg-boss 10 on PostgreSQL, as its users run a chain: the work handler sends the next
 * step's job. pg-boss 10 has no per-worker concurrency option: 16 `work()` registrations
 * of batchSize 1 give 16 steps in flight. Each worker fetches, runs, then sleeps out its
 * polling interval (0.5 s, the smallest pg-boss 10 accepts), so throughput is bound
 * to about 16 / 0.5 s = 32 steps/s whatever the database does. Hence the smaller
 * default run count (BENCH_PGBOSS_RUNS): the rate, not the total, is the figure.
 */
import PgBoss from 'pg-boss';
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

const SCHEMA = 'bench_pgboss';

interface StepData {
  step: number;
  payload: ChainPayload;
}

export async function pgbossChain(cfg: BenchConfig): Promise<ChainResult> {
  const runs = cfg.pgbossRuns;
  const client = new pg.Client({ connectionString: cfg.pgUrl });
  await client.connect();
  await client.query(`DROP SCHEMA IF EXISTS ${SCHEMA} CASCADE`);
  await client.end();

  const settings =
    `${cfg.concurrency} × work({ batchSize: 1, pollingIntervalSeconds: ${cfg.pgbossPollSeconds} }) (polling-bound), ` +
    `${runs} runs, insert ×${cfg.submitBatch}, PostgreSQL`;
  await send({ type: 'settings', settings });
  const tracker = new ChainTracker(runs, cfg.steps, cfg.payloadBytes);

  const boss = new PgBoss({ connectionString: cfg.pgUrl, schema: SCHEMA, schedule: false });
  boss.on('error', (err) => console.error('pg-boss error:', (err as Error).message));
  await boss.start();
  await boss.createQueue('chain');
  for (let i = 0; i < cfg.concurrency; i++) {
    await boss.work<StepData>(
      'chain',
      { batchSize: 1, pollingIntervalSeconds: cfg.pgbossPollSeconds },
      async (jobs) => {
        for (const job of jobs) {
          const { step, payload } = job.data;
          tracker.started(step, payload);
          if (tracker.isLast(step)) {
            tracker.finished();
            continue;
          }
          await boss.send('chain', { step: step + 1, payload: tracker.next() });
        }
      },
    );
  }

  const stopProfiler = await startProfiler(cfg.profileFile);
  const t0 = wallNow();
  const cpu = cpuWindow();
  for (let i = 0; i < runs; i += cfg.submitBatch) {
    const n = Math.min(cfg.submitBatch, runs - i);
    await boss.insert(
      Array.from({ length: n }, () => ({ name: 'chain', data: { step: 0, payload: tracker.input() } })),
    );
  }
  const submitMs = wallNow() - t0;
  await withTimeout(tracker.done, cfg.timeoutS * 1000, `${runs} pg-boss chains (${tracker.completed} done)`);
  const elapsedMs = tracker.lastAt - t0;
  const cpuShare = cpu();
  await stopProfiler();
  await boss.stop({ graceful: true, wait: true, timeout: 10_000 });

  const notes = [
    `submit took ${submitMs.toFixed(0)} ms of it`,
    `polling-bound: ≈ ${cfg.concurrency}/${cfg.pgbossPollSeconds}s`,
  ];
  return chainResult({
    system: 'pg-boss',
    settings,
    runs: runs,
    steps: cfg.steps,
    elapsedMs,
    tracker,
    cpu: cpuShare,
    notes,
  });
}
