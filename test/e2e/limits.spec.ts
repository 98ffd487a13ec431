/**
 * Every size and range limit, through the public API on real Nest apps: just under
 * works, just over is a named error with nothing written (submit, startup) or, for what
 * a runner returns, a dead letter naming the limit after one attempt, never a retry loop.
 * The max_allowed_packet tests run on a private MariaDB started with a 1 MiB packet.
 */
import { Injectable, Logger } from '@nestjs/common';
import { jest } from '@jest/globals';
import { Test, type TestingModule } from '@nestjs/testing';
import {
  InvalidRunSpecError,
  OnTerminal,
  PacketTooLargeError,
  PayloadTooLargeError,
  type RunOutcome,
  type Step,
  StepOutcome,
  StepRunner,
  WorkflowConfigError,
  WorkflowModule,
  WorkflowService,
} from 'nestjs-durable-workflow';
import { startApp } from '../utils/create-test-app.js';
import { DB_URL, dropTables, uniquePrefix } from '../utils/db.js';
import { PrivateMariaDb } from '../utils/private-db.js';
import { snapshotRows } from '../utils/tables.js';
import { deferred, waitFor } from '../utils/wait.js';

const MAX_PRIORITY = 2_000_000_000;
const MAX_ATTEMPTS = 1_000_000;
const MAX_DELAY_MS = 10 * 365 * 24 * 3600 * 1000;
const MAX_REASON_BYTES = 64 * 1024;

@Injectable()
@StepRunner('sink')
class SinkRunner {
  runStep() {
    return StepOutcome.succeed(null);
  }
}

type Give =
  { give: 'delay'; ms: unknown } | { give: 'fail' | 'cancel'; bytes: number } | { give: 'throw'; bytes: number };

/** Returns the outcome its input asks for; step 1 of a delayed continue succeeds. */
@Injectable()
@StepRunner('outcome')
class OutcomeRunner {
  calls = new Map<string, number>();

  runStep(step: Step<Give>): StepOutcome {
    this.calls.set(step.runId, (this.calls.get(step.runId) ?? 0) + 1);
    if (step.stepNumber === 1) return StepOutcome.succeed('late');
    const p = step.payload;
    switch (p.give) {
      case 'delay':
        // NaN cannot travel as JSON input, so the input names it.
        return StepOutcome.continueAfter(p, (p.ms === 'NaN' ? Number.NaN : p.ms) as number);
      case 'fail':
        return StepOutcome.fail('é'.repeat(p.bytes / 2));
      case 'cancel':
        return StepOutcome.cancel('x'.repeat(p.bytes));
      case 'throw':
        throw new Error('boom '.repeat(p.bytes / 5));
    }
  }
}

