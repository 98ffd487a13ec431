/**
 * Traces and metrics through @opentelemetry/api, read from the SDK's in-memory span
 * exporter and a metric reader. The SDK is registered after the module was imported
 * (as an app's tracing.ts often is), and registered again for the last test.
 */
import { Injectable } from '@nestjs/common';
import { createHash } from 'node:crypto';
import type { TestingModule } from '@nestjs/testing';
import { context, metrics, type Span, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { DataPointType, MeterProvider, MetricReader, type ResourceMetrics } from '@opentelemetry/sdk-metrics';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  type ReadableSpan,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import {
  OnTerminal,
  type RunOutcome,
  type Step,
  StepError,
  StepOutcome,
  StepRunner,
  WorkflowService,
} from 'nestjs-durable-workflow';
import { ManualClock } from 'nestjs-durable-workflow/testing';
import { startApp } from '../utils/create-test-app.js';
import { Prefixes, rawConnection } from '../utils/db.js';
import { waitFor } from '../utils/wait.js';

/** Collects on demand. */
class TestReader extends MetricReader {
  protected async onForceFlush(): Promise<void> {}
  protected async onShutdown(): Promise<void> {}
}

@Injectable()
@StepRunner('traced')
class TracedRunner {
  readonly headersSeen: Array<Readonly<Record<string, string>>> = [];

  runStep(step: Step<{ n: number }>) {
    this.headersSeen.push(step.headers);
    // The runner runs inside its step's span: what it starts is a child of it.
    trace
      .getTracer('the-app')
      .startSpan('llm.call', { attributes: { step: step.stepNumber } })
      .end();
    if (step.stepNumber < 2) return StepOutcome.continue({ n: step.payload.n + 1 });
    return StepOutcome.succeed(step.payload.n);
  }
}

type Mode = 'retry-then-fail' | 'dead' | 'cancel' | 'wait' | 'spawn' | 'child';

@Injectable()
@StepRunner('outcomes', { maxAttempts: 3 })
class OutcomesRunner {
  childHeaders?: Readonly<Record<string, string>>;

  runStep(step: Step<Mode>) {
    switch (step.payload) {
      case 'retry-then-fail':
        if (step.attempts === 1) throw new Error('the provider said 503');
        return StepOutcome.fail('no luck');
      case 'dead':
        throw StepError.permanent('this input can never work');
      case 'cancel':
        return StepOutcome.cancel('not wanted');
      case 'wait':
        if (step.stepNumber === 0) return StepOutcome.waitForSignal('go', 'wait' as Mode);
        return StepOutcome.succeed('went');
      case 'spawn':
        if (step.stepNumber === 0)
          return StepOutcome.spawn([{ workflow: 'outcomes', input: 'child', runId: `${step.runId}-kid` }], 'spawn');
        return StepOutcome.succeed(step.children!.length);
      case 'child':
        this.childHeaders = step.headers;
        return StepOutcome.succeed('kid');
    }
  }
}

@Injectable()
@StepRunner('slow', { timeoutMs: 150, maxAttempts: 2 })
class SlowRunner {
  async runStep(step: Step) {
    await new Promise((resolve) => step.signal.addEventListener('abort', resolve));
    return StepOutcome.succeed('never');
  }
}

/** Holds every step until the runtime takes it away (a cancel, a shutdown). */
@Injectable()
@StepRunner('holder')
class HolderRunner {
  readonly started = new Set<string>();
  async runStep(step: Step) {
    this.started.add(step.runId);
    await new Promise((resolve) => step.signal.addEventListener('abort', resolve));
    return StepOutcome.succeed('too late');
  }
}

@Injectable()
class Audit {
  readonly outcomes: RunOutcome[] = [];
  @OnTerminal('traced')
  record(outcome: RunOutcome) {
    this.outcomes.push(outcome);
  }
}

const prefixes = new Prefixes('otel');
let exporter: InMemorySpanExporter;
let reader: TestReader;

function register(): void {
  exporter = new InMemorySpanExporter();
  trace.setGlobalTracerProvider(new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }));
  reader = new TestReader();
  metrics.setGlobalMeterProvider(new MeterProvider({ readers: [reader] }));
}

function unregister(): void {
  trace.disable();
  metrics.disable();
}

beforeAll(() => {
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  register();
});
afterAll(async () => {
  unregister();
  context.disable();
  await prefixes.dropAll();
});

const spans = (name?: string, runId?: string): ReadableSpan[] =>
  exporter
    .getFinishedSpans()
    .filter((s) => (!name || s.name === name) && (!runId || s.attributes['workflow.run_id'] === runId));
