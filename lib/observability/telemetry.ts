/**
 * Spans and metrics of submits and deliveries, through `@opentelemetry/api` only.
 *
 * - `workflow.submit` (producer): one per submit / submitMany call, in the caller's
 *   context; its span context is stored with the run (trace-context.ts).
 * - `workflow.step` / `workflow.terminal` (consumer): one per delivery of a step or of
 *   a terminal handler, a child of the stored context (the submit span; for a child
 *   run, the step span that spawned it), wherever and however late it runs. The runner
 *   or handler runs inside it, so its own spans nest below.
 * - `workflow.steps` (counter) and `workflow.step.duration` (histogram, ms) per step
 *   delivery, by `workflow.name` and `workflow.outcome`. The lag gauge is in
 *   queue-lag-gauge.ts.
 *
 * Tracer and meter providers are looked up at every use. With the API absent, or present with no
 * SDK registered, each hook returns after one identity comparison: nothing is created,
 * parsed or scheduled.
 */
import type * as OtelApi from '@opentelemetry/api';
import type { Execution } from '../worker/execution.js';
import { type ClaimedJob, JobKind, type SettleResult } from '../storage/storage.types.js';
import type { Settlement } from '../storage/settlements.js';
import { activeMeter, activeTracer, type Otel, otel } from './otel.js';
import { type DeliveryOutcome, errorOf, FAILED_OUTCOMES, outcomeOf } from './outcome.js';
import { storedParent, traceHeaders } from './trace-context.js';

export const ATTR = {
  workflow: 'workflow.name',
  runId: 'workflow.run_id',
  stepNumber: 'workflow.step_number',
  attempt: 'workflow.attempt',
  outcome: 'workflow.outcome',
  runCount: 'workflow.run_count',
  handler: 'workflow.handler',
} as const;

/** Step durations from a millisecond to ten minutes (LLM calls and long steps included). */
const DURATION_BUCKETS = [
  1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 120_000, 600_000,
];

interface Delivery {
  start: number;
  span?: OtelApi.Span;
  done?: boolean;
}

/** Deliveries being observed, by their job (the object ClaimedJob, alive as long as its Execution). */
const observed = new WeakMap<ClaimedJob, Delivery>();
/** How many of them have not ended: while none, the settle hooks return before any lookup. */
let observing = 0;

interface StepInstruments {
  steps: OtelApi.Counter;
  duration: OtelApi.Histogram;
}
/** Instruments per meter: an SDK registered again (tests, a reload) gets its own. */
const instruments = new WeakMap<OtelApi.Meter, StepInstruments>();

function stepInstruments(meter: OtelApi.Meter): StepInstruments {
  let i = instruments.get(meter);
  if (!i) {
    i = {
      steps: meter.createCounter('workflow.steps', {
        description: 'Step deliveries, by workflow and by how each ended (workflow.outcome)',
        unit: '{delivery}',
      }),
      duration: meter.createHistogram('workflow.step.duration', {
        description: 'How long a step delivery took, from its start to its settlement',
        unit: 'ms',
        advice: { explicitBucketBoundaries: DURATION_BUCKETS },
      }),
    };
    instruments.set(meter, i);
  }
  return i;
}

/**
 * Starts observing a delivery: its span, and its clock for the duration. Returns the
 * context to run the runner or handler in, or undefined when no span records (then the
 * caller runs it as it is). The span ends, and the metrics count, when its settlement
 * commits (`deliverySettled`) or it ends unsettled (`deliveryEnded`), whichever is first.
 */
export function observeDelivery(exec: Execution): OtelApi.Context | undefined {
  const o = otel();
  if (!o) return undefined;
  const job = exec.job;
  const step = job.kind === JobKind.Step;
  const tracer = activeTracer(o);
  if (!tracer && !(step && activeMeter(o))) return undefined;
  const d: Delivery = { start: performance.now() };
  observed.set(job, d);
  observing++;
  let ctx: OtelApi.Context | undefined;
  if (tracer) {
    const parent = o.trace.setSpanContext(o.ROOT_CONTEXT, storedParent(o, job.headers, job.runId));
    const attributes: OtelApi.Attributes = {
      [ATTR.workflow]: exec.workflow,
      [ATTR.runId]: job.runId,
      [ATTR.stepNumber]: job.stepNumber,
      [ATTR.attempt]: job.attempts,
    };
    if (!step) attributes[ATTR.handler] = job.queue;
    d.span = tracer.startSpan(
      step ? 'workflow.step' : 'workflow.terminal',
      { kind: o.SpanKind.CONSUMER, attributes },
      parent,
    );
    ctx = o.trace.setSpan(parent, d.span);
  }
  return ctx;
}

/** Runs `fn` with `ctx` active (the delivery's span the parent of what it starts). */
export function withContext<T>(ctx: OtelApi.Context, fn: () => T): T {
  return otel()!.context.with(ctx, fn);
}

