import { jest } from '@jest/globals';
import { Injectable } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import { type Step, StepOutcome, StepRunner, WorkflowService } from 'nestjs-durable-workflow';
import { startApp } from '../utils/create-test-app.js';
import { dropTables, uniquePrefix } from '../utils/db.js';
import { waitFor } from '../utils/wait.js';
import { GaleraCluster } from './cluster.js';

/**
 * A signal sent on one node while the run parks on another (multi-primary). On one server
 * the job row's lock orders the two; across nodes nothing is locked, so the signal's
 * transaction writes the run row, which the park writes too: certification lets one of
 * them commit and the other runs again on what the first wrote, and the wake-up is never
 * lost. `npm run test:cluster`.
 */
const cluster = new GaleraCluster();
jest.setTimeout(180_000);

/** Set per test: sends the run's signal from the app on the other node, not waiting for it. */
let signalElsewhere: (runId: string) => void = () => undefined;

@Injectable()
@StepRunner('approval', { concurrency: 8 })
class ApprovalRunner {
  runStep(step: Step<{ n: number }>) {
    if (step.stepNumber === 0) {
      // The signal's transaction starts on the other node while this step's settlement parks it here.
      signalElsewhere(step.runId);
      return StepOutcome.waitForSignal('go', step.payload);
    }
    return StepOutcome.succeed(step.received);
  }
}

describe('a signal and the wait it answers, on two nodes at once', () => {
  const prefix = uniquePrefix('gsig');
  let worker: TestingModule;
  let sender: TestingModule;

  beforeAll(async () => {
    await cluster.start();
    worker = await startApp({
      prefix,
      providers: [ApprovalRunner],
      options: { connection: { url: cluster.nodeUrl(1) } },
    });
    sender = await startApp({
      prefix,
      worker: false,
      options: { connection: { url: cluster.nodeUrl(2) }, workflows: ['approval'] },
    });
  }, 300_000);

  afterAll(async () => {
    await sender?.close();
    await worker?.close();
    await dropTables(prefix, cluster.nodeUrl(1)).catch(() => undefined);
  });

  it('never loses the wake-up: every run is woken by its signal and succeeds', async () => {
    const senderService = sender.get(WorkflowService);
    const sends: Array<Promise<boolean>> = [];
    signalElsewhere = (runId) =>
      sends.push(senderService.signal(runId, 'go', { ok: true }, { signalId: `go-${runId}` }));
    const service = worker.get(WorkflowService);
    const runs = await service.submitMany(
      'approval',
      Array.from({ length: 120 }, (_, n) => ({ input: { n } })),
    );
    await waitFor(() => sends.length === runs.length, 'every run to park and send its signal', 60_000);
    expect(await Promise.all(sends)).toEqual(runs.map(() => true));
    const stuck: string[] = [];
    await waitFor(
      async () => {
        stuck.length = 0;
        for (const r of runs) {
          const s = await service.status(r.runId);
          if (s?.state !== 'succeeded') stuck.push(`${r.runId}: ${s?.state} ${JSON.stringify(s?.waitingFor ?? {})}`);
        }
        return stuck.length === 0;
      },
      'every run to be woken and succeed',
      30_000,
    ).catch((err: Error) => {
      throw new Error(`${err.message}; not succeeded: ${stuck.slice(0, 10).join('; ')} (${stuck.length} in all)`);
    });
  });
});
