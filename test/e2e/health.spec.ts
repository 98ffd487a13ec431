import { jest } from '@jest/globals';
import { Controller, Get, type INestApplication, Injectable } from '@nestjs/common';
import { HealthCheck, HealthCheckService, TerminusModule } from '@nestjs/terminus';
import { Test } from '@nestjs/testing';
import {
  type Step,
  StepOutcome,
  StepRunner,
  WorkflowHealthIndicator,
  WorkflowModule,
  type WorkflowModuleOptions,
  WorkflowService,
  WorkflowWorker,
} from 'nestjs-durable-workflow';
import { ManualClock } from 'nestjs-durable-workflow/testing';
import { oldestDueByQueueSql, oldestDueSql } from '../../lib/storage/queue-lag.js';
import { tablesOf } from '../../lib/storage/tables.js';
import { WorkflowStorage } from '../../lib/storage/workflow.storage.js';
import { testOptions } from '../utils/create-test-app.js';
import { Prefixes, rawConnection } from '../utils/db.js';
import { PrivateMariaDb } from '../utils/private-db.js';
import { deferred, waitFor } from '../utils/wait.js';

@Injectable()
@StepRunner('health-echo')
class EchoRunner {
  runStep(step: Step<number>) {
    return StepOutcome.succeed(step.payload);
  }
}

/** A Kubernetes probe as the README shows it: terminus with the workflow indicator. */
@Controller('health')
class HealthController {
  static maxLagMs = 60_000;
  constructor(
    private readonly health: HealthCheckService,
    private readonly workflow: WorkflowHealthIndicator,
  ) {}

  @Get()
  @HealthCheck()
  check() {
    return this.health.check([() => this.workflow.isHealthy('workflow', { maxLagMs: HealthController.maxLagMs })]);
  }
}

const prefixes = new Prefixes('health');

/** An HTTP app with TerminusModule and WorkflowModule, listening on a free port. */
async function healthApp(options: Partial<WorkflowModuleOptions> & { prefix: string }) {
  const { prefix, ...rest } = options;
  const moduleRef = await Test.createTestingModule({
    imports: [
      WorkflowModule.forRoot({ ...testOptions({ prefix }), ...rest }),
      TerminusModule.forRoot({ logger: false }),
    ],
    controllers: [HealthController],
    providers: rest.worker === false ? [] : [EchoRunner],
  }).compile();
  const app = moduleRef.createNestApplication({ logger: false });
  await app.listen(0, '127.0.0.1');
  return app;
}

async function probe(app: INestApplication): Promise<{ status: number; body: any }> {
  const res = await fetch(`${await app.getUrl()}/health`);
  return { status: res.status, body: await res.json() };
}

afterAll(() => prefixes.dropAll());

