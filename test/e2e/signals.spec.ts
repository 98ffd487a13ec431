/**
 * Durable waits for signals: a step parks its run until a signal of a name arrives (or
 * its timeout passes). The run holds no worker slot meanwhile; a signal sent before the
 * wait is kept and read by the first matching wait, oldest first, exactly once.
 */
import { Injectable } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import { DataSource } from 'typeorm';
import {
  ForeignEntityManagerError,
  InvalidRunIdError,
  InvalidRunSpecError,
  type ReceivedSignal,
  type Step,
  StepOutcome,
  StepRunner,
  WorkflowService,
} from 'nestjs-durable-workflow';
import { WorkflowStorage } from '../../lib/storage/workflow.storage.js';
import { startApp } from '../utils/create-test-app.js';
import { DB_URL, dropTables, rawConnection, uniquePrefix } from '../utils/db.js';
import { handoffPossible } from '../utils/handoff.js';
import { waitFor } from '../utils/wait.js';

type Plan = { waits: Array<{ name: string; timeoutMs?: number }> };

/** Waits for each signal of its plan in turn, then succeeds with everything it received. */
@Injectable()
@StepRunner('approval', { concurrency: 1 })
class ApprovalRunner {
  received = new Map<string, ReceivedSignal[]>();

  runStep(step: Step<Plan & { got?: number }>) {
    const got = step.payload.got ?? 0;
    if (step.received) this.received.set(step.runId, [...(this.received.get(step.runId) ?? []), step.received]);
    const next = step.payload.waits[got];
    if (!next) return StepOutcome.succeed({ received: this.received.get(step.runId) ?? [] });
    return StepOutcome.waitForSignal(next.name, { ...step.payload, got: got + 1 }, { timeoutMs: next.timeoutMs });
  }
}

/** Succeeds at once: shares the one slot of `approval`'s process to show waits hold none. */
@Injectable()
@StepRunner('quick', { concurrency: 1 })
class QuickRunner {
  runStep() {
    return StepOutcome.succeed('quick');
  }
}

