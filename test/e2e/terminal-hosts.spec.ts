/**
 * Which @OnTerminal handlers hear of a run must not depend on the process that ends it:
 * a `worker: false` web process that cancels, a worker that hosts the runner but not
 * the handler. A handler that no process hosts any more (renamed or removed) must not
 * leave its deliveries waiting unseen forever.
 */
import { Injectable } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import {
  OnTerminal,
  type RunOutcome,
  type Step,
  StepOutcome,
  StepRunner,
  WorkflowService,
} from 'nestjs-durable-workflow';
import { startApp } from '../utils/create-test-app.js';
import { dropTables, uniquePrefix } from '../utils/db.js';
import { waitFor } from '../utils/wait.js';

@Injectable()
@StepRunner('doc')
class DocRunner {
  runStep(step: Step<{ n: number }>) {
    return StepOutcome.succeed({ done: step.payload.n });
  }
}

@Injectable()
class Audit {
  seen: RunOutcome[] = [];

  @OnTerminal('doc')
  record(outcome: RunOutcome) {
    this.seen.push(outcome);
  }
}

/** The handler of an older release, since renamed. */
@Injectable()
class OldAudit {
  @OnTerminal('doc')
  record() {}
}

describe('terminal deliveries across processes', () => {
  const prefixes: string[] = [];
  const apps: TestingModule[] = [];
  const prefix = () => {
    const p = uniquePrefix('hosts');
    prefixes.push(p);
    return p;
  };
  const start = async (...args: Parameters<typeof startApp>) => {
    const app = await startApp(...args);
    apps.push(app);
    return app;
  };

  afterAll(async () => {
    for (const app of apps) await app.close().catch(() => undefined);
    for (const p of prefixes) await dropTables(p);
  });

  it('a worker: false web process that cancels a pending run writes the delivery of a handler the worker hosts', async () => {
    const p = prefix();
    const worker = await start({ prefix: p, providers: [DocRunner, Audit] });
    const web = await start({ prefix: p, worker: false, options: { workflows: ['doc'] } });
    const { runId } = await web.get(WorkflowService).submit('doc', { input: { n: 1 }, delayMs: 60_000 });
    expect(await web.get(WorkflowService).cancel(runId)).toBe(true);
    const audit = worker.get(Audit);
    const outcome = await waitFor(
      () => audit.seen.find((o) => o.runId === runId),
      'the cancelled outcome at the worker’s handler',
    );
    expect(outcome).toMatchObject({ status: 'cancelled', workflow: 'doc', ending: 1 });
  });

  it('a handler hosted only in another process than the runner hears of every run', async () => {
    const p = prefix();
    const runner = await start({ prefix: p, providers: [DocRunner] });
    const listener = await start({ prefix: p, providers: [Audit] });
    const service = runner.get(WorkflowService);
    const ids = await Promise.all([1, 2, 3].map(async (n) => (await service.submit('doc', { input: { n } })).runId));
    const audit = listener.get(Audit);
    await waitFor(
      () => ids.every((id) => audit.seen.some((o) => o.runId === id)),
      'every outcome at the other process’s handler',
    );
    expect(audit.seen.filter((o) => ids.includes(o.runId)).map((o) => o.status)).toEqual([
      'succeeded',
      'succeeded',
      'succeeded',
    ]);
  });

  it('the deliveries of a handler no process hosts any more dead-letter, naming the handler', async () => {
    const p = prefix();
    let offset = 0;
    const clock = { now: () => Date.now() + offset };
    // The old release registered its handler, then was replaced by one without it.
    const old = await startApp({ prefix: p, providers: [OldAudit] });
    await old.close();
    const current = await start({ prefix: p, providers: [DocRunner, Audit], options: { clock } });
    const service = current.get(WorkflowService);
    const { runId } = await service.submit('doc', { input: { n: 7 } });
    const audit = current.get(Audit);
    await waitFor(() => audit.seen.some((o) => o.runId === runId), 'the live handler’s delivery');
    expect(await service.deadSteps()).toEqual([]);

    offset = 11 * 60_000; // past the time a handler may go unseen
    const dead = await waitFor(
      async () => (await service.deadSteps()).find((d) => d.runId === runId),
      'the orphaned delivery in the dead letters',
    );
    expect(dead.handler).toBe('OldAudit#record');
    expect(dead.lastError).toMatch(/no running process hosts the @OnTerminal handler OldAudit#record/);
    // The live handler got its delivery once and is not dead-lettered.
    expect(audit.seen.filter((o) => o.runId === runId)).toHaveLength(1);
    expect((await service.deadSteps()).filter((d) => d.runId === runId)).toHaveLength(1);
  });
});
