import { ConsoleLogger, Injectable, Logger } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import { type Step, StepOutcome, StepRunner, WorkflowService } from 'nestjs-durable-workflow';
import { startApp } from '../utils/create-test-app.js';
import { Prefixes, rawConnection } from '../utils/db.js';
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

/**
 * Step 0 waits for the test's go, then continues in place; step 1 and later are counted.
 * Runs of input 'hold' block in step 0 until the test releases them.
 */
@Injectable()
@StepRunner('relay')
class RelayRunner {
  go = deferred<void>();
  release = deferred<void>();
  started = new Map<string, ReturnType<typeof deferred<void>>>();
  laterSteps = new Map<string, number>();

  startedFor(runId: string) {
    let d = this.started.get(runId);
    if (!d) this.started.set(runId, (d = deferred<void>()));
    return d.promise;
  }

  async runStep(step: Step<string>) {
    this.startedFor(step.runId);
    this.started.get(step.runId)!.resolve();
    if (step.stepNumber > 0) {
      this.laterSteps.set(step.runId, (this.laterSteps.get(step.runId) ?? 0) + 1);
      return StepOutcome.succeed(step.payload);
    }
    await (step.payload === 'hold' ? this.release.promise : this.go.promise);
    return StepOutcome.continue(step.payload);
  }
}

/** Six steps of 2 ms each, continuing in place, counted by Overlap. */
@Injectable()
@StepRunner('overlap-chain')
class ChainOverlapRunner {
  constructor(private readonly overlap: Overlap) {}

  async runStep(step: Step<number>) {
    await this.overlap.work(step, 2);
    return step.stepNumber < 5 ? StepOutcome.continue(step.payload) : StepOutcome.succeed(step.payload);
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

/**
 * A slot serves runners, not commits: a step that returned gives its slot back while its
 * settlement commits, and a successor leased to this worker waits for the next free slot
 * like a claimed step would (before any claim), so `concurrency` still bounds runners.
 */
describe('a slot while its step settles', () => {
  let app: TestingModule | undefined;
  afterEach(async () => {
    await app?.close();
    app = undefined;
  });

  it('serves another run while a settlement waits, queues the successor, and a cancel reaches it before it runs', async () => {
    const prefix = prefixes.next();
    app = await startApp({
      prefix,
      providers: [RelayRunner],
      worker: { concurrency: 2, pollIntervalMs: 50, leaseMs: 5_000, shutdownTimeoutMs: 2_000 },
    });
    const service = app.get(WorkflowService);
    const relay = app.get(RelayRunner);
    const { runId: a } = await service.submit('relay', { input: 'go' });
    const { runId: b } = await service.submit('relay', { input: 'hold' });
    await Promise.all([relay.startedFor(a), relay.startedFor(b)]);
    const { runId: c } = await service.submit('relay', { input: 'hold' });

    // A's settlement will wait on this lock on its run row, holding A's slot free meanwhile.
    const lock = await rawConnection();
    try {
      await lock.query('START TRANSACTION');
      await lock.query(`SELECT \`id\` FROM \`${prefix}runs\` WHERE \`id\` = ? FOR UPDATE`, [a]);
      relay.go.resolve();
      // C gets the slot A's step gave back, though A's settlement has not committed.
      await relay.startedFor(c);
      await lock.query('COMMIT');
    } finally {
      await lock.end();
    }
    // A's successor is leased to this worker, but B and C hold both slots: it waits.
    await waitFor(async () => (await service.status(a))?.currentStep === 1, "A's settlement to commit");
    await holdsFor(() => !relay.laterSteps.has(a), 300, "A's successor waits for a slot");
    expect(await service.cancel(a)).toBe(true);
    expect(await service.waitForOutcome(a, { timeoutMs: 5_000 })).toMatchObject({ status: 'cancelled' });

    relay.release.resolve();
    for (const r of [b, c])
      expect(await service.waitForOutcome(r, { timeoutMs: 5_000 })).toMatchObject({ status: 'succeeded' });
    expect(relay.laterSteps.has(a)).toBe(false);
  });

  it('never runs more runners than concurrency while chains continue in place: 30 runs of 6 steps, concurrency 3', async () => {
    app = await startApp({
      prefix: prefixes.next(),
      providers: [Overlap, ChainOverlapRunner],
      worker: { concurrency: 3, pollIntervalMs: 50 },
    });
    const service = app.get(WorkflowService);
    const runs = await service.submitMany(
      'overlap-chain',
      Array.from({ length: 30 }, (_, i) => ({ input: i })),
    );
    const outcomes = await Promise.all(runs.map((r) => service.waitForOutcome(r.runId, { timeoutMs: 20_000 })));
    expect(outcomes.every((o) => o.status === 'succeeded')).toBe(true);
    const overlap = app.get(Overlap);
    expect(overlap.calls).toBe(30 * 6);
    expect(overlap.max).toBe(3);
  });
});