describe('signals', () => {
  const prefix = uniquePrefix('signals');
  let app: TestingModule;
  /** Another process on the same tables, submit-only: its signals reach the worker through the database. */
  let web: TestingModule;
  let service: WorkflowService;
  let runner: ApprovalRunner;
  /** The app's clock runs this far ahead of the wall clock: delays and timeouts come due when it moves. */
  let offset = 0;

  beforeAll(async () => {
    app = await startApp({
      prefix,
      providers: [ApprovalRunner, QuickRunner],
      worker: { concurrency: 1, pollIntervalMs: 50, leaseMs: 5_000 },
      options: { clock: { now: () => Date.now() + offset } },
    });
    web = await startApp({ prefix, worker: false, options: { workflows: ['approval'] } });
    service = app.get(WorkflowService);
    runner = app.get(ApprovalRunner);
  });

  afterAll(async () => {
    await web?.close();
    await app?.close();
    await dropTables(prefix);
  });

  const waiting = (runId: string) =>
    waitFor(async () => {
      const s = await service.status(runId);
      return s?.state === 'waiting' ? s : undefined;
    }, `run ${runId} waiting`);

  async function signalRows(runId: string) {
    const conn = await rawConnection();
    try {
      const [rows] = await conn.query(
        `SELECT signal_id, name, consumed_at FROM \`${prefix}signals\` WHERE run_id = ? ORDER BY sent_at`,
        [runId],
      );
      return rows as Array<{ signal_id: string; name: string; consumed_at: number | null }>;
    } finally {
      await conn.end();
    }
  }

  it('a waiting run holds no slot; the signal makes its next step run with what was sent', async () => {
    const { runId } = await service.submit('approval', { input: { waits: [{ name: 'approved' }] } });
    const status = await waiting(runId);
    expect(status.waitingFor).toEqual({ signal: 'approved' });
    // With concurrency 1, another run still gets the slot while this one waits.
    const quick = await service.submit('quick', { input: null });
    expect(await service.waitForOutcome(quick.runId, { timeoutMs: 5_000 })).toMatchObject({ status: 'succeeded' });

    const before = Date.now();
    expect(await service.signal(runId, 'approved', { by: 'alice' }, { signalId: 'sig-1' })).toBe(true);
    const outcome = await service.waitForOutcome(runId, { timeoutMs: 5_000 });
    expect(outcome.status).toBe('succeeded');
    const [got] = runner.received.get(runId)!;
    expect(got).toMatchObject({ name: 'approved', timedOut: false, data: { by: 'alice' }, signalId: 'sig-1' });
    expect((got as { sentAt: Date }).sentAt.getTime()).toBeGreaterThanOrEqual(before - 1000);
  });

  it('signals sent before the run waits are kept and read oldest first, each exactly once', async () => {
    const { runId } = await service.submit('approval', {
      input: { waits: [{ name: 'step' }, { name: 'step' }, { name: 'step', timeoutMs: 300 }] },
      delayMs: 60_000, // not started yet: the signals land in its mailbox first
    });
    expect(await service.signal(runId, 'step', 1)).toBe(true);
    expect(await service.signal(runId, 'step', 2)).toBe(true);
    expect(await service.signal(runId, 'other', 'not this name')).toBe(true);
    expect((await signalRows(runId)).map((r) => [r.name, r.consumed_at])).toEqual([
      ['step', null],
      ['step', null],
      ['other', null],
    ]);
    offset += 61_000; // the delay is over
    const outcome = await service.waitForOutcome(runId, { timeoutMs: 10_000 });
    expect(outcome.status).toBe('succeeded');
    // Two waits took the two kept signals in order; the third found none left and timed out.
    expect(runner.received.get(runId)!.map((r) => (r.timedOut ? 'timeout' : r.data))).toEqual([1, 2, 'timeout']);
    expect((await signalRows(runId)).map((r) => [r.name, r.consumed_at !== null])).toEqual([
      ['step', true],
      ['step', true],
      ['other', false],
    ]);
  });

  it('a mailbox signal is read by the wait that comes after it, in the settling transaction', async () => {
    const { runId } = await service.submit('approval', { input: { waits: [{ name: 'first' }, { name: 'early' }] } });
    await waiting(runId);
    // Sent while the run waits for something else: kept for the later wait.
    expect(await service.signal(runId, 'early', 'kept')).toBe(true);
    expect(await service.signal(runId, 'first', 'go')).toBe(true);
    const outcome = await service.waitForOutcome(runId, { timeoutMs: 5_000 });
    expect(outcome.status).toBe('succeeded');
    expect(runner.received.get(runId)!.map((r) => (r.timedOut ? 'timeout' : r.data))).toEqual(['go', 'kept']);
    expect((await signalRows(runId)).every((r) => r.consumed_at !== null)).toBe(true);
  });

  it('a wait times out with received.timedOut, and waitingFor.until says when', async () => {
    const { runId } = await service.submit('approval', { input: { waits: [{ name: 'never', timeoutMs: 400 }] } });
    const status = await waiting(runId);
    expect(status.waitingFor?.signal).toBe('never');
    expect(status.waitingFor?.until).toBeInstanceOf(Date);
    const outcome = await service.waitForOutcome(runId, { timeoutMs: 5_000 });
    expect(outcome.status).toBe('succeeded');
    expect(runner.received.get(runId)).toEqual([{ name: 'never', timedOut: true }]);
  });

  it('a repeated signalId stores nothing more and still returns true', async () => {
    const { runId } = await service.submit('approval', {
      input: { waits: [{ name: 'pay' }, { name: 'pay', timeoutMs: 300 }] },
    });
    await waiting(runId);
    expect(await service.signal(runId, 'pay', 'once', { signalId: 'webhook-77' })).toBe(true);
    expect(await service.signal(runId, 'pay', 'twice', { signalId: 'webhook-77' })).toBe(true);
    const outcome = await service.waitForOutcome(runId, { timeoutMs: 5_000 });
    expect(outcome.status).toBe('succeeded');
    // The duplicate was not kept for the second wait: it timed out.
    expect(runner.received.get(runId)!.map((r) => (r.timedOut ? 'timeout' : r.data))).toEqual(['once', 'timeout']);
    expect(await signalRows(runId)).toHaveLength(1);
    // The run has ended; the webhook tries once more, late: still a yes, still nothing stored.
    expect(await service.signal(runId, 'pay', 'late', { signalId: 'webhook-77' })).toBe(true);
    expect(await service.signal(runId, 'pay', 'new', { signalId: 'webhook-78' })).toBe(false);
    expect(await signalRows(runId)).toHaveLength(1);
  });

  it('an unknown or finished run: false, nothing stored', async () => {
    expect(await service.signal('no-such-run', 'x', 1)).toBe(false);
    const { runId } = await service.submit('quick', { input: null });
    await service.waitForOutcome(runId, { timeoutMs: 5_000 });
    expect(await service.signal(runId, 'x', 1)).toBe(false);
    expect(await signalRows(runId)).toEqual([]);
    expect(await signalRows('no-such-run')).toEqual([]);
  });

  it('a signal from another process wakes the run within a poll', async () => {
    const { runId } = await service.submit('approval', { input: { waits: [{ name: 'remote' }] } });
    await waiting(runId);
    expect(await web.get(WorkflowService).signal(runId, 'remote', 'from web')).toBe(true);
    const outcome = await service.waitForOutcome(runId, { timeoutMs: 5_000 });
    expect(outcome.status).toBe('succeeded');
    expect(runner.received.get(runId)![0]).toMatchObject({ data: 'from web' });
  });

  it('cancelling a waiting run cancels it at once', async () => {
    const { runId } = await service.submit('approval', { input: { waits: [{ name: 'approved' }] } });
    await waiting(runId);
    expect(await service.cancel(runId)).toBe(true);
    expect(await service.status(runId)).toMatchObject({ state: 'cancelled' });
    expect((await service.status(runId))!.error).toBeUndefined();
    expect(await service.signal(runId, 'approved', 1)).toBe(false);
  });

  it('bad input gets a named error and stores nothing', async () => {
    await expect(service.signal('bad id!', 'x')).rejects.toBeInstanceOf(InvalidRunIdError);
    await expect(service.signal('some-run', 'bad name!')).rejects.toBeInstanceOf(InvalidRunSpecError);
    await expect(service.signal('some-run', 'x', 1, { signalId: 'bad id!' })).rejects.toBeInstanceOf(
      InvalidRunSpecError,
    );
    await expect(service.signal('some-run', 'x', { n: 10n })).rejects.toThrow(/BigInt/);
  });
});

