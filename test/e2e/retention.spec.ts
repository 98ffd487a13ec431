import { Injectable } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import { type Step, StepError, StepOutcome, StepRunner, WorkflowService } from 'nestjs-durable-workflow';
import { startApp } from '../utils/create-test-app.js';
import { dropTables, uniquePrefix } from '../utils/db.js';
import { countRows } from '../utils/tables.js';
import { deferred, waitFor } from '../utils/wait.js';

const DAY = 24 * 3600 * 1000;

@Injectable()
@StepRunner('keeper')
class Keeper {
  gate = deferred();
  async runStep(step: Step<{ mode: 'ok' | 'die' | 'wait' }>) {
    if (step.payload.mode === 'die') throw StepError.permanent('boom');
    if (step.payload.mode === 'wait') await this.gate.promise;
    return StepOutcome.succeed('done');
  }
}

/** Finished runs and dead letters leave after their retention window; nothing else does. */
describe('retention', () => {
  const prefix = uniquePrefix('retain');
  let app: TestingModule;
  let offset = 0;

  beforeAll(async () => {
    app = await startApp({
      prefix,
      providers: [Keeper],
      options: { clock: { now: () => Date.now() + offset }, retention: { runsMs: 7 * DAY, deadMs: 3 * DAY } },
    });
  });
  afterAll(async () => {
    app.get(Keeper).gate.resolve();
    await app?.close();
    await dropTables(prefix);
  });

  it('sweeps expired finished runs and dead letters, keeps active and recent ones', async () => {
    const service = app.get(WorkflowService);
    const [ok, died, waiting] = await service.submitMany('keeper', [
      { input: { mode: 'ok' } },
      { input: { mode: 'die' } },
      { input: { mode: 'wait' } },
    ]);
    await service.waitForOutcome(ok.runId, { timeoutMs: 10_000 });
    await service.waitForOutcome(died.runId, { timeoutMs: 10_000 });
    expect((await service.deadSteps({ workflow: 'keeper' })).map((d) => d.runId)).toEqual([died.runId]);

    // Four days on: the dead letter (3 days) is past retention, the finished runs (7 days) are not.
    offset = 4 * DAY;
    await waitFor(
      async () => (await service.deadSteps({ workflow: 'keeper' })).length === 0,
      'dead letter swept',
      20_000,
    );
    expect(await service.status(ok.runId)).not.toBeNull();
    expect(await service.status(died.runId)).not.toBeNull();

    // Eight days on: finished runs go; the run still waiting at its step stays, however old.
    offset = 8 * DAY;
    await waitFor(async () => (await service.status(ok.runId)) === null, 'finished run swept', 70_000);
    expect(await service.status(died.runId)).toBeNull();
    expect(await service.status(waiting.runId)).toMatchObject({ state: 'running' });
    expect(await countRows(prefix)).toMatchObject({ runs: 1, jobs: 1, dead: 0 });
  }, 120_000);
});
