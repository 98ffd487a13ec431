/**
 * The floor: the least a durable MySQL queue can do per step, hand-written. One table;
 * per claim one READ COMMITTED transaction (SELECT ... FOR UPDATE SKIP LOCKED on an
 * index in claim order, then UPDATE by primary key); per step one settle transaction
 * (DELETE the job, INSERT its successor). 16 loops, each on its own connection, poll
 * every BENCH_FLOOR_POLL_MS when the queue is empty. No leases renewed, no runs table,
 * no retries, no fencing: whatever our module does beyond this is the price of its
 * guarantees.
 */
import type mysql from 'mysql2/promise';
import {
  type BenchConfig,
  type ChainPayload,
  type ChainResult,
  chainResult,
  ChainTracker,
  cpuWindow,
  send,
  sleep,
  startProfiler,
  wallNow,
  withTimeout,
} from '../common.js';
import { describePerStep, mysqlConnection, perStep, scalar, statementCounters, withMysql } from '../db.js';

const TABLE = 'bench_floor_jobs';

interface Row {
  id: number;
  run_id: number;
  step: number;
  payload: string;
}

async function tx<T>(c: mysql.Connection, fn: () => Promise<T>): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    await c.query('START TRANSACTION');
    try {
      const r = await fn();
      await c.query('COMMIT');
      return r;
    } catch (err) {
      await c.query('ROLLBACK').catch(() => undefined);
      const errno = (err as { errno?: number }).errno;
      if ((errno === 1213 || errno === 1205) && attempt < 10) continue;
      throw err;
    }
  }
}

export async function floorChain(cfg: BenchConfig, claimBatch: number): Promise<ChainResult> {
  await withMysql(cfg.mysqlUrl, async (c) => {
    await c.query(`DROP TABLE IF EXISTS \`${TABLE}\``);
    await c.query(`CREATE TABLE \`${TABLE}\` (
      \`id\` BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
      \`state\` TINYINT UNSIGNED NOT NULL DEFAULT 0,
      \`run_id\` INT UNSIGNED NOT NULL,
      \`step\` INT UNSIGNED NOT NULL,
      \`lease_until\` DATETIME(3) NULL,
      \`payload\` TEXT NOT NULL,
      PRIMARY KEY (\`id\`),
      KEY \`ix_claim\` (\`state\`, \`id\`)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin`);
  });
  const settings =
    `${cfg.concurrency} loops × own connection, claim ${claimBatch === 1 ? '1 (unbatched)' : `batches of ${claimBatch}`}, ` +
    `1 settle tx per step, idle poll ${cfg.floorPollMs} ms, MariaDB`;
  await send({ type: 'settings', settings });
  const tracker = new ChainTracker(cfg.runs, cfg.steps, cfg.payloadBytes);

  const conns = await Promise.all(Array.from({ length: cfg.concurrency + 1 }, () => mysqlConnection(cfg.mysqlUrl)));
  for (const c of conns) await c.query('SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED');
  const [submitter, ...workers] = conns;
  let running = true;

  const loop = async (c: mysql.Connection) => {
    while (running) {
      const jobs = await tx(c, async () => {
        const [rows] = await c.query(
          `SELECT \`id\`, \`run_id\`, \`step\`, \`payload\` FROM \`${TABLE}\` FORCE INDEX (\`ix_claim\`)
            WHERE \`state\` = 0 ORDER BY \`id\` LIMIT ? FOR UPDATE SKIP LOCKED`,
          [claimBatch],
        );
        const claimed = rows as Row[];
        if (claimed.length === 0) return claimed;
        await c.query(
          `UPDATE \`${TABLE}\` SET \`state\` = 1, \`lease_until\` = DATE_ADD(UTC_TIMESTAMP(3), INTERVAL 30 SECOND) WHERE \`id\` IN (?)`,
          [claimed.map((r) => r.id)],
        );
        return claimed;
      });
      if (jobs.length === 0) {
        await sleep(cfg.floorPollMs);
        continue;
      }
      for (const job of jobs) {
        const payload = JSON.parse(job.payload) as ChainPayload;
        tracker.started(job.step, payload);
        const last = tracker.isLast(job.step);
        const next = last ? null : JSON.stringify(tracker.next());
        if (last) tracker.finished();
        await tx(c, async () => {
          await c.query(`DELETE FROM \`${TABLE}\` WHERE \`id\` = ?`, [job.id]);
          if (next !== null) {
            await c.query(`INSERT INTO \`${TABLE}\` (\`run_id\`, \`step\`, \`payload\`) VALUES (?, ?, ?)`, [
              job.run_id,
              job.step + 1,
              next,
            ]);
          }
        });
      }
    }
  };
  const counters0 = await statementCounters(cfg.mysqlUrl);
  const stopProfiler = await startProfiler(cfg.profileFile);
  const loops = workers.map((c) => loop(c));

  const t0 = wallNow();
  const cpu = cpuWindow();
  for (let i = 0; i < cfg.runs; i += cfg.submitBatch) {
    const n = Math.min(cfg.submitBatch, cfg.runs - i);
    const rows = Array.from({ length: n }, (_, j) => [i + j, 0, JSON.stringify(tracker.input())]);
    await submitter.query(`INSERT INTO \`${TABLE}\` (\`run_id\`, \`step\`, \`payload\`) VALUES ?`, [rows]);
  }
  const submitMs = wallNow() - t0;
  await withTimeout(tracker.done, cfg.timeoutS * 1000, `${cfg.runs} floor chains (${tracker.completed} done)`);
  const elapsedMs = tracker.lastAt - t0;
  const cpuShare = cpu();
  running = false;
  await Promise.all(loops);
  await stopProfiler();
  const serverPerStep = perStep(counters0, await statementCounters(cfg.mysqlUrl), cfg.runs * cfg.steps);
  const left = await scalar(submitter, `SELECT COUNT(*) FROM \`${TABLE}\``);
  await submitter.query(`DROP TABLE IF EXISTS \`${TABLE}\``);
  await Promise.all(conns.map((c) => c.end().catch(() => undefined)));

  const notes = [`submit took ${submitMs.toFixed(0)} ms of it`];
  notes.push(left === 0 ? 'verified: queue empty' : `VERIFY: ${left} jobs left`);
  const described = describePerStep(serverPerStep);
  if (described) notes.push(described);
  return chainResult({
    system: claimBatch === 1 ? 'mysql floor' : `mysql floor ×${claimBatch}`,
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
