import { Injectable } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import { type Step, StepOutcome, StepRunner, WorkflowService } from 'nestjs-durable-workflow';
import { startApp } from '../utils/create-test-app.js';
import { Prefixes, rawConnection } from '../utils/db.js';
import { waitFor } from '../utils/wait.js';

/**
 * A queue with more ready work than free slots is claimed past them while its runners
 * are quick (a drain of single-step runs claims while the endings commit): the extra jobs
 * wait in the process for a slot. Runners still never outnumber `concurrency`, slow
 * steps are left in the queue for other processes, and a shutdown hands the extra jobs
 * back unrun.
 */

/** Runner calls in this Jest worker, both apps of a test together. */
const calls = new Map<string, number>();
let active = 0;
let maxActive = 0;

async function work(step: Step<number>, ms: number): Promise<void> {
  calls.set(step.runId, (calls.get(step.runId) ?? 0) + 1);
  maxActive = Math.max(maxActive, ++active);
  try {
    await new Promise((r) => setTimeout(r, ms));
  } finally {
    active--;
  }
}

/** About a millisecond per step, one attempt allowed: a delivery that spent one unrun would fail its run. */
@Injectable()
@StepRunner('quick', { maxAttempts: 1 })
class QuickRunner {
  async runStep(step: Step<number>) {
    await work(step, 0);
    return StepOutcome.succeed(step.payload);
  }
}

@Injectable()
@StepRunner('slow')
class SlowRunner {
  async runStep(step: Step<number>) {
    await work(step, 150);
    return StepOutcome.succeed(step.payload);
  }
}

const prefixes = new Prefixes('ahead');
afterAll(() => prefixes.dropAll());

describe('claims past the free slots', () => {
  let apps: TestingModule[] = [];
  beforeEach(() => {
    calls.clear();
    active = 0;
    maxActive = 0;
  });
  afterEach(async () => {
    for (const app of apps) await app.close();
    apps = [];
  });

  async function app(prefix: string, concurrency: number): Promise<TestingModule> {
    const started = await startApp({
      prefix,
      providers: [QuickRunner, SlowRunner],
      worker: { concurrency, pollIntervalMs: 50, leaseMs: 2_000, shutdownTimeoutMs: 2_000 },
    });
    apps.push(started);
    return started;
  }

  /** Waits until all `n` runs of `workflow` have ended; how many ended in each state. */
  async function ended(service: WorkflowService, workflow: string, n: number): Promise<Record<string, number>> {
    return waitFor(
      async () => {
        const states = (await service.countRuns()).find((c) => c.workflow === workflow)?.states;
        const over = states ? states.succeeded + states.failed + states.cancelled : 0;
        return over === n ? states : undefined;
      },
      `${n} runs of ${workflow} to end`,
      30_000,
    );
  }

  it('a backlog of quick single-step runs never has more runners than concurrency, and runs each once', async () => {
    const service = (await app(prefixes.next(), 3)).get(WorkflowService);
    await service.submitMany(
      'quick',
      Array.from({ length: 600 }, (_, i) => ({ input: i })),
    );
    expect(await ended(service, 'quick', 600)).toMatchObject({ succeeded: 600 });
    expect(calls.size).toBe(600);
    expect([...calls.values()].filter((n) => n !== 1)).toEqual([]);
    expect(maxActive).toBe(3);
  });

  it('slow steps are not claimed ahead: no job waits leased in a process without running, and both processes run steps', async () => {
    const prefix = prefixes.next();
    const service = (await app(prefix, 2)).get(WorkflowService);
    await app(prefix, 2);
    const runs = await service.submitMany(
      'slow',
      Array.from({ length: 24 }, (_, i) => ({ input: i })),
    );
    const db = await rawConnection();
    const holders = new Set<string>();
    // Leased and not begun, by run: when first seen so. A claimed job begins within a
    // moment; one seen so again 50 ms later waits in its process for a slot.
    const unbegun = new Map<string, number>();
    const waited: string[] = [];
    try {
      await waitFor(
        async () => {
          const [rows] = await db.query(
            `SELECT \`run_id\` AS runId, SUBSTRING_INDEX(\`lease_token\`, '.', 1) AS holder FROM \`${prefix}jobs\`
              WHERE \`state\` = 2`,
          );
          const now = Date.now();
          for (const r of rows as Array<{ runId: string; holder: string }>) {
            holders.add(r.holder);
            if (calls.has(r.runId)) continue;
            const since = unbegun.get(r.runId) ?? now;
            unbegun.set(r.runId, since);
            if (now - since >= 50 && !waited.includes(r.runId)) waited.push(r.runId);
          }
          const [[left]] = (await db.query(`SELECT COUNT(*) AS n FROM \`${prefix}jobs\``)) as unknown as [
            Array<{ n: number }>,
          ];
          return Number(left.n) === 0;
        },
        'the queue to drain',
        30_000,
        5,
      );
    } finally {
      await db.end();
    }
    const outcomes = await Promise.all(runs.map((r) => service.waitForOutcome(r.runId, { timeoutMs: 10_000 })));
    expect(outcomes.filter((o) => o.status !== 'succeeded')).toEqual([]);
    expect(waited).toEqual([]);
    expect(holders.size).toBe(2);
  });

  it('an app closed mid-drain hands back the jobs it claimed ahead: every run succeeds on one attempt, each runs once', async () => {
    const prefix = prefixes.next();
    const first = await app(prefix, 4);
    await first.get(WorkflowService).submitMany(
      'quick',
      Array.from({ length: 1_000 }, (_, i) => ({ input: i })),
    );
    await waitFor(() => calls.size >= 150, 'the first app to be draining');
    await first.close();
    apps = apps.filter((a) => a !== first);
    const second = (await app(prefix, 4)).get(WorkflowService);
    // A job left leased would have spent its only attempt at lease expiry (2 s) and failed its run.
    expect(await ended(second, 'quick', 1_000)).toMatchObject({ succeeded: 1_000 });
    expect(calls.size).toBe(1_000);
    expect([...calls.values()].filter((n) => n !== 1)).toEqual([]);
  });
});