describe('signals in the caller’s transaction', () => {
  const prefix = uniquePrefix('sigtx');
  let ds: DataSource;
  let other: DataSource;
  let app: TestingModule;
  let service: WorkflowService;

  beforeAll(async () => {
    ds = new DataSource({ type: 'mysql', url: DB_URL } as any);
    other = new DataSource({ type: 'mysql', url: DB_URL } as any);
    await ds.initialize();
    await other.initialize();
    app = await startApp({
      prefix,
      providers: [ApprovalRunner, QuickRunner],
      options: { connection: undefined, dataSource: ds },
    });
    service = app.get(WorkflowService);
  });

  afterAll(async () => {
    await app?.close();
    await ds.destroy();
    await other.destroy();
    await dropTables(prefix);
  });

  it('is stored if and only if the caller’s REPEATABLE READ transaction commits', async () => {
    const { runId } = await service.submit('approval', { input: { waits: [{ name: 'approved' }] } });
    await waitFor(async () => (await service.status(runId))?.state === 'waiting', 'the run to wait');
    await expect(
      ds.transaction('REPEATABLE READ', async (m) => {
        await service.signal(runId, 'approved', 'rolled back', { manager: m });
        throw new Error('business rule failed');
      }),
    ).rejects.toThrow('business rule failed');
    expect(await service.status(runId)).toMatchObject({ state: 'waiting' });

    await ds.transaction('REPEATABLE READ', (m) => service.signal(runId, 'approved', 'committed', { manager: m }));
    const outcome = await service.waitForOutcome(runId, { timeoutMs: 5_000 });
    expect(outcome.result).toEqual({ received: [expect.objectContaining({ data: 'committed' })] });
  });

  it('takes no gap lock: a plain signal to another run completes while a caller’s transaction that signalled stays open', async () => {
    const a = await service.submit('approval', { input: { waits: [{ name: 'go' }] } });
    const b = await service.submit('approval', { input: { waits: [{ name: 'go' }] } });
    await waitFor(async () => (await service.status(a.runId))?.state === 'waiting', 'run a to wait');
    await waitFor(async () => (await service.status(b.runId))?.state === 'waiting', 'run b to wait');
    let release!: () => void;
    const holding = new Promise<void>((r) => (release = r));
    let signalled!: () => void;
    const inside = new Promise<void>((r) => (signalled = r));
    const open = ds.transaction('REPEATABLE READ', async (m) => {
      await service.signal(a.runId, 'go', 'inside', { manager: m });
      signalled();
      await holding;
    });
    await inside;
    try {
      const plain = service.signal(b.runId, 'go', 'outside');
      await expect(
        Promise.race([
          plain,
          new Promise((_, reject) =>
            setTimeout(() => reject(new Error('waited on the open transaction')), 5_000).unref(),
          ),
        ]),
      ).resolves.toBe(true);
      expect(await service.waitForOutcome(b.runId, { timeoutMs: 5_000 })).toMatchObject({ status: 'succeeded' });
    } finally {
      release();
      await open;
    }
    expect(await service.waitForOutcome(a.runId, { timeoutMs: 5_000 })).toMatchObject({ status: 'succeeded' });
  });

  it('a manager of another DataSource is a ForeignEntityManagerError', async () => {
    await expect(other.transaction((m) => service.signal('any-run', 'x', 1, { manager: m }))).rejects.toBeInstanceOf(
      ForeignEntityManagerError,
    );
  });
});

