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
import { countRows } from '../utils/tables.js';
import { waitFor } from '../utils/wait.js';

interface Draft {
  topic: string;
  notes: string[];
}

@Injectable()
@StepRunner('writer')
class WriterRunner {
  seen: Array<{ step: number; headers: Record<string, string>; attempts: number }> = [];

  runStep(step: Step<Draft | { topic: string }>) {
    this.seen.push({ step: step.stepNumber, headers: { ...step.headers }, attempts: step.attempts });
    const draft: Draft = 'notes' in step.payload ? step.payload : { topic: step.payload.topic, notes: [] };
    if (step.stepNumber < 3)
      return StepOutcome.continue({ ...draft, notes: [...draft.notes, `note ${step.stepNumber}`] });
    return StepOutcome.succeed({ text: `${draft.topic}: ${draft.notes.join(', ')}` });
  }
}

@Injectable()
class Audit {
  outcomes: RunOutcome[] = [];

  @OnTerminal('writer')
  record(outcome: RunOutcome) {
    this.outcomes.push(outcome);
  }
}

describe('a run of steps, end to end', () => {
  const prefix = uniquePrefix('chain');
  let app: TestingModule;

  beforeAll(async () => {
    app = await startApp({ prefix, providers: [WriterRunner, Audit] });
  });
  afterAll(async () => {
    await app?.close();
    await dropTables(prefix);
  });

  it('threads payloads through every step, succeeds with the result, and delivers the outcome to @OnTerminal', async () => {
    const workflows = app.get(WorkflowService);
    const { runId, newlySubmitted } = await workflows.submit('writer', {
      input: { topic: 'queues' },
      headers: { tenant: 'acme' },
    });
    expect(newlySubmitted).toBe(true);

    const outcome = await workflows.waitForOutcome(runId, { timeoutMs: 10_000 });
    expect(outcome).toMatchObject({
      runId,
      workflow: 'writer',
      status: 'succeeded',
      result: { text: 'queues: note 0, note 1, note 2' },
      headers: { tenant: 'acme' },
      finalStep: 3,
    });

    const runner = app.get(WriterRunner);
    expect(runner.seen.map((s) => s.step)).toEqual([0, 1, 2, 3]);
    expect(runner.seen.every((s) => s.headers.tenant === 'acme' && s.attempts === 1)).toBe(true);

    const status = await workflows.status(runId);
    expect(status).toMatchObject({ state: 'succeeded', currentStep: 3, result: outcome.result });
    expect(status!.finishedAt).toBeInstanceOf(Date);

    const audit = app.get(Audit);
    const deadline = Date.now() + 10_000;
    while (!audit.outcomes.some((o) => o.runId === runId) && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 20));
    const delivered = audit.outcomes.filter((o) => o.runId === runId);
    expect(delivered).toHaveLength(1);
    expect(delivered[0]).toMatchObject({ status: 'succeeded', result: outcome.result, finalStep: 3 });
    expect(delivered[0].finishedAt).toBeInstanceOf(Date);

    // Finished work leaves the live queue: the delivery's own row goes once the handler's
    // return is settled, which commits just after the handler ran.
    await waitFor(async () => (await countRows(prefix)).jobs === 0, 'the live queue to be empty', 5_000);
  });
});