describe('WorkflowHealthIndicator', () => {
  it('is up with the lag, on the probe and through HealthCheckService', async () => {
    const app = await healthApp({ prefix: prefixes.next() });
    try {
      // The worker has run a step: the loop is alive and the database answers.
      const service = app.get(WorkflowService);
      const { runId } = await service.submit('health-echo', { input: 7 });
      await service.waitForOutcome(runId, { timeoutMs: 10_000 });

      const { status, body } = await probe(app);
      expect(status).toBe(200);
      expect(body).toEqual({
        status: 'ok',
        info: { workflow: { status: 'up', lagMs: 0 } },
        error: {},
        details: { workflow: { status: 'up', lagMs: 0 } },
      });

      const result = await app
        .get(HealthCheckService)
        .check([() => app.get(WorkflowHealthIndicator).isHealthy('queue', { maxLagMs: 1_000 })]);
      expect(result.status).toBe('ok');
      expect(result.details).toEqual({ queue: { status: 'up', lagMs: 0 } });
      // The default key.
      await expect(app.get(WorkflowHealthIndicator).isHealthy()).resolves.toEqual({
        workflow: { status: 'up', lagMs: 0 },
      });
    } finally {
      await app.close();
    }
  });

  it('is down when the database is gone, and up again when it is back', async () => {
    const db = await PrivateMariaDb.create(0);
    let app: INestApplication | undefined;
    try {
      app = await healthApp({ prefix: 'healthdb_', connection: { url: db.url } });
      expect((await probe(app)).status).toBe(200);

      await db.stop('SIGKILL');
      const down = await probe(app);
      expect(down.status).toBe(503);
      expect(down.body.status).toBe('error');
      expect(down.body.error.workflow).toMatchObject({ status: 'down', lagMs: null });
      expect(down.body.error.workflow.message).toMatch(/^database did not answer: /);

      await db.start();
      await waitFor(async () => (await probe(app!)).status === 200, 'the probe to pass again', 30_000);
      expect((await probe(app)).body.details.workflow).toEqual({ status: 'up', lagMs: 0 });
    } finally {
      await app?.close();
      await db.destroy();
    }
  }, 90_000);

  it('is down when a frozen database does not answer within timeoutMs', async () => {
    const db = await PrivateMariaDb.create(0);
    let app: INestApplication | undefined;
    try {
      app = await healthApp({ prefix: 'healthfz_', connection: { url: db.url }, worker: false });
      const indicator = app.get(WorkflowHealthIndicator);
      await expect(indicator.isHealthy('db', { timeoutMs: 2_000 })).resolves.toEqual({
        db: { status: 'up', lagMs: 0 },
      });
      await db.freeze();
      try {
        const started = Date.now();
        const result = await indicator.isHealthy('db', { timeoutMs: 300 });
        expect(Date.now() - started).toBeLessThan(2_000);
        expect(result).toEqual({
          db: { status: 'down', lagMs: null, message: 'database did not answer: no answer within 300 ms' },
        });
      } finally {
        db.thaw();
      }
    } finally {
      await app?.close();
      await db.destroy();
    }
  }, 90_000);

  it('is down when the oldest due step has waited longer than maxLagMs (a worker: false app, nobody claims)', async () => {
    const clock = new ManualClock();
    const app = await healthApp({ prefix: prefixes.next(), worker: false, workflows: ['unclaimed'], clock });
    try {
      const service = app.get(WorkflowService);
      await service.submitMany('unclaimed', [{ input: 1 }, { input: 2 }]);
      clock.advance(3_000);
      await service.submit('unclaimed', { input: 3 });
      clock.advance(4_000);

      const indicator = app.get(WorkflowHealthIndicator);
      // The oldest of the three has waited 7 s, the newest 4 s: the lag is the oldest's.
      await expect(indicator.isHealthy('workflow', { maxLagMs: 10_000 })).resolves.toEqual({
        workflow: { status: 'up', lagMs: 7_000 },
      });
      await expect(indicator.isHealthy('workflow', { maxLagMs: 5_000 })).resolves.toEqual({
        workflow: {
          status: 'down',
          lagMs: 7_000,
          message: 'the oldest due step has waited 7000 ms, over maxLagMs (5000 ms)',
        },
      });
      // Without maxLagMs the lag is reported, never judged.
      await expect(indicator.isHealthy()).resolves.toEqual({ workflow: { status: 'up', lagMs: 7_000 } });

      HealthController.maxLagMs = 5_000;
      const { status, body } = await probe(app);
      expect(status).toBe(503);
      expect(body.error.workflow).toMatchObject({ status: 'down', lagMs: 7_000 });
    } finally {
      HealthController.maxLagMs = 60_000;
      await app.close();
    }
  });

  it('a worker: false process checks the database alone; a worker process is down when its loop stops or stalls', async () => {
    const submitOnly = await healthApp({ prefix: prefixes.next(), worker: false, workflows: ['health-echo'] });
    const prefix = prefixes.next();
    const worker = await healthApp({ prefix, worker: { pollIntervalMs: 100 } });
    let release: (() => void) | undefined;
    try {
      // No worker loop runs in the submit-only app, and it is up.
      expect(submitOnly.get(WorkflowWorker).loopBeatAt()).toBeUndefined();
      await expect(submitOnly.get(WorkflowHealthIndicator).isHealthy()).resolves.toEqual({
        workflow: { status: 'up', lagMs: 0 },
      });

      // A claim that never returns: the loop stops beating; after 5 s (3 polls are less) it is down.
      const storage = worker.get(WorkflowStorage);
      const stuck = deferred();
      release = () => stuck.resolve();
      const original = storage.claimBatch.bind(storage);
      const spy = jest.spyOn(storage, 'claimBatch').mockImplementation(async (...args) => {
        await stuck.promise;
        return original(...args);
      });
      const indicator = worker.get(WorkflowHealthIndicator);
      await waitFor(() => spy.mock.calls.length > 0, 'the loop to enter the stuck claim');
      await expect(indicator.isHealthy()).resolves.toEqual({ workflow: { status: 'up', lagMs: 0 } });
      const result = await waitFor(
        async () => {
          const r = await indicator.isHealthy();
          return r.workflow.status === 'down' ? r : undefined;
        },
        'the stalled loop to be reported',
        10_000,
        200,
      );
      expect(result.workflow.message).toMatch(/^the worker loop has not run for \d+ ms \(allowed: 5000 ms\)$/);
      expect(result.workflow.lagMs).toBe(0);

      stuck.resolve();
      spy.mockRestore();
      await waitFor(async () => (await indicator.isHealthy()).workflow.status === 'up', 'the loop to beat again');

      // A stopped worker (shutting down) is down at once.
      await worker.get(WorkflowWorker).stop();
      await expect(indicator.isHealthy()).resolves.toEqual({
        workflow: { status: 'down', lagMs: 0, message: 'the worker loop is not running' },
      });
    } finally {
      release?.();
      await submitOnly.close();
      await worker.close();
    }
  }, 30_000);

  it('reads the lag from the index: one dive into ix_state, a loose scan of ix_claim per queue', async () => {
    const prefix = prefixes.next();
    const app = await healthApp({ prefix, worker: false, workflows: ['unclaimed', 'other'] });
    const conn = await rawConnection();
    try {
      // A queue deep enough for the plan to matter: the loose scan reads one entry per priority, not 5,000 rows.
      const service = app.get(WorkflowService);
      for (const workflow of ['unclaimed', 'other'])
        await service.submitMany(
          workflow,
          Array.from({ length: 2_500 }, (_, i) => ({ input: i, priority: i % 3 })),
        );
      const t = tablesOf(prefix);
      await conn.query(`ANALYZE TABLE ${t.jobs}`);
      const [single] = await conn.query(`EXPLAIN ${oldestDueSql(t)}`);
      expect((single as any[]).map((r) => r.Extra)).toEqual(['Select tables optimized away']);
      const [grouped] = await conn.query(`EXPLAIN ${oldestDueByQueueSql(t)}`, [['unclaimed', 'other']]);
      expect(grouped).toEqual([expect.objectContaining({ key: 'ix_claim' })]);
      expect((grouped as any[])[0].Extra).toContain('Using index for group-by');
    } finally {
      await conn.end();
      await app.close();
    }
  });
});
