import type { TestingModule } from '@nestjs/testing';
import type { Connection } from 'mysql2/promise';
import { WorkflowService } from 'nestjs-durable-workflow';
import { startApp } from '../utils/create-test-app.js';
import { dropTables, rawConnection } from '../utils/db.js';
import { createJournal, startWorker, type WorkerProcess } from '../utils/processes.js';

export interface ChaosOptions {
  prefix: string;
  runs: number;
  steps: number;
  workers: number;
  killEveryMs: number;
  leaseMs: number;
  stepDelayMs: number;
  /** Steps in flight per worker process. */
  concurrency: number;
  timeoutMs: number;
  log?: (line: string) => void;
}

export interface ChaosReport {
  runs: number;
  steps: number;
  workers: number;
  kills: number;
  elapsedMs: number;
  stepsPerSecond: number;
  succeeded: number;
  notSucceeded: Array<{ id: string; state: string }>;
  /** (run, step) pairs never journaled. */
  missingSteps: number;
  /** Deliveries beyond the first of a (run, step). */
  duplicateDeliveries: number;
  /** Duplicates whose earlier delivery was NOT on a process we killed: must be 0. */
  duplicatesWithoutKill: number;
  runsWithoutTerminalDelivery: number;
  leftoverJobs: number;
  deadLetters: number;
  runsLost: number;
}

/**
 * K real worker processes on one database, one of them SIGKILLed every few seconds and
 * replaced, while N runs of M steps go through. Every step journals (run, step,
 * attempt, pid) in its own table before returning; the verdict comes from the database.
 */
export async function runChaos(o: ChaosOptions): Promise<ChaosReport> {
  const log = o.log ?? (() => undefined);
  await dropTables(o.prefix);
  const db: Connection = await rawConnection();
  const journal = `\`${o.prefix}journal\``;
  await createJournal(db, o.prefix);
  const app: TestingModule = await startApp({ prefix: o.prefix, worker: false, options: { workflows: ['crashy'] } });
  const env = {
    PREFIX: o.prefix,
    STEPS: String(o.steps),
    LEASE_MS: String(o.leaseMs),
    STEP_DELAY_MS: String(o.stepDelayMs),
    MAX_ATTEMPTS: '25',
    CONCURRENCY: String(o.concurrency),
  };
  const workers: WorkerProcess[] = [];
  const killed = new Set<number>();
  let stop = false;
  try {
    for (let i = 0; i < o.workers; i++) workers.push(await startWorker(env));
    const service = app.get(WorkflowService);
    const started = Date.now();
    const ids: string[] = [];
    for (let i = 0; i < o.runs; i += 500) {
      const batch = await service.submitMany(
        'crashy',
        Array.from({ length: Math.min(500, o.runs - i) }, () => ({ input: { n: 0 } })),
      );
      ids.push(...batch.map((b) => b.runId));
    }
    log(`submitted ${ids.length} runs of ${o.steps} steps to ${o.workers} workers`);

    const chaos = (async () => {
      while (!stop) {
        await new Promise((r) => setTimeout(r, o.killEveryMs));
        if (stop) break;
        const victim = workers.splice(Math.floor(Math.random() * workers.length), 1)[0];
        killed.add(victim.pid);
        await victim.kill('SIGKILL');
        log(`killed worker ${victim.pid} (${killed.size} kills)`);
        if (!stop) workers.push(await startWorker(env));
      }
    })();

    const deadline = started + o.timeoutMs;
    let finished = 0;
    while (Date.now() < deadline) {
      const [rows] = await db.query(
        `SELECT COUNT(*) AS n FROM \`${o.prefix}runs\` WHERE state IN ('succeeded', 'failed', 'cancelled')`,
      );
      finished = Number((rows as Array<{ n: number }>)[0].n);
      if (finished >= o.runs) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    const elapsedMs = Date.now() - started;
    stop = true;
    await chaos;
    // Let terminal deliveries in flight finish on the surviving workers before judging the queue.
    const settleDeadline = Date.now() + Math.max(10_000, o.leaseMs * 4);
    let leftoverJobs = 0;
    while (Date.now() < settleDeadline) {
      const [rows] = await db.query(`SELECT COUNT(*) AS n FROM \`${o.prefix}jobs\``);
      leftoverJobs = Number((rows as Array<{ n: number }>)[0].n);
      if (leftoverJobs === 0) break;
      await new Promise((r) => setTimeout(r, 200));
    }

    const [states] = await db.query(`SELECT id, state, result FROM \`${o.prefix}runs\``);
    const runRows = states as Array<{ id: string; state: string; result: string | null }>;
    const notSucceeded = runRows
      .filter((r) => r.state !== 'succeeded' || JSON.parse(r.result ?? 'null')?.n !== o.steps)
      .map((r) => ({ id: r.id, state: r.state }));
    const [stepRows] = await db.query(
      `SELECT run_id, step_number, GROUP_CONCAT(pid ORDER BY id) AS pids, COUNT(*) AS n FROM ${journal}
        WHERE kind = 'step' GROUP BY run_id, step_number`,
    );
    const steps = stepRows as Array<{ run_id: string; step_number: number; pids: string; n: number }>;
    let duplicateDeliveries = 0;
    let duplicatesWithoutKill = 0;
    for (const s of steps) {
      const pids = String(s.pids).split(',').map(Number);
      duplicateDeliveries += pids.length - 1;
      // Every delivery but the last must have been cut off by a kill of its process.
      for (const pid of pids.slice(0, -1)) if (!killed.has(pid)) duplicatesWithoutKill++;
    }
    const [terminalRows] = await db.query(
      `SELECT COUNT(DISTINCT run_id) AS n FROM ${journal} WHERE kind = 'terminal:succeeded'`,
    );
    const [deadRows] = await db.query(`SELECT COUNT(*) AS n FROM \`${o.prefix}dead\``);
    const withTerminal = Number((terminalRows as Array<{ n: number }>)[0].n);
    const idSet = new Set(runRows.map((r) => r.id));
    return {
      runs: o.runs,
      steps: o.steps,
      workers: o.workers,
      kills: killed.size,
      elapsedMs,
      stepsPerSecond: Math.round((o.runs * o.steps) / (elapsedMs / 1000)),
      succeeded: runRows.length - notSucceeded.length,
      notSucceeded: notSucceeded.slice(0, 20),
      missingSteps: o.runs * o.steps - steps.length,
      duplicateDeliveries,
      duplicatesWithoutKill,
      runsWithoutTerminalDelivery: o.runs - withTerminal,
      leftoverJobs,
      deadLetters: Number((deadRows as Array<{ n: number }>)[0].n),
      runsLost: ids.filter((id) => !idSet.has(id)).length + notSucceeded.length,
    };
  } finally {
    stop = true;
    await Promise.all(workers.map((w) => w.kill('SIGKILL')));
    await app.close();
    await db.query(`DROP TABLE IF EXISTS ${journal}`);
    await db.end();
    await dropTables(o.prefix);
  }
}
