/**
 * The sample app's research agent, tested the way its README tells users to test theirs:
 * the sample's own runner, controller and terminal hook in a @nestjs/testing module, the
 * model client swapped for a stub, a ManualClock instead of waiting out the 429's retry
 * delay or the approval's hour, and drainWorkflows instead of polling.
 *
 * The sample's AppModule itself is not booted: its forRoot() has a fixed connection and
 * no clock, so the test module declares the same providers and controller with a test
 * database, table prefix and clock of its own.
 */
import type { TestingModule } from '@nestjs/testing';
import { Test } from '@nestjs/testing';
import { type RunOutcome, WorkflowModule, WorkflowService } from 'nestjs-durable-workflow';
import { drainWorkflows, ManualClock } from 'nestjs-durable-workflow/testing';
import { type CompletionRequest, FakeModelClient, RateLimitedError } from '../../sample/fake-model.client.js';
import { ResearchAgentRunner } from '../../sample/research-agent.runner.js';
import { RunNotifier } from '../../sample/run-notifier.service.js';
import { RunsController } from '../../sample/runs.controller.js';
import { DB_URL, dropTables, uniquePrefix } from '../utils/db.js';

const HOUR = 60 * 60_000;

/** Answers at once and records every prompt; throttles when asked to, as the fake does. */
class StubModel {
  readonly prompts: string[] = [];
  async complete({ prompt, rateLimited }: CompletionRequest): Promise<string> {
    this.prompts.push(rateLimited ? `429: ${prompt}` : prompt);
    if (rateLimited) throw new RateLimitedError(1000);
    return `stub: ${prompt}`;
  }
}

describe('sample: the research agent with an approval', () => {
  const prefix = uniquePrefix('sample');
  const clock = new ManualClock();
  const model = new StubModel();
  const notified: RunOutcome[] = [];
  let app: TestingModule;
  let runs: RunsController;
  let workflows: WorkflowService;

  beforeAll(async () => {
    app = await Test.createTestingModule({
      imports: [
        WorkflowModule.forRoot({
          connection: { url: DB_URL },
          tablePrefix: prefix,
          clock,
          worker: { pollIntervalMs: 50, shutdownTimeoutMs: 2_000 },
          maxPayloadBytes: 1024 * 1024,
        }),
      ],
      controllers: [RunsController],
      providers: [FakeModelClient, ResearchAgentRunner, RunNotifier],
    })
      .overrideProvider(FakeModelClient)
      .useValue(model)
      .compile();
    // Keep what the terminal hook is handed (it only logs).
    const notifier = app.get(RunNotifier);
    const notify = notifier.notify.bind(notifier);
    notifier.notify = (outcome) => {
      notified.push(outcome);
      notify(outcome);
    };
    await app.init();
    runs = app.get(RunsController);
    workflows = app.get(WorkflowService);
  });

  afterAll(async () => {
    await app?.close();
    await dropTables(prefix);
  });

  it('waits for the approval after its draft, and succeeds once POST /runs/:id/approve says yes', async () => {
    const { runId } = await runs.submit({ topic: 'durable workflows', approval: true });
    await drainWorkflows(app);
    // The draft was throttled (the sample's simulated 429): it comes back after 1 s, without an attempt used.
    expect(await workflows.status(runId)).toMatchObject({ state: 'pending', currentStep: 2 });
    clock.advance(1_000);
    await drainWorkflows(app);
    expect(await workflows.status(runId)).toMatchObject({
      state: 'waiting',
      waitingFor: { signal: 'approval', until: new Date(clock.now() + HOUR) },
    });

    expect(await runs.approve(runId, { approved: true, note: 'ship it' })).toEqual({ sent: true });
    await drainWorkflows(app);
    const status = await runs.status(runId);
    expect(status).toMatchObject({
      state: 'succeeded',
      result: {
        topic: 'durable workflows',
        summary: 'stub: List the key facts about durable workflows.',
        draft: 'stub: Write a short article on durable workflows from the notes.',
        review: 'stub: Review the article on durable workflows.',
      },
    });
    // One model call per step; none repeated for the waits.
    expect(model.prompts).toEqual([
      'List the key facts about durable workflows.',
      '429: Write a short article on durable workflows from the notes.',
      'Write a short article on durable workflows from the notes.',
      'Review the article on durable workflows.',
    ]);
    // drainWorkflows also waited for the terminal hook.
    expect(notified.filter((o) => o.runId === runId).map((o) => o.status)).toEqual(['succeeded']);
  });

  it('fails the run when nobody approves within the hour', async () => {
    const { runId } = await runs.submit({ topic: 'nobody reads this', approval: true });
    await drainWorkflows(app);
    clock.advance(1_000); // the 429's retry
    await drainWorkflows(app);
    expect(await workflows.status(runId)).toMatchObject({ state: 'waiting' });
    clock.advance(HOUR);
    await drainWorkflows(app);
    expect(await workflows.status(runId)).toMatchObject({
      state: 'failed',
      error: 'nobody approved the draft within an hour',
    });
    // The approval comes too late: no run waits for it any more.
    await expect(runs.approve(runId, { approved: true })).rejects.toThrow(/no running run/);
  });
});
