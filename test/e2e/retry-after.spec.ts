/**
 * StepError.transient(msg, { retryAfterMs }): a provider's Retry-After decides when the
 * step runs again, instead of the backoff; it is still an attempt.
 */
import { Injectable } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import { type Step, StepError, StepOutcome, StepRunner, WorkflowService } from 'nestjs-durable-workflow';
import { drainWorkflows, ManualClock } from 'nestjs-durable-workflow/testing';
import { startApp } from '../utils/create-test-app.js';
import { dropTables, uniquePrefix } from '../utils/db.js';

const MINUTE = 60_000;

/** Rate-limited on its first call, with the provider asking for five minutes; the backoff alone would wait an hour. */
@Injectable()
@StepRunner('llm-call', { maxAttempts: 3, backoff: { baseMs: 60 * MINUTE, maxMs: 60 * MINUTE } })
class LlmCall {
  attempts: number[] = [];
  runStep(step: Step<{ retryAfterMs: unknown }>) {
    this.attempts.push(step.attempts);
    if (step.attempts === 1)
      throw StepError.transient('429 Too Many Requests', { retryAfterMs: step.payload.retryAfterMs as number });
    return StepOutcome.succeed('answered');
  }
}

describe('StepError.transient with retryAfterMs', () => {
  const prefix = uniquePrefix('retryafter');
  const clock = new ManualClock();
  let app: TestingModule;
  let service: WorkflowService;

  beforeAll(async () => {
    app = await startApp({
      prefix,
      providers: [LlmCall],
      options: { clock },
      worker: { pollIntervalMs: 5_000, leaseMs: 10_000 },
    });
    service = app.get(WorkflowService);
  });

  afterAll(async () => {
    await app?.close();
    await dropTables(prefix);
  });

  it('retries after exactly the delay the provider asked for, as the next attempt', async () => {
    const { runId } = await service.submit('llm-call', { input: { retryAfterMs: 5 * MINUTE } });
    await drainWorkflows(app);
    const waiting = await service.status(runId);
    expect(waiting).toMatchObject({ state: 'pending', attempts: 1 });
    expect(waiting!.runAt!.getTime()).toBe(clock.now() + 5 * MINUTE);
    clock.advance(5 * MINUTE - 1);
    await drainWorkflows(app);
    expect(await service.status(runId)).toMatchObject({ state: 'pending' });
    clock.advance(1);
    await drainWorkflows(app);
    expect(await service.status(runId)).toMatchObject({ state: 'succeeded', result: 'answered' });
    expect(app.get(LlmCall).attempts).toEqual([1, 2]); // the retry is the step's second attempt
  });

  it('a retryAfterMs out of range falls back to the backoff', async () => {
    const { runId } = await service.submit('llm-call', { input: { retryAfterMs: -1 } });
    await drainWorkflows(app);
    const waiting = await service.status(runId);
    // Equal jitter: between half and all of the hour.
    expect(waiting!.runAt!.getTime() - clock.now()).toBeGreaterThanOrEqual(30 * MINUTE);
    clock.advance(60 * MINUTE);
    await drainWorkflows(app);
    expect(await service.status(runId)).toMatchObject({ state: 'succeeded' });
  });
});
