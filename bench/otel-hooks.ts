/**
 * What the telemetry hooks cost one step, without the database in the way (the chain
 * benchmark on a shared 2-core machine is noisier than the difference).
 * `node .tmp/bench/otel-hooks.js`: the API installed, no SDK;
 * `node --import ./.tmp/test/fixtures/hide-peers.js .tmp/bench/otel-hooks.js`: the API absent;
 * `node --import ./.tmp/bench/otel-sdk.js .tmp/bench/otel-hooks.js`: an SDK registered.
 * Each iteration is what one step delivery adds: observeDelivery, the runner call in its
 * context, deliverySettled, deliveryEnded, and the headers a runner sees.
 */
const dist = (file: string) => new URL(`../../dist/${file}`, import.meta.url).href;
const telemetry = await import(dist('observability/telemetry.js'));
const { visibleHeaders } = await import(dist('observability/trace-context.js'));
const { loadOtel } = await import(dist('observability/otel.js'));
const api = await loadOtel();

const N = Number(process.env.BENCH_HOOK_ITERATIONS ?? 200_000);
// What a run submitted while no SDK records stores (with an SDK, the traceparent as well: BENCH_HOOK_TRACED=1).
const headers = JSON.stringify({
  tenant: 'acme',
  ...(process.env.BENCH_HOOK_TRACED
    ? { 'workflow.traceparent': '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' }
    : {}),
});
const settlement = { type: 'continue', next: {} };

const execOf = (i: number) => ({
  job: { kind: 0, queue: 'chain', runId: `run-${i}`, stepNumber: i % 10, attempts: 1, headers },
  workflow: 'chain',
  abortReason: undefined,
});

function once(i: number): void {
  const exec = execOf(i);
  const ctx = telemetry.observeDelivery(exec);
  if (ctx) telemetry.withContext(ctx, () => visibleHeaders(exec.job.headers));
  else visibleHeaders(exec.job.headers);
  telemetry.deliverySettled(exec, settlement, 'settled');
  telemetry.deliveryEnded(exec);
}

/** The same step as before the hooks: the headers a runner sees were JSON.parse alone. */
function bare(i: number): void {
  const exec = execOf(i);
  if (exec.job.kind === 0) JSON.parse(exec.job.headers);
}

function time(fn: (i: number) => void): number {
  for (let i = 0; i < 20_000; i++) fn(i); // warm up
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < N; i++) fn(i);
  return Number(process.hrtime.bigint() - t0) / N;
}

const samples = { bare: [] as number[], hooks: [] as number[] };
for (let r = 0; r < 5; r++) {
  samples.bare.push(time(bare));
  samples.hooks.push(time(once));
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const mode = api === null ? 'API absent' : (api.trace.getTracerProvider() as any).getDelegate?.().constructor.name;
process.stdout.write(
  `${mode}: a step's hooks ${median(samples.hooks).toFixed(0)} ns, the same step without them ${median(samples.bare).toFixed(0)} ns ` +
    `(${N} iterations, median of 5): +${(median(samples.hooks) - median(samples.bare)).toFixed(0)} ns per step\n`,
);
