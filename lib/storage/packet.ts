/**
 * How many bytes a statement will take on the wire, so that nothing we send can pass
 * the server's max_allowed_packet (a packet the server refuses breaks the connection,
 * which would look like an outage and re-run the step on every lease expiry).
 */
import type { Settlement } from './settlements.js';
import { kindOf } from './settlements.js';
import { type ClaimedJob, JobKind } from './storage.types.js';
import { LIMITS } from '../workflow.constants.js';

/** Ids, tokens, numbers and SQL text one item adds to a statement, per row it writes. */
const ROW_OVERHEAD = 2048;

/** What the statements of one round trip may add up to on a server with this max_allowed_packet. */
export function packetBudget(maxAllowedPacket: number): number {
  // A proportional margin on a tiny packet, so small settlements still fit.
  return maxAllowedPacket - Math.min(LIMITS.packetMarginBytes, Math.floor(maxAllowedPacket / 4));
}

/** 1 for the characters mysql2 escapes with a backslash on the client: NUL, \b \t \n \r, \x1a, quotes, backslash. */
const ESCAPED = new Uint8Array(128);
for (const c of [0, 8, 9, 10, 13, 26, 34, 39, 92]) ESCAPED[c] = 1;

/**
 * The bytes `text` takes in a statement after mysql2's escaping. With `exact` false an
 * O(1) upper bound (3 bytes per UTF-16 unit: a UTF-8 character, or an escaped ASCII one).
 */
export function escapedBytes(text: string | undefined | null, exact: boolean): number {
  if (text == null) return 0;
  if (!exact) return text.length * 3;
  let n = Buffer.byteLength(text, 'utf8');
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 128) n += ESCAPED[c];
  }
  return n;
}

export interface SettlementSize {
  bytes: number;
  /** Copies of the run's result/error written: the run row and one per terminal delivery. */
  copies: number;
}

/**
 * What a settlement adds to its round trip. A step that ends its run writes the result
 * and error on the run row and again in every terminal delivery (with the headers):
 * `handlers` of them. A dead letter also copies the job's payload and headers.
 */
export function settlementSize(job: ClaimedJob, s: Settlement, handlers: number, exact: boolean): SettlementSize {
  const b = (t: string | undefined | null) => escapedBytes(t, exact);
  switch (s.type) {
    case 'spawn':
      return {
        bytes: s.children.reduce(
          (sum, c) => sum + 2 * ROW_OVERHEAD + b(c.firstJob.payload) + 2 * b(c.headers),
          ROW_OVERHEAD + b(s.next.payload),
        ),
        copies: 1,
      };
    case 'continue':
    case 'wait':
      return { bytes: ROW_OVERHEAD + b(s.next.payload), copies: 1 };
    case 'retry':
      return { bytes: ROW_OVERHEAD + b(s.error), copies: 1 };
    case 'finish':
    case 'deadLetter':
    case 'observeCancel': {
      const dead = s.type === 'deadLetter' ? ROW_OVERHEAD + b(s.error) + b(job.payload) + b(job.headers) : 0;
      if (job.kind !== JobKind.Step) return { bytes: ROW_OVERHEAD + dead, copies: 1 };
      const end = kindOf(s).ending!(s);
      // A delivery carries the error as a JSON string: up to 7 bytes per unit (\u0001, escaped again).
      const deliveryError = end.error === undefined ? 0 : exact ? b(JSON.stringify(end.error)) : end.error.length * 7;
      const run = ROW_OVERHEAD + b(end.result) + b(end.error);
      const delivery = ROW_OVERHEAD + b(end.result) + deliveryError + b(job.headers);
      return { bytes: dead + run + handlers * delivery, copies: 1 + handlers };
    }
    default:
      return { bytes: ROW_OVERHEAD, copies: 1 };
  }
}

/**
 * The size the batcher counts for a settlement: the cheap bound, made exact only when it
 * could matter (a batch of such items could pass the budget).
 */
export function estimateSize(
  job: ClaimedJob,
  s: Settlement,
  handlers: number,
  budget: number,
  batchMates: number,
): SettlementSize {
  const rough = settlementSize(job, s, handlers, false);
  return rough.bytes * batchMates <= budget ? rough : settlementSize(job, s, handlers, true);
}