/** A delivery's settlement committed with `result`: its span ends with how it ended, its metrics count. */
export function deliverySettled(exec: Execution, s: Settlement, result: SettleResult): void {
  if (observing === 0) return;
  const d = observed.get(exec.job);
  if (d && !d.done) finish(otel()!, exec, d, outcomeOf(s, result, exec.abortReason), errorOf(s));
}

/**
 * Whoever owned the delivery's settlement (its runner, or the runtime that took it
 * over) is done with it. Unless it settled, it ended with its lease lost: another
 * delivery runs the step once the lease has expired.
 */
export function deliveryEnded(exec: Execution): void {
  if (observing === 0) return;
  const d = observed.get(exec.job);
  if (d && !d.done) finish(otel()!, exec, d, 'lease-expired');
}

function finish(o: Otel, exec: Execution, d: Delivery, outcome: DeliveryOutcome, error?: string): void {
  d.done = true;
  observing--;
  const failed = FAILED_OUTCOMES.has(outcome);
  if (d.span) {
    d.span.setAttribute(ATTR.outcome, outcome);
    if (failed) {
      const message =
        firstLine(error) ?? (outcome === 'lease-expired' ? 'the lease was lost before the delivery settled' : outcome);
      if (error && outcome !== 'fail') d.span.recordException({ name: 'Error', message, stack: error });
      d.span.setStatus({ code: o.SpanStatusCode.ERROR, message });
    }
    d.span.end();
  }
  if (exec.job.kind !== JobKind.Step) return;
  const meter = activeMeter(o);
  if (!meter) return;
  const i = stepInstruments(meter);
  const attributes = { [ATTR.workflow]: exec.workflow, [ATTR.outcome]: outcome };
  countStep(i.steps, attributes);
  i.duration.record(performance.now() - d.start, attributes);
}

/**
 * Step counts not added yet, per counter and attributes. A settlement batch's deliveries
 * finish in consecutive microtasks, so one add per workflow and outcome counts them all:
 * an SDK hashes the attributes of every add (1.6% of node's time on the traced chain).
 */
const unadded = new Map<OtelApi.Counter, Map<string, { attributes: OtelApi.Attributes; n: number }>>();
let adding = false;

function countStep(counter: OtelApi.Counter, attributes: Record<string, string>): void {
  let byKey = unadded.get(counter);
  if (!byKey) unadded.set(counter, (byKey = new Map()));
  const key = `${attributes[ATTR.workflow]}\u0000${attributes[ATTR.outcome]}`;
  const pending = byKey.get(key);
  if (pending) pending.n++;
  else byKey.set(key, { attributes, n: 1 });
  if (!adding) {
    adding = true;
    queueMicrotask(addCounts);
  }
}

function addCounts(): void {
  adding = false;
  for (const [counter, byKey] of unadded) for (const { attributes, n } of byKey.values()) counter.add(n, attributes);
  unadded.clear();
}

function firstLine(text: string | undefined): string | undefined {
  if (!text) return undefined;
  const end = text.indexOf('\n');
  const line = end < 0 ? text : text.slice(0, end);
  return line.length > 1000 ? `${line.slice(0, 1000)}…` : line;
}

/**
 * The reserved headers that make a child run spawned by this delivery a child of its
 * step span (undefined when no span records: the child then keeps its parent's).
 */
export function childTraceHeaders(parent: ClaimedJob): Record<string, string> | undefined {
  if (observing === 0) return undefined;
  const span = observed.get(parent)?.span;
  return span && traceHeaders(otel()!, span.spanContext());
}

/**
 * Runs a submit inside a `workflow.submit` span, handing `fn` the reserved headers that
 * store the span's context with each run; without an SDK, `fn(undefined)` and nothing else.
 */
export function traceSubmit<T extends ReadonlyArray<{ runId: string }>>(
  workflow: string,
  fn: (trace: Record<string, string> | undefined) => Promise<T>,
): Promise<T> {
  const o = otel();
  const tracer = o && activeTracer(o);
  if (!tracer) return fn(undefined);
  return tracer.startActiveSpan(
    'workflow.submit',
    { kind: o.SpanKind.PRODUCER, attributes: { [ATTR.workflow]: workflow } },
    async (span) => {
      try {
        const outcomes = await fn(traceHeaders(o, span.spanContext()));
        if (outcomes.length === 1) span.setAttribute(ATTR.runId, outcomes[0].runId);
        span.setAttribute(ATTR.runCount, outcomes.length);
        return outcomes;
      } catch (err) {
        span.recordException(err as Error);
        span.setStatus({ code: o.SpanStatusCode.ERROR, message: (err as Error)?.message ?? String(err) });
        throw err;
      } finally {
        span.end();
      }
    },
  );
}