/** Waits for `go`, then runs its next step until the test opens its gate. */
@Injectable()
@StepRunner('gated', { concurrency: 1 })
class GatedRunner {
  running = 0;
  most = 0;
  gates = new Map<string, () => void>();
  started = new Map<string, number>();
  claimsAtStart = new Map<string, number>();
  claims = () => 0;

  async runStep(step: Step<{ hold?: boolean }>) {
    if (step.stepNumber === 0) return StepOutcome.waitForSignal('go', step.payload);
    this.most = Math.max(this.most, ++this.running);
    this.started.set(step.runId, Date.now());
    this.claimsAtStart.set(step.runId, this.claims());
    if (step.payload.hold) await new Promise<void>((r) => this.gates.set(step.runId, r));
    this.running--;
    return StepOutcome.succeed(null);
  }
}

/** Waits for `go`, with a rate limit: each step's start is counted by a claim, so none is handed over. */
@Injectable()
@StepRunner('metered', { concurrency: 2, rateLimit: { limit: 1000, periodMs: 1000 } })
class MeteredRunner {
  runStep(step: Step) {
    if (step.stepNumber === 0) return StepOutcome.waitForSignal('go', null);
    return StepOutcome.succeed(null);
  }
}

/**
 * A signal sent in the process whose worker runs the waiting workflow leases the woken
 * step to that worker in the signal's own transaction when a slot is free and nothing
 * else waits for it: the step starts without a claim. Otherwise a claim takes it, as ever.
 */
