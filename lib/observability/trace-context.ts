/**
 * The submitter's W3C trace context, carried with the run. It is stored as two reserved
 * headers of the run (`workflow.traceparent`, `workflow.tracestate`) in the headers JSON
 * that every step row and terminal delivery copies already, so it costs no column, no
 * join and no extra write; users cannot set keys with the reserved prefix, and every
 * view of the headers (Step.headers, RunOutcome.headers, RunStatus.headers) drops them.
 */
import { createHash } from 'node:crypto';
import { RESERVED_HEADER_PREFIX } from '../workflow.constants.js';
import type * as OtelApi from '@opentelemetry/api';

export const TRACEPARENT = `${RESERVED_HEADER_PREFIX}traceparent`;
export const TRACESTATE = `${RESERVED_HEADER_PREFIX}tracestate`;

/** Marks a headers JSON that may hold a reserved key (a value with the text only costs the loop below). */
const RESERVED_MARK = `"${RESERVED_HEADER_PREFIX}`;
const TRACEPARENT_FIELD = /"workflow\.traceparent":"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})"/;
const TRACESTATE_FIELD = /"workflow\.tracestate":("(?:[^"\\]|\\.)*")/;

/** The headers a user sees: the stored JSON without the module's reserved keys. */
export function visibleHeaders(json: string): Record<string, string> {
  const headers = JSON.parse(json) as Record<string, string>;
  if (!json.includes(RESERVED_MARK)) return headers;
  // Copied rather than deleted from: an object that loses keys becomes a slow dictionary.
  const visible: Record<string, string> = {};
  for (const key of Object.keys(headers)) if (!key.startsWith(RESERVED_HEADER_PREFIX)) visible[key] = headers[key];
  return visible;
}

/** A span's context as the reserved headers that store it; undefined for an invalid one. */
export function traceHeaders(o: typeof OtelApi, sc: OtelApi.SpanContext): Record<string, string> | undefined {
  if (!o.isSpanContextValid(sc)) return undefined;
  const flags = (sc.traceFlags & 0xff).toString(16).padStart(2, '0');
  const headers: Record<string, string> = { [TRACEPARENT]: `00-${sc.traceId}-${sc.spanId}-${flags}` };
  const state = sc.traceState?.serialize();
  if (state) headers[TRACESTATE] = state;
  return headers;
}

/**
 * The remote parent stored in a headers JSON (read from the text, no parse). A run
 * without one (a schedule's tick, a run submitted while no SDK was registered) gets a
 * parent derived from its run id, so all of its spans still share one trace.
 */
export function storedParent(o: typeof OtelApi, headersJson: string, runId: string): OtelApi.SpanContext {
  const m = headersJson.includes(RESERVED_MARK) ? TRACEPARENT_FIELD.exec(headersJson) : null;
  if (m && m[1] !== 'ff') {
    const sc: OtelApi.SpanContext = {
      traceId: m[2],
      spanId: m[3],
      traceFlags: parseInt(m[4], 16) & 0xff,
      isRemote: true,
    };
    const state = TRACESTATE_FIELD.exec(headersJson);
    if (state) {
      try {
        sc.traceState = o.createTraceState(JSON.parse(state[1]) as string);
      } catch {
        // A tracestate that does not parse is dropped; the traceparent stands alone.
      }
    }
    if (o.isSpanContextValid(sc)) return sc;
  }
  const hash = createHash('sha256').update(runId).digest('hex');
  return { traceId: hash.slice(0, 32), spanId: hash.slice(32, 48), traceFlags: o.TraceFlags.SAMPLED, isRemote: true };
}
