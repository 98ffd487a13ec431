import { isConnectionError } from '../storage/sql-client.js';
import { Injectable } from '@nestjs/common';
import { estimateSize, packetBudget } from '../storage/packet.js';
import { WorkflowStorage } from '../storage/workflow.storage.js';
import type { ClaimedJob, DeliveryRecord, SettleResult, Settlement } from '../storage/storage.types.js';

interface Pending {
  job: ClaimedJob;
  settlement: Settlement;
  record?: DeliveryRecord;
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

/**
 * Group commit for settlements. Settlements that arrive while a transaction
 * is in flight wait for the next one and share it, so under load many steps cost one
 * commit; when idle, a settlement goes out on the next turn of the event loop. Each
 * caller still learns its own item's result.
 */
@Injectable()
export class SettleBatcher {
  private queue: Pending[] = [];
  private flushes = 0;
  private scheduled = false;

  constructor(private readonly storage: WorkflowStorage) {}

  settle(job: ClaimedJob, settlement: Settlement, record?: DeliveryRecord): Promise<SettleResult> {
    return new Promise((resolve, reject) => {
      this.queue.push({ job, settlement, record, resolve, reject });
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
        const [result] = await this.storage.settleMany([{ job: b.job, settlement: b.settlement, record: b.record }]);
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
  private take(count: number): Pending[] {
    const storage = this.storage;
    const budget = packetBudget(storage.maxAllowedPacket);
    let n = 0;
    for (let total = 0; n < count && n < this.queue.length; n++) {
      const p = this.queue[n];
      if (budget !== Number.POSITIVE_INFINITY) {
        p.bytes ??= estimateSize(p.job, p.settlement, storage.handlersFor(p.job.queue), budget, MAX_BATCH).bytes;
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
    const batch = this.take(Math.min(size, MAX_BATCH));
    this.schedule();
    try {
      const results = await this.storage.settleMany(
        batch.map((b) => ({ job: b.job, settlement: b.settlement, record: b.record })),
      );
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
