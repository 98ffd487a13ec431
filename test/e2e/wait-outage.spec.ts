import { Injectable, Logger, type LoggerService } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import {
  type RunOutcome,
  type Step,
  StepOutcome,
  StepRunner,
  WaitTimeoutError,
  WorkflowService,
} from 'nestjs-durable-workflow';
import { startApp } from '../utils/create-test-app.js';
import { rawConnection } from '../utils/db.js';
import { PrivateMariaDb } from '../utils/private-db.js';
import { deferred, holdsFor, waitFor } from '../utils/wait.js';

/** Step 0 continues; step 1 reports in and holds until the test opens the gate. */
@Injectable()
@StepRunner('held')
class HeldRunner {
  gate = deferred();
  readonly atStep1 = new Set<string>();

  async runStep(step: Step<{ n: number }>) {
    if (step.stepNumber === 0) return StepOutcome.continue({ n: step.payload.n + 1 });
    this.atStep1.add(step.runId);
    await this.gate.promise;
    return StepOutcome.succeed(step.payload.n * 10);
  }
}

/** Keeps what the module logs, to see that an outage is reported once and not per poll. */
class RecordingLogger implements LoggerService {
  readonly entries: Array<{ level: string; message: string; context?: string }> = [];
  private add(level: string, message: unknown, rest: unknown[]) {
    const context = typeof rest[rest.length - 1] === 'string' ? (rest[rest.length - 1] as string) : undefined;
    this.entries.push({ level, message: String(message), context });
  }
  log(m: unknown, ...r: unknown[]) {
    this.add('log', m, r);
  }
  error(m: unknown, ...r: unknown[]) {
    this.add('error', m, r);
  }
  warn(m: unknown, ...r: unknown[]) {
    this.add('warn', m, r);
  }
  debug(m: unknown, ...r: unknown[]) {
    this.add('debug', m, r);
  }
  verbose(m: unknown, ...r: unknown[]) {
    this.add('verbose', m, r);
  }
  waitWarnings() {
    return this.entries.filter(
      (e) => e.level === 'warn' && e.context === 'WorkflowService' && /waitForOutcome/.test(e.message),
    );
  }
}

/** A waiter whose settlement the test can look at without awaiting it. */
function watch(p: Promise<RunOutcome>) {
  const w: { settled: boolean; promise: Promise<PromiseSettledResult<RunOutcome>> } = {
    settled: false,
    promise: undefined!,
  };
  w.promise = p.then(
    (value) => ((w.settled = true), { status: 'fulfilled' as const, value }),
    (reason) => ((w.settled = true), { status: 'rejected' as const, reason }),
  );
  return w;
}

/**
 * waitForOutcome() across a database crash: the waits are the caller's, the runs go on,
 * so a connection error while polling must not end a wait before its own timeout.
 */
describe('waitForOutcome during a database outage', () => {
  let db: PrivateMariaDb;
  let app: TestingModule;
  let service: WorkflowService;
  let runner: HeldRunner;
  const logger = new RecordingLogger();
  const prefix = 'waitout_';

  beforeAll(async () => {
    db = await PrivateMariaDb.create(0);
    app = await startApp({
      prefix,
      providers: [HeldRunner],
      options: { connection: { url: db.url } },
      worker: { pollIntervalMs: 50, leaseMs: 20_000, shutdownTimeoutMs: 2_000, concurrency: 16 },
    });
    // After compile(), which installs the testing logger: every Logger instance reads this at call time.
    Logger.overrideLogger(logger);
    service = app.get(WorkflowService);
    runner = app.get(HeldRunner);
  }, 60_000);
  afterAll(async () => {
    runner?.gate.resolve();
    await app?.close();
    await db?.destroy();
  });

  it('every waiter rides out a SIGKILLed and restarted server and resolves succeeded', async () => {
    const runs = await service.submitMany(
      'held',
      Array.from({ length: 12 }, (_, i) => ({ input: { n: i } })),
    );
    await waitFor(() => runner.atStep1.size === runs.length, 'every run to be held at step 1');
    const waiters = runs.map((r) => watch(service.waitForOutcome(r.runId, { timeoutMs: 60_000 })));

    await db.stop('SIGKILL');
    try {
      // A poll has failed for want of a database (and is logged), or a waiter gave up.
      await waitFor(() => logger.waitWarnings().length > 0 || waiters.some((w) => w.settled), 'a poll to fail');
      // Many poll intervals (50 ms) of failing polls: no waiter gives up.
      await holdsFor(() => waiters.every((w) => !w.settled), 1_000, 'no waiter settles while the database is down');
    } finally {
      await db.start();
      runner.gate.resolve();
    }
    const results = await Promise.all(waiters.map((w) => w.promise));
    const rejected = results.filter((r) => r.status === 'rejected');
    expect(rejected.map((r) => String((r as PromiseRejectedResult).reason))).toEqual([]);
    const outcomes = results.map((r) => (r as PromiseFulfilledResult<RunOutcome>).value);
    expect(outcomes.map((o) => [o.runId, o.status, o.result])).toEqual(
      runs.map((r, i) => [r.runId, 'succeeded', (i + 1) * 10]),
    );
    // Twelve waiters polling for a second or more: one warning, not one per poll or per waiter.
    expect(logger.waitWarnings()).toHaveLength(1);
  }, 90_000);

  it('a wait whose timeout falls inside the outage ends with WaitTimeoutError, not the driver error', async () => {
    runner.gate = deferred();
    runner.atStep1.clear();
    const { runId } = await service.submit('held', { input: { n: 1 } });
    await waitFor(() => runner.atStep1.has(runId), 'the run to be held at step 1');
    await db.stop('SIGKILL');
    try {
      const started = Date.now();
      const err = await service.waitForOutcome(runId, { timeoutMs: 1_500 }).catch((e: Error) => e);
      expect(err).toBeInstanceOf(WaitTimeoutError);
      expect(Date.now() - started).toBeGreaterThanOrEqual(1_500);
    } finally {
      await db.start();
      runner.gate.resolve();
    }
    await expect(service.waitForOutcome(runId, { timeoutMs: 30_000 })).resolves.toMatchObject({
      status: 'succeeded',
      result: 20,
    });
  }, 90_000);

  it('an error that is not about the connection still rejects at once', async () => {
    runner.gate = deferred();
    runner.atStep1.clear();
    const { runId } = await service.submit('held', { input: { n: 2 } });
    await waitFor(() => runner.atStep1.has(runId), 'the run to be held at step 1');
    const conn = await rawConnection(db.url);
    try {
      await conn.query(`RENAME TABLE \`${prefix}runs\` TO \`${prefix}runs_away\``);
      const started = Date.now();
      const err = await service.waitForOutcome(runId, { timeoutMs: 30_000 }).catch((e: Error & { code?: string }) => e);
      expect((err as { code?: string }).code).toBe('ER_NO_SUCH_TABLE');
      expect(Date.now() - started).toBeLessThan(10_000);
    } finally {
      await conn.query(`RENAME TABLE \`${prefix}runs_away\` TO \`${prefix}runs\``);
      await conn.end();
      runner.gate.resolve();
    }
    await expect(service.waitForOutcome(runId, { timeoutMs: 30_000 })).resolves.toMatchObject({
      status: 'succeeded',
      result: 30,
    });
  }, 90_000);
});