describe('limits: ranges and text sizes', () => {
  const prefix = uniquePrefix('limits');
  let app: TestingModule;
  let workflows: WorkflowService;

  beforeAll(async () => {
    app = await startApp({ prefix, providers: [SinkRunner, OutcomeRunner] });
    workflows = app.get(WorkflowService);
  });
  afterAll(async () => {
    await app?.close();
    await dropTables(prefix);
  });

  it.each([
    [
      'priority',
      { priority: MAX_PRIORITY },
      { priority: MAX_PRIORITY + 1 },
      /priority must be an integer from -2000000000 to 2000000000, got 2000000001/,
    ],
    ['priority (negative)', { priority: -MAX_PRIORITY }, { priority: -MAX_PRIORITY - 1 }, /priority .*got -2000000001/],
    [
      'maxAttemptsPerStep',
      { maxAttemptsPerStep: MAX_ATTEMPTS },
      { maxAttemptsPerStep: MAX_ATTEMPTS + 1 },
      /maxAttemptsPerStep must be an integer from 1 to 1000000, got 1000001/,
    ],
    ['maxAttemptsPerStep (zero)', { maxAttemptsPerStep: 1 }, { maxAttemptsPerStep: 0 }, /maxAttemptsPerStep .*got 0/],
    [
      'delayMs',
      { delayMs: MAX_DELAY_MS },
      { delayMs: MAX_DELAY_MS + 1 },
      new RegExp(`delayMs must be an integer from 0 to ${MAX_DELAY_MS}, got ${MAX_DELAY_MS + 1}`),
    ],
    ['delayMs (1e19)', { delayMs: 0 }, { delayMs: 1e19 }, /delayMs .*got 10000000000000000000\./],
    ['priority (NaN)', { priority: 0 }, { priority: Number.NaN }, /priority .*got NaN/],
  ])(
    '%s: just under is accepted, just over throws InvalidRunSpecError naming it and writes nothing',
    async (_n, under, over, message) => {
      const before = await snapshotRows(prefix);
      await expect(workflows.submit('sink', { input: 1, ...over })).rejects.toThrow(InvalidRunSpecError);
      await expect(workflows.submit('sink', { input: 1, ...over })).rejects.toThrow(message);
      expect(await snapshotRows(prefix)).toEqual(before);

      const { runId, newlySubmitted } = await workflows.submit('sink', { input: 1, ...under });
      expect(newlySubmitted).toBe(true);
      if ('delayMs' in under && under.delayMs) {
        const s = await workflows.status(runId);
        expect(s?.runAt?.getTime()).toBeGreaterThan(Date.now() + MAX_DELAY_MS - 60_000);
        await workflows.cancel(runId);
      } else {
        expect(await workflows.waitForOutcome(runId, { timeoutMs: 10_000 })).toMatchObject({ status: 'succeeded' });
      }
    },
  );

  async function deadOnce(input: Give, lastError: RegExp) {
    const { runId } = await workflows.submit('outcome', { input });
    expect(await workflows.waitForOutcome(runId, { timeoutMs: 10_000 })).toMatchObject({ status: 'failed' });
    const dead = (await workflows.deadSteps({ workflow: 'outcome', limit: 1000 })).filter((d) => d.runId === runId);
    expect(dead).toHaveLength(1);
    expect(dead[0].attempts).toBe(1);
    expect(dead[0].lastError).toMatch(lastError);
    // Permanent: the runner ran once, no retry (maxAttempts is 3).
    expect(app.get(OutcomeRunner).calls.get(runId)).toBe(1);
    return dead[0];
  }

  it.each([
    ['1e19', 1e19, /got number 10000000000000000000$/],
    ['just over the max delay', MAX_DELAY_MS + 1, new RegExp(String(MAX_DELAY_MS + 1))],
    ['negative', -1, /got number -1/],
    ['a string', '10', /got string 10/],
  ])('continueAfter with a delay %s fails the step permanently, naming LIMITS.maxDelayMs', async (_n, ms, got) => {
    const dead = await deadOnce({ give: 'delay', ms }, /delayMs from 0 to 315360000000 ms \(LIMITS\.maxDelayMs/);
    expect(dead.lastError).toMatch(got);
  });

  it('continueAfter with NaN fails the step permanently, naming LIMITS.maxDelayMs', async () => {
    await deadOnce({ give: 'delay', ms: 'NaN' }, /LIMITS\.maxDelayMs.*got number NaN/);
  });

  it('continueAfter at the max delay schedules the step; a fractional delay is rounded', async () => {
    const far = await workflows.submit('outcome', { input: { give: 'delay', ms: MAX_DELAY_MS } });
    const pending = await waitFor(async () => {
      const s = await workflows.status(far.runId);
      return s?.currentStep === 1 ? s : undefined;
    }, 'step 1 to be scheduled 10 years out');
    expect(pending.runAt!.getTime()).toBeGreaterThan(Date.now() + MAX_DELAY_MS - 60_000);
    await workflows.cancel(far.runId);

    const frac = await workflows.submit('outcome', { input: { give: 'delay', ms: 10.6 } });
    expect(await workflows.waitForOutcome(frac.runId, { timeoutMs: 10_000 })).toMatchObject({
      status: 'succeeded',
      result: 'late',
    });
  });

  it('fail(reason) of exactly 64 KiB (UTF-8) fails the run with it; one byte more is a dead letter naming the limit', async () => {
    const ok = await workflows.submit('outcome', { input: { give: 'fail', bytes: MAX_REASON_BYTES } });
    const outcome = await workflows.waitForOutcome(ok.runId, { timeoutMs: 10_000 });
    expect(outcome).toMatchObject({ status: 'failed', error: 'é'.repeat(MAX_REASON_BYTES / 2) });
    expect(
      (await workflows.deadSteps({ workflow: 'outcome', limit: 1000 })).filter((d) => d.runId === ok.runId),
    ).toEqual([]);

    const dead = await deadOnce(
      { give: 'fail', bytes: MAX_REASON_BYTES + 2 },
      /fail\(reason\) got a reason of 65538 bytes, over the 65536-byte limit \(LIMITS\.maxReasonBytes\); it began: "éééé/,
    );
    expect(dead.lastError.length).toBeLessThan(2_000);
  });

  it('cancel(reason) over 64 KiB is a dead letter naming the limit; at the limit the run is cancelled with it', async () => {
    const ok = await workflows.submit('outcome', { input: { give: 'cancel', bytes: MAX_REASON_BYTES } });
    expect(await workflows.waitForOutcome(ok.runId, { timeoutMs: 10_000 })).toMatchObject({
      status: 'cancelled',
      error: 'x'.repeat(MAX_REASON_BYTES),
    });
    await deadOnce(
      { give: 'cancel', bytes: MAX_REASON_BYTES + 1 },
      /cancel\(reason\) got a reason of 65537 bytes, over the 65536-byte limit.*"xxxx/,
    );
  });

  it("a thrown error's stored text is cut to 64 KiB with a marker; the step is retried as usual", async () => {
    const { runId } = await workflows.submit('outcome', {
      input: { give: 'throw', bytes: 1024 * 1024 },
      maxAttemptsPerStep: 2,
    });
    expect(await workflows.waitForOutcome(runId, { timeoutMs: 10_000 })).toMatchObject({ status: 'failed' });
    const [dead] = (await workflows.deadSteps({ workflow: 'outcome', limit: 1000 })).filter((d) => d.runId === runId);
    expect(dead.attempts).toBe(2);
    expect(Buffer.byteLength(dead.lastError)).toBeLessThanOrEqual(MAX_REASON_BYTES);
    expect(dead.lastError).toMatch(/^Error: boom boom/);
    expect(dead.lastError).toMatch(/\[truncated: \d+ bytes, over the 65536-byte limit\]$/);
    const status = await workflows.status(runId);
    expect(Buffer.byteLength(status!.error!)).toBeLessThanOrEqual(MAX_REASON_BYTES);
  });
});

describe('limits: @StepRunner options out of range fail at startup', () => {
  const prefix = uniquePrefix('limitsopt');
  afterAll(() => dropTables(prefix));

  function runnerWith(options: Record<string, unknown>) {
    @Injectable()
    @StepRunner('opts', options as any)
    class OptsRunner {
      runStep() {
        return StepOutcome.succeed(null);
      }
    }
    return OptsRunner;
  }

  it.each([
    [
      'priority',
      { priority: MAX_PRIORITY + 1 },
      { priority: MAX_PRIORITY },
      /priority must be an integer from -2000000000 to 2000000000/,
    ],
    [
      'maxAttempts',
      { maxAttempts: MAX_ATTEMPTS + 1 },
      { maxAttempts: MAX_ATTEMPTS },
      /maxAttempts must be an integer from 1 to 1000000/,
    ],
    ['concurrency', { concurrency: 10_001 }, { concurrency: 10_000 }, /concurrency must be an integer from 1 to 10000/],
    [
      'timeoutMs',
      { timeoutMs: 2 ** 31 },
      { timeoutMs: 2 ** 31 - 1 },
      /timeoutMs must be an integer from 1 to 2147483647/,
    ],
  ])('@StepRunner %s: over throws WorkflowConfigError, at the bound starts', async (_n, over, under, message) => {
    const bad = await Test.createTestingModule({
      imports: [WorkflowModule.forRoot({ connection: { url: DB_URL }, tablePrefix: prefix, worker: false })],
      providers: [runnerWith(over)],
    }).compile();
    const err = await bad.init().catch((e) => e);
    await bad.close().catch(() => undefined);
    expect(err).toBeInstanceOf(WorkflowConfigError);
    expect(String(err.message)).toMatch(message);

    const good = await Test.createTestingModule({
      imports: [WorkflowModule.forRoot({ connection: { url: DB_URL }, tablePrefix: prefix, worker: false })],
      providers: [runnerWith(under)],
    }).compile();
    await good.init();
    await good.close();
  });
});

// ---------------------------------------------------------------- max_allowed_packet = 1 MiB

/** Succeeds with a 600 KiB result: written 3 times (run + 2 deliveries), it cannot fit a 1 MiB packet. */
@Injectable()
@StepRunner('big')
class BigResultRunner {
  calls = 0;
  runStep(step: Step<{ kib: number }>) {
    this.calls++;
    return StepOutcome.succeed('r'.repeat(step.payload.kib * 1024));
  }
}

@Injectable()
class BigAudit {
  seen: RunOutcome[] = [];
  @OnTerminal('big')
  first(o: RunOutcome) {
    this.seen.push(o);
  }
  @OnTerminal('big')
  second(o: RunOutcome) {
    this.seen.push(o);
  }
}

/** Step 0 waits until `arrived` reaches `expected`, so every run continues with 200 KiB in the same moment. */
@Injectable()
@StepRunner('fat', { concurrency: 32 })
class FatRunner {
  expected = 0;
  arrived = 0;
  gate = deferred();
  async runStep(step: Step<{ n: number } | string>) {
    if (step.stepNumber === 1) return StepOutcome.succeed((step.payload as string).length);
    if (++this.arrived >= this.expected) this.gate.resolve();
    await this.gate.promise;
    return StepOutcome.continue('p'.repeat(200 * 1024));
  }
}

describe('limits: max_allowed_packet (private MariaDB, --max-allowed-packet=1M)', () => {
  const prefix = uniquePrefix('limitspkt');
  let db: PrivateMariaDb;
  let app: TestingModule;
  let workflows: WorkflowService;

  beforeAll(async () => {
    db = await PrivateMariaDb.create(0, { args: ['--max-allowed-packet=1M'] });
    app = await startApp({
      prefix,
      providers: [SinkRunner, BigResultRunner, BigAudit, FatRunner],
      options: { connection: { url: db.url } },
      worker: { concurrency: 32, pollIntervalMs: 50, leaseMs: 5_000, shutdownTimeoutMs: 2_000 },
    });
    workflows = app.get(WorkflowService);
  }, 120_000);
  afterAll(async () => {
    await app?.close();
    await db?.destroy();
  });

  it('a 600 KiB result with two @OnTerminal handlers fails the step permanently, naming max_allowed_packet', async () => {
    const { runId } = await workflows.submit('big', { input: { kib: 600 } });
    const outcome = await workflows.waitForOutcome(runId, { timeoutMs: 20_000 });
    expect(outcome.status).toBe('failed');
    expect(outcome.error).toMatch(
      /written 3 times \(the run and 2 @OnTerminal deliveries\).*max_allowed_packet \(1048576 bytes/,
    );
    const dead = (await workflows.deadSteps({ workflow: 'big' })).filter((d) => d.runId === runId);
    expect(dead).toHaveLength(1);
    expect(dead[0].attempts).toBe(1);
    expect(dead[0].lastError).toMatch(/about \d+ bytes after escaping, over the server's max_allowed_packet/);
    expect(app.get(BigResultRunner).calls).toBe(1);
    // The handlers still hear of the (failed) ending.
    await waitFor(() => app.get(BigAudit).seen.filter((o) => o.runId === runId).length === 2, 'both deliveries');
  });

  it('a 200 KiB result with the same two handlers fits and succeeds', async () => {
    const { runId } = await workflows.submit('big', { input: { kib: 200 } });
    const outcome = await workflows.waitForOutcome(runId, { timeoutMs: 20_000 });
    expect(outcome.status).toBe('succeeded');
    expect((outcome.result as string).length).toBe(200 * 1024);
  });

  it('20 runs continuing with 200 KiB payloads at the same moment all succeed (the batcher splits them)', async () => {
    const fat = app.get(FatRunner);
    fat.expected = 20;
    // Without the byte cap the batch still gets through, slowly: the server drops the
    // connection, every settlement retries and lands in smaller batches. So watch for that.
    const warned: string[] = [];
    const warn = jest.spyOn(Logger.prototype, 'warn').mockImplementation(function (this: Logger, m: unknown) {
      warned.push(String(m));
    });
    const errored = jest.spyOn(Logger.prototype, 'error');
    const runs = await Promise.all(Array.from({ length: 20 }, (_, n) => workflows.submit('fat', { input: { n } })));
    const outcomes = await Promise.all(runs.map((r) => workflows.waitForOutcome(r.runId, { timeoutMs: 30_000 })));
    expect(outcomes.map((o) => o.status)).toEqual(Array(20).fill('succeeded'));
    expect(outcomes.map((o) => o.result)).toEqual(Array(20).fill(200 * 1024));
    expect(await workflows.deadSteps({ workflow: 'fat' })).toEqual([]);
    warn.mockRestore();
    expect(warned.filter((m) => /settl/.test(m))).toEqual([]);
    expect(errored).not.toHaveBeenCalled();
    errored.mockRestore();
  });

  it('a submit whose input cannot fit the packet (quotes escape to two bytes) is a PayloadTooLargeError naming max_allowed_packet; under it is stored', async () => {
    const conn = await db.adminConnection();
    const count = async () => {
      const [rows] = await conn.query(
        `SELECT (SELECT COUNT(*) FROM test.\`${prefix}runs\`) + (SELECT COUNT(*) FROM test.\`${prefix}jobs\`) AS n`,
      );
      return Number((rows as Array<{ n: number }>)[0].n);
    };
    try {
      const before = await count();
      // 520 KiB of quotes: under maxPayloadBytes (1 MiB), over the packet once escaped.
      const over = "'".repeat(520 * 1024);
      const err = await workflows.submit('sink', { input: over }).catch((e) => e);
      expect(err).toBeInstanceOf(PacketTooLargeError);
      expect(err).toBeInstanceOf(PayloadTooLargeError);
      expect(err.message).toMatch(/max_allowed_packet/);
      expect(await count()).toBe(before);

      const under = "'".repeat(400 * 1024);
      const { runId } = await workflows.submit('sink', { input: under });
      expect(await workflows.waitForOutcome(runId, { timeoutMs: 20_000 })).toMatchObject({ status: 'succeeded' });
      // Three such inputs fit one by one but not in one statement: submitMany splits the insert.
      const many = await workflows.submitMany(
        'sink',
        [1, 2, 3].map(() => ({ input: under })),
      );
      for (const m of many)
        expect(await workflows.waitForOutcome(m.runId, { timeoutMs: 20_000 })).toMatchObject({ status: 'succeeded' });
    } finally {
      await conn.end();
    }
  });
});
