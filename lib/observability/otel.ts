/**
 * `@opentelemetry/api`, an optional peer dependency, loaded once by a dynamic import
 * (WorkflowModule awaits it while its providers are built, so it is there before the
 * first submit or step). Absent, everything in lib/observability does nothing. Only
 * the API is ever imported: whether anything is recorded is up to the SDK the
 * application registers, whose provider is looked up at every use, so an SDK registered
 * after the module was imported still gets every span and measurement.
 */
import type * as OtelApi from '@opentelemetry/api';

export type Otel = typeof OtelApi;

/** The instrumentation scope of every tracer and meter. */
export const SCOPE = 'nestjs-durable-workflow';

let api: Otel | null | undefined;
let loading: Promise<Otel | null> | undefined;
/** What the API returns while no SDK is registered: compared by identity, the cheapest test there is. */
let noopTracerProvider: unknown;
let noopMeter: unknown;

/** Loads the API if it is installed; resolves to null if not. Once per process. */
export function loadOtel(): Promise<Otel | null> {
  loading ??= import('@opentelemetry/api').then(
    (m) => {
      // The API ships CommonJS to Node: should its named exports not be detected, they sit on `default` (module.exports).
      const mod = (m as { ProxyTracerProvider?: unknown }).ProxyTracerProvider
        ? m
        : (m as unknown as { default: Otel }).default;
      noopTracerProvider = new mod.ProxyTracerProvider().getDelegate();
      noopMeter = mod.createNoopMeter();
      return (api = mod);
    },
    () => (api = null),
  );
  return loading;
}

/** The API, once loaded and if installed. */
export function otel(): Otel | null | undefined {
  return api;
}

/** The tracer of the provider last seen, and that provider: an SDK registered again gets a tracer of its own. */
let tracerOf: { provider: unknown; tracer: OtelApi.Tracer } | undefined;
/** The meter of the provider last seen (undefined for the no-op one). */
let meterOf: { provider: unknown; meter: OtelApi.Meter | undefined } | undefined;

/**
 * A tracer of the registered SDK, or undefined while none is registered (nothing to
 * record). Asked of the SDK once per provider: its lookup by name and version is a
 * measurable share of a step when every delivery asks.
 */
export function activeTracer(o: Otel): OtelApi.Tracer | undefined {
  const provider = o.trace.getTracerProvider() as Partial<OtelApi.ProxyTracerProvider> & OtelApi.TracerProvider;
  const delegate = typeof provider.getDelegate === 'function' ? provider.getDelegate() : provider;
  if (delegate === noopTracerProvider) return undefined;
  if (tracerOf?.provider !== delegate) tracerOf = { provider: delegate, tracer: o.trace.getTracer(SCOPE) };
  return tracerOf.tracer;
}

/** A meter of the registered SDK, or undefined while none is registered; asked once per provider. */
export function activeMeter(o: Otel): OtelApi.Meter | undefined {
  const provider = o.metrics.getMeterProvider();
  if (meterOf?.provider !== provider) {
    const meter = provider.getMeter(SCOPE);
    meterOf = { provider, meter: meter === noopMeter ? undefined : meter };
  }
  return meterOf.meter;
}