const parentOf = (s: ReadableSpan) => s.parentSpanContext?.spanId;
const word = (s: ReadableSpan) => s.attributes['workflow.outcome'];

async function collect(): Promise<ResourceMetrics> {
  const { resourceMetrics, errors } = await reader.collect();
  expect(errors).toEqual([]);
  return resourceMetrics;
}

function points(rm: ResourceMetrics, name: string) {
  const metric = rm.scopeMetrics.flatMap((s) => s.metrics).find((m) => m.descriptor.name === name);
  return { type: metric?.dataPointType, unit: metric?.descriptor.unit, points: (metric?.dataPoints ?? []) as any[] };
}

describe('OpenTelemetry', () => {
  let submitter: TestingModule;
  let worker: TestingModule;
  let prefix: string;

  beforeAll(async () => {
    prefix = prefixes.next();
    // Two apps on one database: one submits (worker: false), the other runs the steps.
    submitter = await startApp({ prefix, worker: false, options: { workflows: ['traced', 'outcomes', 'slow'] } });
    worker = await startApp({ prefix, providers: [TracedRunner, OutcomesRunner, SlowRunner, Audit] });
  });
  afterAll(async () => {
    await submitter?.close();
    await worker?.close();
  });
  beforeEach(() => exporter.reset());

  it('a submit in one app and its steps and terminal delivery in another share the trace', async () => {
    const service = submitter.get(WorkflowService);
    let request!: Span;
    const { runId } = await trace.getTracer('the-app').startActiveSpan('POST /documents', async (span) => {
      request = span;
      try {
        return await service.submit('traced', { input: { n: 0 }, headers: { tenant: 'acme' } });
      } finally {
        span.end();
      }
    });
    const outcome = await service.waitForOutcome(runId, { timeoutMs: 10_000 });
    await waitFor(() => spans('workflow.terminal', runId).length === 1, 'the terminal span');

    const traceId = request.spanContext().traceId;
    const [submit] = spans('workflow.submit');
    expect(submit.kind).toBe(SpanKind.PRODUCER);
    expect(submit.spanContext().traceId).toBe(traceId);
    expect(parentOf(submit)).toBe(request.spanContext().spanId);
    expect(submit.attributes).toEqual({ 'workflow.name': 'traced', 'workflow.run_id': runId, 'workflow.run_count': 1 });

    const steps = spans('workflow.step', runId).sort(
      (a, b) => Number(a.attributes['workflow.step_number']) - Number(b.attributes['workflow.step_number']),
    );
    expect(steps.map((s) => s.attributes)).toEqual(
      [0, 1, 2].map((n) => ({
        'workflow.name': 'traced',
        'workflow.run_id': runId,
        'workflow.step_number': n,
        'workflow.attempt': 1,
        'workflow.outcome': n < 2 ? 'continue' : 'succeed',
      })),
    );
    for (const s of steps) {
      expect(s.kind).toBe(SpanKind.CONSUMER);
      expect(s.spanContext().traceId).toBe(traceId);
      expect(parentOf(s)).toBe(submit.spanContext().spanId);
      expect(s.status.code).toBe(SpanStatusCode.UNSET);
    }
    // What the runner traced nests under its step.
    const calls = spans('llm.call').filter((s) => s.spanContext().traceId === traceId);
    expect(calls.map(parentOf).sort()).toEqual(steps.map((s) => s.spanContext().spanId).sort());

    const [terminal] = spans('workflow.terminal', runId);
    expect(terminal.spanContext().traceId).toBe(traceId);
    expect(parentOf(terminal)).toBe(submit.spanContext().spanId);
    expect(terminal.attributes).toMatchObject({
      'workflow.name': 'traced',
      'workflow.run_id': runId,
      'workflow.step_number': 2,
      'workflow.attempt': 1,
      'workflow.outcome': 'succeed',
      'workflow.handler': '~terminal:Audit#record',
    });

    // Stored with the run, never shown: not to the runner, the handler, status() or the outcome.
    const conn = await rawConnection();
    try {
      const [rows] = await conn.query(`SELECT headers FROM \`${prefix}runs\` WHERE id = ?`, [runId]);
      expect(JSON.parse((rows as any[])[0].headers)).toEqual({
        tenant: 'acme',
        'workflow.traceparent': `00-${traceId}-${submit.spanContext().spanId}-01`,
      });
    } finally {
      await conn.end();
    }
    const runner = worker.get(TracedRunner);
    expect(runner.headersSeen).toEqual([{ tenant: 'acme' }, { tenant: 'acme' }, { tenant: 'acme' }]);
    expect(outcome.headers).toEqual({ tenant: 'acme' });
    expect((await service.status(runId))!.headers).toEqual({ tenant: 'acme' });
    expect(worker.get(Audit).outcomes.find((o) => o.runId === runId)!.headers).toEqual({ tenant: 'acme' });
  });

  it('each delivery says how it ended; a child run belongs to the trace of the step that spawned it', async () => {
    const service = submitter.get(WorkflowService);
    const submitted = await service.submitMany('outcomes', [
      { runId: 'o-retry', input: 'retry-then-fail' },
      { runId: 'o-dead', input: 'dead' },
      { runId: 'o-cancel', input: 'cancel' },
      { runId: 'o-wait', input: 'wait' },
      { runId: 'o-spawn', input: 'spawn' },
    ]);
    expect(submitted.every((s) => s.newlySubmitted)).toBe(true);
    // One call, one submit span, for every run.
    const [submit] = spans('workflow.submit');
    expect(submit.attributes).toEqual({ 'workflow.name': 'outcomes', 'workflow.run_count': 5 });

    await waitFor(async () => (await service.status('o-wait'))?.state === 'waiting', 'the wait');
    await service.signal('o-wait', 'go');
    const { runId: slow } = await service.submit('slow', { input: null });
    for (const id of ['o-retry', 'o-dead', 'o-cancel', 'o-wait', 'o-spawn', slow])
      await service.waitForOutcome(id, { timeoutMs: 15_000 });

    const words = (runId: string) =>
      spans('workflow.step', runId)
        .sort((a, b) => a.startTime[0] - b.startTime[0] || a.startTime[1] - b.startTime[1])
        .map((s) => [s.attributes['workflow.step_number'], s.attributes['workflow.attempt'], word(s)]);
    await waitFor(() => words(slow).length === 2, 'both deliveries of the slow step');
    expect(words('o-retry')).toEqual([
      [0, 1, 'retry'],
      [0, 2, 'fail'],
    ]);
    expect(words('o-dead')).toEqual([[0, 1, 'dead']]);
    expect(words('o-cancel')).toEqual([[0, 1, 'cancel']]);
    expect(words('o-wait')).toEqual([
      [0, 1, 'wait'],
      [1, 1, 'succeed'],
    ]);
    expect(words('o-spawn')).toEqual([
      [0, 1, 'spawn'],
      [1, 1, 'succeed'],
    ]);
    expect(words(slow)).toEqual([
      [0, 1, 'timeout'],
      [0, 2, 'dead'],
    ]);

    // Failures are errors on their spans, with the message; the runner's verdicts 'cancel' are not.
    const [retry] = spans('workflow.step', 'o-retry').filter((s) => word(s) === 'retry');
    expect(retry.status).toEqual({ code: SpanStatusCode.ERROR, message: 'Error: the provider said 503' });
    expect(retry.events.map((e) => e.name)).toEqual(['exception']);
    const [fail] = spans('workflow.step', 'o-retry').filter((s) => word(s) === 'fail');
    expect(fail.status).toEqual({ code: SpanStatusCode.ERROR, message: 'no luck' });
    expect(spans('workflow.step', 'o-dead')[0].status).toEqual({
      code: SpanStatusCode.ERROR,
      message: 'this input can never work',
    });
    expect(spans('workflow.step', 'o-cancel')[0].status.code).toBe(SpanStatusCode.UNSET);

    // Every run of the call is in the submit's trace, under its span.
    for (const id of ['o-retry', 'o-dead', 'o-cancel', 'o-wait', 'o-spawn'])
      for (const s of spans('workflow.step', id)) expect(parentOf(s)).toBe(submit.spanContext().spanId);
    // The child's step is a child of the parent's spawning step, in the same trace.
    const [spawning] = spans('workflow.step', 'o-spawn').filter((s) => word(s) === 'spawn');
    const [kid] = spans('workflow.step', 'o-spawn-kid');
    expect(kid.spanContext().traceId).toBe(submit.spanContext().traceId);
    expect(parentOf(kid)).toBe(spawning.spanContext().spanId);
    expect(word(kid)).toBe('succeed');
    expect(worker.get(OutcomesRunner).childHeaders).toEqual({});
  }, 30_000);

  it('a step taken from its runner: cancelled, or handed back at shutdown', async () => {
    const holding = await startApp({
      prefix: prefixes.next(),
      providers: [HolderRunner],
      worker: { pollIntervalMs: 50, leaseMs: 5_000, shutdownTimeoutMs: 200 },
    });
    const service = holding.get(WorkflowService);
    const runner = holding.get(HolderRunner);
    const [cancelled, handedBack] = await service.submitMany('holder', [{ input: null }, { input: null }]);
    await waitFor(() => runner.started.size === 2, 'both steps to run');
    expect(await service.cancel(cancelled.runId)).toBe(true);
    await waitFor(() => spans('workflow.step', cancelled.runId).length === 1, 'the cancelled span');
    await holding.close();
    expect(spans('workflow.step', cancelled.runId).map(word)).toEqual(['cancelled']);
    expect(spans('workflow.step', handedBack.runId).map(word)).toEqual(['handed-back']);
    expect(spans('workflow.step', handedBack.runId)[0].status.code).toBe(SpanStatusCode.UNSET);
  });

  it('counts steps by workflow and outcome, times them, and gauges the queue lag', async () => {
    const rm = await collect();
    const steps = points(rm, 'workflow.steps');
    expect(steps.type).toBe(DataPointType.SUM);
    const count = (workflow: string, outcome: string) =>
      steps.points.find(
        (p) => p.attributes['workflow.name'] === workflow && p.attributes['workflow.outcome'] === outcome,
      )?.value;
    expect(count('traced', 'continue')).toBe(2);
    expect(count('traced', 'succeed')).toBe(1);
    expect(count('outcomes', 'retry')).toBe(1);
    expect(count('outcomes', 'fail')).toBe(1);
    expect(count('outcomes', 'dead')).toBe(1);
    expect(count('outcomes', 'spawn')).toBe(1);
    expect(count('slow', 'timeout')).toBe(1);
    expect(count('slow', 'dead')).toBe(1);
    // Terminal deliveries are not steps.
    expect(steps.points.every((p) => !String(p.attributes['workflow.name']).startsWith('~'))).toBe(true);

    const duration = points(rm, 'workflow.step.duration');
    expect(duration.type).toBe(DataPointType.HISTOGRAM);
    expect(duration.unit).toBe('ms');
    const slow = duration.points.find(
      (p) => p.attributes['workflow.name'] === 'slow' && p.attributes['workflow.outcome'] === 'timeout',
    );
    expect(slow.value.count).toBe(1);
    expect(slow.value.min).toBeGreaterThanOrEqual(140); // timeoutMs 150

    // Nothing waits in this database: every workflow either app knows gauges 0.
    const lag = points(rm, 'workflow.queue.lag');
    expect(lag.type).toBe(DataPointType.GAUGE);
    expect(lag.unit).toBe('ms');
    expect(new Set(lag.points.map((p) => p.attributes['workflow.name']))).toEqual(
      new Set(['traced', 'outcomes', 'slow']),
    );
    expect(lag.points.every((p) => p.value === 0)).toBe(true);
  });

  it('an SDK registered again, after the apps started, gets every span and measurement', async () => {
    unregister();
    // Submitted while no SDK is registered: no context is stored; its spans share a trace derived from the run id.
    const { runId: untraced } = await submitter
      .get(WorkflowService)
      .submit('traced', { input: { n: 0 }, delayMs: 300 });
    register();
    const clock = new ManualClock();
    const lagging = await startApp({
      prefix: prefixes.next(),
      worker: false,
      options: { workflows: ['nobody-runs-this'], clock },
    });
    try {
      const { runId } = await lagging.get(WorkflowService).submit('nobody-runs-this', { input: 1 });
      clock.advance(4_000);
      const service = submitter.get(WorkflowService);
      const traced = await service.submit('traced', { input: { n: 0 } });
      await service.waitForOutcome(traced.runId, { timeoutMs: 10_000 });

      expect(spans('workflow.submit', runId)).toHaveLength(1);
      expect(spans('workflow.step', traced.runId)).toHaveLength(3);
      // A submit with no span around it starts the trace.
      const [root] = spans('workflow.submit', traced.runId);
      expect(root.parentSpanContext).toBeUndefined();
      for (const s of spans('workflow.step', traced.runId))
        expect(s.spanContext().traceId).toBe(root.spanContext().traceId);

      // The gauges move to the new meter within a second.
      const lagOf = async () =>
        points(await collect(), 'workflow.queue.lag').points.find(
          (p) => p.attributes['workflow.name'] === 'nobody-runs-this',
        )?.value;
      expect(await waitFor(lagOf, 'the lag on the new meter', 5_000, 100)).toBe(4_000);
      const steps = points(await collect(), 'workflow.steps').points;
      expect(steps.find((p) => p.attributes['workflow.name'] === 'traced')).toBeDefined();

      await service.waitForOutcome(untraced, { timeoutMs: 10_000 });
      const hash = createHash('sha256').update(untraced).digest('hex');
      const late = spans('workflow.step', untraced);
      expect(late).toHaveLength(3);
      for (const s of late) {
        expect(s.spanContext().traceId).toBe(hash.slice(0, 32));
        expect(parentOf(s)).toBe(hash.slice(32, 48));
      }
    } finally {
      await lagging.close();
    }
  });
});
