import { ConsoleLogger, Injectable, Logger } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import { type Step, StepOutcome, StepRunner, WorkflowService } from 'nestjs-durable-workflow';
import { startApp } from '../utils/create-test-app.js';
import { Prefixes } from '../utils/db.js';
import { deferred, holdsFor, waitFor } from '../utils/wait.js';

/** Invocations of runner code running at once, process-wide, and the most seen. */
@Injectable()
class Overlap {
  active = 0;
  max = 0;
  calls = 0;
  started = new Map<string, ReturnType<typeof deferred<void>>>();

  startedFor(runId: string): Promise<void> {
    return this.gate(runId).promise;
  }

  /** Runs `ms` of work that ignores the step's signal, counted as one invocation. */
  async work(step: Step, ms: number): Promise<void> {
    this.calls++;
    this.max = Math.max(this.max, ++this.active);
    this.gate(step.runId).resolve();
    try {
      await new Promise((r) => setTimeout(r, ms));
    } finally {
      this.active--;
    }
  }

  private gate(runId: string) {
    let d = this.started.get(runId);
    if (!d) this.started.set(runId, (d = deferred<void>()));
    return d;
  }
}

/** Times out after 200 ms every time, and keeps running for a second anyway. */
@Injectable()
@StepRunner('stubborn', { concurrency: 1, timeoutMs: 200, maxAttempts: 3 })
class StubbornRunner {
  constructor(private readonly overlap: Overlap) {}

  async runStep(step: Step) {
    await this.overlap.work(step, 1_000);
    return StepOutcome.succeed('too late');
  }
}

/** Allows more at once than the process does; ignores a cancel for a second. */
@Injectable()
@StepRunner('deaf', { concurrency: 8 })
class DeafRunner {
  constructor(private readonly overlap: Overlap) {}

  async runStep(step: Step) {
    await this.overlap.work(step, 1_000);
    return StepOutcome.succeed('too late');
  }
}

/** Ignores its timeout until the test lets it go. */
@Injectable()
@StepRunner('stray', { timeoutMs: 200, maxAttempts: 1 })
class StrayRunner {
  started = deferred<void>();
  release = deferred<void>();

  async runStep() {
    this.started.resolve();
    await this.release.promise;
    return StepOutcome.succeed('too late');
  }
}

/** Has no timeout and ignores the shutdown's abort until the test lets it go. */
@Injectable()
@StepRunner('never')
class NeverRunner {
  started = deferred<void>();
  release = deferred<void>();

  async runStep() {
    this.started.resolve();
    await this.release.promise;
    return StepOutcome.succeed('too late');
  }
}

class RecordingLogger extends ConsoleLogger {
  lines: Array<{ level: string; message: string }> = [];
  override warn(message: unknown): void {
    this.lines.push({ level: 'warn', message: String(message) });
  }
  override log(message: unknown): void {
    this.lines.push({ level: 'log', message: String(message) });
  }
  override error(message: unknown): void {
    this.lines.push({ level: 'error', message: String(message) });
  }
}

const prefixes = new Prefixes('slots');
afterAll(() => prefixes.dropAll());

/**
 * A slot is a runner invocation: it is taken at the claim and given back only when the
 * runner's promise settles, even when the runtime settled the job earlier (timeout,
 * cancel, lost lease), so `concurrency` also bounds runners that ignore step.signal.
 */
