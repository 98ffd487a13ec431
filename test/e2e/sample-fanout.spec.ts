/**
 * The sample's fan-out: POST /runs with `sources` reads each source in a child run of its
 * own, and the agent drafts from their notes. The sample's runners, controller and hook in
 * a @nestjs/testing module, the model client swapped for a stub, a ManualClock past the
 * draft's simulated 429 and a reader's retries, drainWorkflows instead of polling.
 */
import { BadRequestException } from '@nestjs/common';
import { Test, type TestingModule } from '@nestjs/testing';
import { WorkflowModule, WorkflowService } from 'nestjs-durable-workflow';
import { drainWorkflows, ManualClock } from 'nestjs-durable-workflow/testing';
import { type CompletionRequest, FakeModelClient, RateLimitedError } from '../../sample/fake-model.client.js';
import { ResearchAgentRunner } from '../../sample/research-agent.runner.js';
import { RunNotifier } from '../../sample/run-notifier.service.js';
import { RunsController } from '../../sample/runs.controller.js';
import { SourceReaderRunner } from '../../sample/source-reader.runner.js';
import { DB_URL, dropTables, uniquePrefix } from '../utils/db.js';

/** Answers at once, throttles when asked to as the fake does, and cannot read the source "gone". */
class StubModel {
  readonly prompts: string[] = [];
  async complete({ prompt, rateLimited }: CompletionRequest): Promise<string> {
    this.prompts.push(prompt);
    if (rateLimited) throw new RateLimitedError(1000);
    if (prompt.includes(' gone ')) throw new Error('404 Not Found');
    return `stub: ${prompt}`;
  }
}

describe('sample: the research agent reads its sources in child runs', () => {
  const prefix = uniquePrefix('samplefan');
  const clock = new ManualClock();
  const model = new StubModel();
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
      providers: [FakeModelClient, ResearchAgentRunner, SourceReaderRunner, RunNotifier],
    })
      .overrideProvider(FakeModelClient)
      .useValue(model)
      .compile();
    await app.init();
    runs = app.get(RunsController);
    workflows = app.get(WorkflowService);
  });

  afterAll(async () => {
    await app?.close();
    await dropTables(prefix);
  });

  /** Drains, and moves the clock past every retry and the 429 until the run has ended. */
  async function finish(runId: string) {
    for (let i = 0; i < 10; i++) {
      await drainWorkflows(app);
      const status = await workflows.status(runId);
      if (status && ['succeeded', 'failed', 'cancelled'].includes(status.state)) return status;
      clock.advance(10_000);
    }
    throw new Error(`run ${runId} did not end`);
  }

  it('fans out one reader per source and drafts from their notes, in source order', async () => {
    const { runId } = await runs.submit({ topic: 'queues', sources: ['arxiv', 'wikipedia', 'news'] });
    await drainWorkflows(app);
    // Each source was read by a run of its own, named after the agent's run and its place.
    for (const [i, source] of ['arxiv', 'wikipedia', 'news'].entries()) {
      expect(await runs.status(`${runId}-0-${i}`)).toMatchObject({
        workflow: 'source-reader',
        parentRunId: runId,
        state: 'succeeded',
        result: { source, notes: `stub: Read what ${source} says about queues.` },
      });
    }
    expect(await finish(runId)).toMatchObject({
      state: 'succeeded',
      result: {
        topic: 'queues',
        sources: ['arxiv', 'wikipedia', 'news'],
        summary: [
          '[arxiv] stub: Read what arxiv says about queues.',
          '[wikipedia] stub: Read what wikipedia says about queues.',
          '[news] stub: Read what news says about queues.',
        ].join('\n'),
        draft: 'stub: Write a short article on queues from the notes.',
        review: 'stub: Review the article on queues.',
      },
    });
  });

  it('drafts from the sources that could be read when one cannot', async () => {
    const { runId } = await runs.submit({ topic: 'logs', sources: ['gone', 'wikipedia'] });
    const status = await finish(runId);
    expect(status).toMatchObject({ state: 'succeeded', result: { sources: ['wikipedia'] } });
    // The reader tried three times (its maxAttempts), then its run failed; the agent went on.
    expect(model.prompts.filter((p) => p === 'Read what gone says about logs.')).toHaveLength(3);
    expect(await workflows.status(`${runId}-0-0`)).toMatchObject({ state: 'failed' });
  });

  it('refuses sources that are not a list of names, before anything starts', async () => {
    await expect(runs.submit({ topic: 'x', sources: 'arxiv' })).rejects.toThrow(BadRequestException);
    await expect(runs.submit({ topic: 'x', sources: Array(11).fill('a') })).rejects.toThrow(/1 to 10/);
  });
});
