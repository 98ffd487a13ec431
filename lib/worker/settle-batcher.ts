import { isConnectionError } from '../storage/sql-client.js';
import type { WorkflowStorage } from '../storage/workflow.storage.js';
import { type ClaimedJob, JobKind, type SettleResult, type Settlement } from '../storage/storage.types.js';
import { kindOf } from '../storage/settlements.js';
import { LIMITS } from '../workflow.constants.js';

interface Pending {
  job: ClaimedJob;
  settlement: Settlement;
  /** Estimated bytes in a statement, computed once when first batched. */
  bytes?: number;
  resolve(result: SettleResult): void;
  reject(err: unknown): void;
}

/** Largest batch per transaction: keeps statements and lock sets small. */
const MAX_BATCH = 64;
/** Transactions in flight at once: while one waits on the server, the next batch forms and goes. */
const MAX_FLUSHES = 2;
/** A queue longer than this, with a second transaction slot free, is split between the slots. */
const SPLIT_ABOVE = 24;

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
    case 'continue':
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
export function estimateSize(job: ClaimedJob, s: Settlement, handlers: number, budget: number): SettlementSize {
  const rough = settlementSize(job, s, handlers, false);
  return rough.bytes * MAX_BATCH <= budget ? rough : settlementSize(job, s, handlers, true);
}


/**
 * Group commit for settlements. Settlements that arrive while a transaction
 * is in flight wait for the next one and share it, so under load many steps cost one
 * commit; when idle, a settlement goes out on the next turn of the event loop. Each
 * caller still learns its own item's result.
 */
export class SettleBatcher {
  private queue: Pending[] = [];
  private flushes = 0;
  private scheduled = false;

  constructor(private readonly storage: () => Promise<WorkflowStorage>) {}

  settle(job: ClaimedJob, settlement: Settlement): Promise<SettleResult> {
    return new Promise((resolve, reject) => {
      this.queue.push({ job, settlement, resolve, reject });
      this.schedule();
    });
  }

  /** Next turn of the event loop, so settlements finishing in this one share a transaction. */
  private schedule(): void {
    if (this.scheduled || this.flushes >= MAX_FLUSHES || this.queue.length === 0) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      void this.flush();
    });
  }

  private async oneByOne(batch: Pending[]): Promise<void> {
    for (const b of batch) {
      try {
        const [result] = await (await this.storage()).settleMany([{ job: b.job, settlement: b.settlement }]);
        b.resolve(result);
      } catch (err) {
        b.reject(err);
      }
    }
  }

  /**
   * The first `count` queued items, fewer if their statements would pass the packet
   * budget: a fast-path batch goes to the server as one packet (START, its statements and
   * COMMIT). An item too big for a batch-mate goes alone.
   */
  private take(count: number, storage: WorkflowStorage | undefined): Pending[] {
    const budget = storage ? packetBudget(storage.maxAllowedPacket) : Number.POSITIVE_INFINITY;
    let n = 0;
    for (let total = 0; n < count && n < this.queue.length; n++) {
      const p = this.queue[n];
      if (budget !== Number.POSITIVE_INFINITY) {
        p.bytes ??= estimateSize(p.job, p.settlement, storage!.handlersFor(p.job.queue), budget).bytes;
        total += p.bytes;
        if (n > 0 && total > budget) break;
      }
    }
    return this.queue.splice(0, n);
  }

  private async flush(): Promise<void> {
    if (this.queue.length === 0 || this.flushes >= MAX_FLUSHES) return;
    this.flushes++;
    // A burst (many runs finishing a step at once) is split over the free transaction
    // slots, so the server works on the halves in parallel and each caller waits only for
    // its own. Smaller queues go whole: splitting them costs a commit and gains nothing.
    const free = MAX_FLUSHES - this.flushes + 1;
    const size = this.queue.length > SPLIT_ABOVE && free > 1 ? Math.ceil(this.queue.length / free) : MAX_BATCH;
    // Known once the module has started, which it has by the time a job was claimed.
    let storage: WorkflowStorage | undefined;
    let unavailable: unknown;
    try {
      storage = await this.storage();
    } catch (err) {
      unavailable = err;
    }
    const batch = this.take(Math.min(size, MAX_BATCH), storage);
    this.schedule();
    try {
      if (!storage) throw unavailable;
      const results = await storage.settleMany(batch.map((b) => ({ job: b.job, settlement: b.settlement })));
      batch.forEach((b, i) => b.resolve(results[i]));
    } catch (err) {
      if (batch.length > 1 && !isConnectionError(err)) {
        // One item the server refuses (say, a payload over max_allowed_packet) must not
        // sink its batch-mates: settle each on its own so only that one fails.
        await this.oneByOne(batch);
      } else {
        // Each caller retries on its own terms (and may join a later batch).
        for (const b of batch) b.reject(err);
      }
    } finally {
      this.flushes--;
      this.schedule();
    }
  }
}
