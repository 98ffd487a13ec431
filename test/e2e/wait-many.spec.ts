import { Injectable } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import { type Step, StepOutcome, StepRunner, WaitTimeoutError, WorkflowService } from 'nestjs-durable-workflow';
import { startApp } from '../utils/create-test-app.js';
import { Prefixes, rawConnection } from '../utils/db.js';

/**
 * Many waitForOutcome calls in one process share their polls: the lookups of one tick go
 * out as one statement (500 runs each), so a web process waiting on 1,000 runs does not
 * load the database 1,000 times as much as one waiting on one.
 */

@Injectable()
@StepRunner('doubled')
class DoubledRunner {
  async runStep(step: Step<number>) {
    return StepOutcome.succeed(step.payload * 2);
  }
}

const prefixes = new Prefixes('waitmany');
afterAll(() => prefixes.dropAll());

async function selects(): Promise<number> {
  const db = await rawConnection();
  try {
    const [rows] = await db.query("SHOW GLOBAL STATUS LIKE 'Com_select'");
    return Number((rows as Array<{ Value: string }>)[0].Value);
  } finally {
    await db.end();
  }
}

describe('many waits in one process', () => {
  const apps: TestingModule[] = [];
  afterEach(async () => {
    for (const app of apps.splice(0)) await app.close();
  });

  it('1,000 waits on runs no process works cost a few statements per poll, and each times out', async () => {
    const web = await startApp({ prefix: prefixes.next(), worker: false, options: { workflows: ['doubled'] } });
    apps.push(web);
    const service = web.get(WorkflowService);
    const runs = await service.submitMany(
      'doubled',
      Array.from({ length: 1_000 }, (_, i) => ({ input: i })),
    );
    const before = await selects();
    // A worker: false process polls every 250 ms: 1,000 waiters polling alone would send ~6,000 statements.
    const waits = await Promise.allSettled(runs.map((r) => service.waitForOutcome(r.runId, { timeoutMs: 1_500 })));
    const sent = (await selects()) - before;
    expect(waits.every((w) => w.status === 'rejected' && w.reason instanceof WaitTimeoutError)).toBe(true);
    expect(sent).toBeLessThan(100);
  });

  it('300 waits in a worker: false process all end with their runs, which a worker process finishes', async () => {
    const prefix = prefixes.next();
    const web = await startApp({ prefix, worker: false, options: { workflows: ['doubled'] } });
    apps.push(web);
    const service = web.get(WorkflowService);
    const runs = await service.submitMany(
      'doubled',
      Array.from({ length: 300 }, (_, i) => ({ input: i })),
    );
    const waits = Promise.all(runs.map((r) => service.waitForOutcome(r.runId, { timeoutMs: 20_000 })));
    apps.push(await startApp({ prefix, providers: [DoubledRunner] }));
    const outcomes = await waits;
    expect(outcomes.map((o) => (o.status === 'succeeded' ? o.result : o.status))).toEqual(
      Array.from({ length: 300 }, (_, i) => i * 2),
    );
  });
});
