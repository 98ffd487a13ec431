import { Injectable } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import { type Step, StepOutcome, StepRunner, WorkflowService } from 'nestjs-durable-workflow';
import { startApp } from '../utils/create-test-app.js';
import { dropTables, uniquePrefix } from '../utils/db.js';
import { countRows } from '../utils/tables.js';

@Injectable()
@StepRunner('tick')
class Tick {
  runStep(step: Step<number>) {
    return step.stepNumber < 2 ? StepOutcome.continue(step.payload + 1) : StepOutcome.succeed(step.payload);
  }
}

/**
 * A short soak: runs arrive continuously, retention keeps finished runs for one second.
 * The tables must plateau rather than grow with the number of runs ever submitted.
 */
describe('bounded storage under a steady stream of runs', () => {
  const prefix = uniquePrefix('bounded');
  let app: TestingModule;

  beforeAll(async () => {
    app = await startApp({ prefix, providers: [Tick], options: { retention: { runsMs: 1_000, deadMs: 1_000 } } });
  });
  afterAll(async () => {
    await app?.close();
    await dropTables(prefix);
  });

  it('keeps runs, jobs and dead letters bounded while thousands of runs pass through', async () => {
    const service = app.get(WorkflowService);
    const samples: Array<{ at: number; runs: number; jobs: number }> = [];
    const started = Date.now();
    const durationMs = 9_000;
    let submitted = 0;
    while (Date.now() - started < durationMs) {
      await service.submitMany(
        'tick',
        Array.from({ length: 40 }, (_, i) => ({ input: i })),
      );
      submitted += 40;
      const c = await countRows(prefix);
      samples.push({ at: Date.now() - started, runs: c.runs, jobs: c.jobs });
      await new Promise((r) => setTimeout(r, 100)); // the arrival rate of the stream, not a wait for a condition
    }
    const third = (from: number, to: number) =>
      Math.max(...samples.filter((s) => s.at >= from && s.at < to).map((s) => s.runs));
    const middle = third(durationMs / 3, (2 * durationMs) / 3);
    const last = third((2 * durationMs) / 3, durationMs + 1);

    console.log(
      `bounded storage: ${submitted} runs submitted; peak runs table ${middle} (middle third), ${last} (last third)`,
    );
    expect(submitted).toBeGreaterThan(1_500);
    expect(last).toBeLessThan(submitted / 2);
    expect(last).toBeLessThan(middle * 1.5 + 100);
    expect(Math.max(...samples.map((s) => s.jobs))).toBeLessThan(400);
    expect((await countRows(prefix)).dead).toBe(0);
  }, 60_000);
});
