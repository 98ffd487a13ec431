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
import { deferred, waitFor } from '../utils/wait.js';

@Injectable()
@StepRunner('ends-at-once')
class EndsAtOnce {
  runStep(step: Step<{ n: number }>) {
    return StepOutcome.succeed(step.payload.n);
  }
}

/** A terminal handler that cannot finish until the test lets it, and says when it has. */
@Injectable()
class HeldHandler {
  readonly gate = deferred();
  readonly handled = new Map<string, RunOutcome>();
  readonly done = deferred<RunOutcome>();

  @OnTerminal('ends-at-once')
  async onEnd(outcome: RunOutcome) {
    await this.gate.promise;
    this.handled.set(outcome.runId, outcome);
    this.done.resolve(outcome);
  }
}

/** What the README says about waitForOutcome and @OnTerminal, as a test does it. */
describe('waitForOutcome and @OnTerminal handlers', () => {
  const prefix = uniquePrefix('termorder');
  let app: TestingModule;
  let service: WorkflowService;
  let handler: HeldHandler;

  beforeAll(async () => {
    app = await startApp({ prefix, providers: [EndsAtOnce, HeldHandler] });
    service = app.get(WorkflowService);
    handler = app.get(HeldHandler);
  });
  afterAll(async () => {
    handler?.gate.resolve();
    await app?.close();
    await dropTables(prefix);
  });

  it('waitForOutcome resolves once the run has ended, without waiting for its handlers; a test waits for those itself', async () => {
    const { runId } = await service.submit('ends-at-once', { input: { n: 7 } });
    const outcome = await service.waitForOutcome(runId, { timeoutMs: 10_000 });
    expect(outcome).toMatchObject({ runId, status: 'succeeded', result: 7 });
    // The handler is held: the wait did not depend on it.
    expect(handler.handled.has(runId)).toBe(false);

    handler.gate.resolve();
    // Either way from the README: a promise the handler resolves...
    await expect(handler.done.promise).resolves.toMatchObject({ runId, status: 'succeeded' });
    // ...or polling for its effect with a deadline.
    expect(await waitFor(() => handler.handled.get(runId), 'the handler to have run', 10_000)).toMatchObject({
      result: 7,
    });
  });
});