describe('signals handed to the local worker', () => {
  const prefix = uniquePrefix('handoff');
  let app: TestingModule;
  let service: WorkflowService;
  let runner: GatedRunner;
  let claims = 0;

  beforeAll(async () => {
    // A poll of a minute: a step that starts at once after its signal was not found by polling.
    app = await startApp({
      prefix,
      providers: [GatedRunner, MeteredRunner],
      worker: { concurrency: 4, pollIntervalMs: 60_000, leaseMs: 5_000, shutdownTimeoutMs: 2_000 },
    });
    service = app.get(WorkflowService);
    runner = app.get(GatedRunner);
    const storage = app.get(WorkflowStorage);
    const claim = storage.claimBatch.bind(storage);
    storage.claimBatch = (...args: Parameters<typeof claim>) => (claims++, claim(...args));
    runner.claims = () => claims;
  });

  afterAll(async () => {
    for (const open of app.get(GatedRunner).gates.values()) open();
    await app?.close();
    await dropTables(prefix);
  });

  const waitingRun = async (input: { hold?: boolean }) => {
    const { runId } = await service.submit('gated', { input });
    await waitFor(async () => (await service.status(runId))?.state === 'waiting', `run ${runId} waiting`);
    return runId;
  };

  it('a free slot: the woken step starts without a claim, at once', async () => {
    const runId = await waitingRun({});
    await handoffPossible(app, 'gated');
    const before = claims;
    const sent = Date.now();
    expect(await service.signal(runId, 'go')).toBe(true);
    expect(await service.waitForOutcome(runId, { timeoutMs: 5_000 })).toMatchObject({ status: 'succeeded' });
    expect(runner.claimsAtStart.get(runId)).toBe(before);
    expect(runner.started.get(runId)! - sent).toBeLessThan(1_000);
    expect(await service.history(runId)).toMatchObject([
      { stepNumber: 0, attempt: 1, outcome: 'wait' },
      { stepNumber: 1, attempt: 1, outcome: 'succeed' },
    ]);
  });

  it('no slot free: the step waits for a claim, and the runner’s concurrency holds', async () => {
    const holder = await waitingRun({ hold: true });
    const next = await waitingRun({});
    expect(await service.signal(holder, 'go')).toBe(true);
    await waitFor(() => runner.gates.get(holder), 'the first step holding the one slot of gated');
    expect(await service.signal(next, 'go')).toBe(true);
    await new Promise((r) => setTimeout(r, 300));
    expect(runner.started.has(next)).toBe(false);
    expect(await service.status(next)).toMatchObject({ state: 'pending' });
    runner.gates.get(holder)!();
    expect(await service.waitForOutcome(next, { timeoutMs: 5_000 })).toMatchObject({ status: 'succeeded' });
    expect(runner.most).toBe(1);
  });

  it('a rate-limited workflow: the step goes through a claim, which counts its start', async () => {
    const { runId } = await service.submit('metered', { input: null });
    await waitFor(async () => (await service.status(runId))?.state === 'waiting', `run ${runId} waiting`);
    // The window's record of step starts: one per start a claim counted (the ring is far from full).
    const starts = async () => {
      const conn = await rawConnection();
      try {
        const [rows] = await conn.query(`SELECT COUNT(*) AS n FROM \`${prefix}flow_starts\` WHERE queue = 'metered'`);
        return Number((rows as Array<{ n: number }>)[0].n);
      } finally {
        await conn.end();
      }
    };
    const before = await starts();
    expect(await service.signal(runId, 'go')).toBe(true);
    expect(await service.waitForOutcome(runId, { timeoutMs: 5_000 })).toMatchObject({ status: 'succeeded' });
    expect(await starts()).toBe(before + 1);
  });
});