describe('slots of runners that ignore their aborted signal', () => {
  let app: TestingModule | undefined;
  afterEach(async () => {
    await app?.close();
    app = undefined;
  });

  it("a runner's concurrency: 1 holds after each timeout: 3 deliveries each of 2 runs, never two at once", async () => {
    app = await startApp({ prefix: prefixes.next(), providers: [Overlap, StubbornRunner] });
    const service = app.get(WorkflowService);
    const overlap = app.get(Overlap);
    const runs = await service.submitMany('stubborn', [{ input: 1 }, { input: 2 }]);
    const outcomes = await Promise.all(runs.map((r) => service.waitForOutcome(r.runId, { timeoutMs: 20_000 })));
    expect(outcomes.map((o) => o.status)).toEqual(['failed', 'failed']);
    for (const o of outcomes) expect(o.error).toMatch(/timed out/);
    await waitFor(() => overlap.calls === 6 && overlap.active === 0, 'the last abandoned invocation to return');
    expect(overlap.max).toBe(1);
  });

  it('worker.concurrency holds after a cancel: cancelled runners keep their slots until they return', async () => {
    app = await startApp({
      prefix: prefixes.next(),
      providers: [Overlap, DeafRunner],
      worker: { concurrency: 2, pollIntervalMs: 50, leaseMs: 5_000, shutdownTimeoutMs: 2_000 },
    });
    const service = app.get(WorkflowService);
    const overlap = app.get(Overlap);
    const first = await service.submitMany('deaf', [{ input: 1 }, { input: 2 }]);
    await Promise.all(first.map((r) => overlap.startedFor(r.runId)));
    for (const r of first) expect(await service.cancel(r.runId)).toBe(true);
    for (const r of first)
      expect(await service.waitForOutcome(r.runId, { timeoutMs: 5_000 })).toMatchObject({ status: 'cancelled' });

    // The cancelled runners still run, so the second pair has to wait for their slots.
    expect(overlap.active).toBe(2);
    const second = await service.submitMany('deaf', [{ input: 3 }, { input: 4 }]);
    const outcomes = await Promise.all(second.map((r) => service.waitForOutcome(r.runId, { timeoutMs: 10_000 })));
    expect(outcomes.map((o) => o.status)).toEqual(['succeeded', 'succeeded']);
    expect(overlap.calls).toBe(4);
    expect(overlap.max).toBe(2);
  });

  it('logs a runner that keeps running after its signal was aborted, once per lease period, with run, step and time', async () => {
    const leaseMs = 500;
    const recorder = new RecordingLogger();
    app = await startApp({
      prefix: prefixes.next(),
      providers: [StrayRunner],
      worker: { pollIntervalMs: 50, leaseMs, shutdownTimeoutMs: 2_000 },
    });
    app.useLogger(recorder);
    const runner = app.get(StrayRunner);
    try {
      const { runId } = await app.get(WorkflowService).submit('stray', { input: 1 });
      await runner.started.promise;
      const strayLines = () =>
        recorder.lines.filter(
          (l) => l.level === 'warn' && l.message.includes(runId) && /still running/.test(l.message),
        );
      await waitFor(() => strayLines().length >= 2, 'two reports of the stray runner', 5_000);
      const [first, second] = strayLines();
      expect(first.message).toMatch(/^stray step 0 of run \S+ .*still running (\d+) ms after it started/);
      const ms = (line: string) => Number(/still running (\d+) ms/.exec(line)![1]);
      expect(ms(first.message)).toBeGreaterThanOrEqual(leaseMs);
      expect(ms(second.message) - ms(first.message)).toBeGreaterThanOrEqual(leaseMs - 50);

      runner.release.resolve();
      const count = strayLines().length;
      await holdsFor(() => strayLines().length === count, 3 * leaseMs, 'no report once the runner returned');
      expect(await app.get(WorkflowService).status(runId)).toMatchObject({ state: 'failed' });
    } finally {
      runner.release.resolve();
      Logger.overrideLogger(new ConsoleLogger());
    }
  });

  it('app.close() is bounded by shutdownTimeoutMs and the hand-back although a runner never returns', async () => {
    app = await startApp({
      prefix: prefixes.next(),
      providers: [NeverRunner],
      worker: { pollIntervalMs: 50, leaseMs: 5_000, shutdownTimeoutMs: 300 },
    });
    const runner = app.get(NeverRunner);
    try {
      await app.get(WorkflowService).submit('never', { input: 1 });
      await runner.started.promise;
      const closing = app.close();
      app = undefined;
      const started = Date.now();
      await closing;
      expect(Date.now() - started).toBeLessThan(3_000);
    } finally {
      runner.release.resolve();
    }
  });
});
