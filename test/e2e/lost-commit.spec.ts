/**
 * A connection that drops while COMMIT is in flight: the client cannot know whether the
 * transaction committed. A proxy of the test's own cuts the connection right after
 * forwarding a COMMIT (the server applies it, the reply never arrives) or right before
 * (nothing applied). Either way every run ends exactly once, nothing is stranded, and
 * every answer is true.
 */
import { Injectable } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import { type Step, StepError, StepOutcome, StepRunner, WorkflowService } from 'nestjs-durable-workflow';
import { handoffPossible } from '../utils/handoff.js';
import { startApp } from '../utils/create-test-app.js';
import { CuttingProxy, type CutWhen } from '../utils/cutting-proxy.js';
import { dropTables, uniquePrefix } from '../utils/db.js';
import { waitFor } from '../utils/wait.js';

/** Three steps, each continuing at once (in place), counting every delivery. */
@Injectable()
@StepRunner('chain')
class ChainRunner {
  calls = new Map<string, number>();
  broken = new Set<string>();

  runStep(step: Step<{ fail?: boolean }>) {
    const key = `${step.runId}/${step.stepNumber}`;
    this.calls.set(key, (this.calls.get(key) ?? 0) + 1);
    if (step.payload.fail && !this.broken.has(step.runId)) {
      this.broken.add(step.runId);
      throw StepError.permanent('bug');
    }
    return step.stepNumber < 2 ? StepOutcome.continue(step.payload) : StepOutcome.succeed({ steps: 3 });
  }
}

/** Waits for the signal `go`, then ends with its data. */
@Injectable()
@StepRunner('gate')
class GateRunner {
  calls = new Map<string, number>();

  runStep(step: Step) {
    const key = `${step.runId}/${step.stepNumber}`;
    this.calls.set(key, (this.calls.get(key) ?? 0) + 1);
    if (step.stepNumber === 0) return StepOutcome.waitForSignal('go', null);
    return StepOutcome.succeed(step.received);
  }
}

const isCommit = (sql: string) => /\bCOMMIT\s*$/.test(sql.trim());

