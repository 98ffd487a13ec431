import * as api from '@opentelemetry/api';
import { createHash } from 'node:crypto';
import { storedParent, traceHeaders, visibleHeaders } from '../../lib/observability/trace-context.js';

const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
const spanId = '00f067aa0ba902b7';

describe('trace context stored with a run', () => {
  it('is two reserved headers that no view of the headers shows', () => {
    const sc = { traceId, spanId, traceFlags: 1, traceState: api.createTraceState('vendor=a,other=b') };
    const stored = { tenant: 'acme', ...traceHeaders(api, sc) };
    expect(stored).toEqual({
      tenant: 'acme',
      'workflow.traceparent': `00-${traceId}-${spanId}-01`,
      'workflow.tracestate': 'vendor=a,other=b',
    });
    const json = JSON.stringify(stored);
    expect(visibleHeaders(json)).toEqual({ tenant: 'acme' });
    // A value that merely mentions the prefix stays, as does every ordinary key.
    expect(visibleHeaders(JSON.stringify({ note: '"workflow.x', __proto__x: '1' }))).toEqual({
      note: '"workflow.x',
      __proto__x: '1',
    });
  });

  it('is read back from the JSON text as the remote parent of the run spans', () => {
    const json = JSON.stringify({
      a: 'b',
      'workflow.traceparent': `00-${traceId}-${spanId}-00`,
      'workflow.tracestate': 'vendor=a',
    });
    const parent = storedParent(api, json, 'run-1');
    expect({ ...parent, traceState: parent.traceState?.serialize() }).toEqual({
      traceId,
      spanId,
      traceFlags: 0,
      isRemote: true,
      traceState: 'vendor=a',
    });
  });

  it('a run without one (a schedule tick, or submitted with no SDK) gets a parent derived from its run id', () => {
    const hash = createHash('sha256').update('tick-42').digest('hex');
    const derived = { traceId: hash.slice(0, 32), spanId: hash.slice(32, 48), traceFlags: 1, isRemote: true };
    expect(storedParent(api, '{}', 'tick-42')).toEqual(derived);
    // An invalid stored context (zero ids, version ff) is no context.
    const zero = JSON.stringify({ 'workflow.traceparent': `00-${'0'.repeat(32)}-${spanId}-01` });
    expect(storedParent(api, zero, 'tick-42')).toEqual(derived);
    const ff = JSON.stringify({ 'workflow.traceparent': `ff-${traceId}-${spanId}-01` });
    expect(storedParent(api, ff, 'tick-42')).toEqual(derived);
    expect(traceHeaders(api, api.INVALID_SPAN_CONTEXT)).toBeUndefined();
  });
});