describe.each<CutWhen>(['after', 'before'])('a connection cut %s COMMIT', (when) => {
  const prefix = uniquePrefix(`lost${when}`);
  /** One proxy per app, so a rule sees only the transactions of the app it is meant for. */
  let proxy: CuttingProxy;
  let webProxy: CuttingProxy;
  /** Works through `proxy`: its claims and settlements are the ones cut. */
  let worker: TestingModule;
  /** Submits and controls through `webProxy`, runs nothing. */
  let web: TestingModule;
  let service: WorkflowService;
  let runner: ChainRunner;

  beforeAll(async () => {
    proxy = await CuttingProxy.start({ target: { host: '127.0.0.1', port: 3306 } });
    webProxy = await CuttingProxy.start({ target: { host: '127.0.0.1', port: 3306 } });
    const through = { connection: { url: proxy.url('test') } };
    worker = await startApp({
      prefix,
      providers: [ChainRunner, GateRunner],
      options: through,
      worker: { pollIntervalMs: 50, leaseMs: 1_000, shutdownTimeoutMs: 2_000 },
    });
    web = await startApp({
      prefix,
      worker: false,
      options: { connection: { url: webProxy.url('test') }, workflows: ['chain', 'gate'] },
    });
    service = web.get(WorkflowService);
    runner = worker.get(ChainRunner);
  });

  afterAll(async () => {
    await web?.close();
    await worker?.close();
    await proxy?.close();
    await webProxy?.close();
    await dropTables(prefix);
  });

  /** Each step of the run ran once and the run succeeded, with no dead letter. */
  async function endsOnce(runId: string) {
    const outcome = await service.waitForOutcome(runId, { timeoutMs: 20_000 });
    expect(outcome).toMatchObject({ status: 'succeeded', result: { steps: 3 }, ending: 1 });
    expect([0, 1, 2].map((s) => runner.calls.get(`${runId}/${s}`))).toEqual([1, 1, 1]);
    expect((await service.deadSteps()).filter((d) => d.runId === runId)).toEqual([]);
  }

  it('a claim: the leased step runs once, with one attempt allowed', async () => {
    const cut = proxy.cutOnce({ when, match: (sql) => isCommit(sql) && sql.includes('`attempts` = `attempts` + 1') });
    const { runId } = await service.submit('chain', { input: {}, maxAttemptsPerStep: 1 });
    await cut;
    await endsOnce(runId);
  });

  it('a settlement whose successor runs in place: the successor is not stranded', async () => {
    const cut = proxy.cutOnce({
      when,
      match: (sql) => isCommit(sql) && /UPDATE \S*jobs\S* FORCE INDEX \(PRIMARY\) SET `step_number`/.test(sql),
    });
    const { runId } = await service.submit('chain', { input: {}, maxAttemptsPerStep: 1 });
    await cut;
    await endsOnce(runId);
  });

  it('a submit: newlySubmitted is true and the run exists once', async () => {
    const cut = webProxy.cutOnce({ when, match: (sql) => isCommit(sql) && /INSERT INTO \S*jobs/.test(sql) });
    const submitted = await service.submit('chain', { runId: `submit-${when}`, input: {} });
    await cut;
    expect(submitted).toEqual({ runId: `submit-${when}`, newlySubmitted: true });
    await endsOnce(`submit-${when}`);
  });

  it('a cancel: the answer is true and the run ends cancelled once', async () => {
    const { runId } = await service.submit('chain', { input: {}, delayMs: 60_000 });
    const cut = webProxy.cutOnce({ when, match: (sql) => sql.trim() === 'COMMIT' });
    expect(await service.cancel(runId)).toBe(true);
    await cut;
    expect(await service.waitForOutcome(runId, { timeoutMs: 5_000 })).toMatchObject({ status: 'cancelled', ending: 1 });
  });

  it('a signal to a waiting run: the answer is true, it is stored once and read once', async () => {
    const { runId } = await service.submit('gate', { input: null });
    await waitFor(async () => (await service.status(runId))?.state === 'waiting', 'the run waiting for its signal');
    // The signal's COMMIT, alone or riding with its writes.
    const cut = webProxy.cutOnce({
      when,
      match: (sql) => sql.trim() === 'COMMIT' || (isCommit(sql) && /INSERT INTO \S*signals/.test(sql)),
    });
    expect(await service.signal(runId, 'go', 'once', { signalId: `go-${when}` })).toBe(true);
    await cut;
    expect(await service.waitForOutcome(runId, { timeoutMs: 10_000 })).toMatchObject({
      status: 'succeeded',
      result: { name: 'go', timedOut: false, data: 'once', signalId: `go-${when}` },
    });
  });

  it('a signal in the worker’s process, its step leased to that worker in the signal’s transaction: it runs once, with one attempt allowed', async () => {
    const local = worker.get(WorkflowService);
    // The hand-off needs a free slot and no claim in flight; an idle poll (every 50 ms here)
    // can still start between the check and the signal. Such a signal leaves the step to a
    // claim and its transaction is not the one meant: the run must succeed all the same, and
    // the test tries again with a new run until a hand-off's COMMIT is the one cut.
    for (let tries = 1; ; tries++) {
      const { runId } = await local.submit('gate', { input: null, maxAttemptsPerStep: 1 });
      await waitFor(async () => (await local.status(runId))?.state === 'waiting', 'the run waiting for its signal');
      await handoffPossible(worker, 'gate');
      const cut = proxy.cutOnce({ when, match: (sql) => isCommit(sql) && /SET `state` = 2, .*`received`/s.test(sql) });
      expect(await local.signal(runId, 'go', 'handed', { signalId: `hand-${when}-${tries}` })).toBe(true);
      // The signal's answer comes after its COMMIT (and any read-back of it): the rule has fired by now or never will.
      if (!cut.fired) cut.disarm();
      expect(await local.waitForOutcome(runId, { timeoutMs: 10_000 })).toMatchObject({
        status: 'succeeded',
        result: { name: 'go', data: 'handed', signalId: `hand-${when}-${tries}` },
      });
      expect(worker.get(GateRunner).calls.get(`${runId}/1`)).toBe(1);
      expect((await local.deadSteps()).filter((d) => d.runId === runId)).toEqual([]);
      if (cut.fired) break;
      expect(tries).toBeLessThan(10);
    }
  });

  it('a retryDead: the answer is true and the run resumes once', async () => {
    const { runId } = await service.submit('chain', { input: { fail: true } });
    expect(await service.waitForOutcome(runId, { timeoutMs: 10_000 })).toMatchObject({ status: 'failed' });
    const [dead] = (await service.deadSteps()).filter((d) => d.runId === runId);
    const cut = webProxy.cutOnce({ when, match: (sql) => sql.trim() === 'COMMIT' });
    expect(await service.retryDead(dead.jobId)).toBe(true);
    await cut;
    expect(await service.waitForOutcome(runId, { timeoutMs: 10_000 })).toMatchObject({
      status: 'succeeded',
      ending: 2,
    });
    expect(runner.calls.get(`${runId}/0`)).toBe(2);
    expect(runner.calls.get(`${runId}/2`)).toBe(1);
  });
});
