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
/**
 * One transaction at a time: settlements that arrive meanwhile form the next batch. On the
 * chain benchmark that gives the throughput of two at once for about 12% less CPU, in
 * this process and in the server (bench/RESULTS.md, 2026-12-02), since batches are
 * twice the size. A second goes only when the first has been out this long (a lock
 * wait, a slow disk), and a third never.
 */
const STALLED_MS = 25;
const MAX_FLUSHES = 2;

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
  /** When the transaction in flight (the first, if two) was sent. */
  private sentAt = 0;
  private stallTimer?: NodeJS.Timeout;

  constructor(private readonly storage: WorkflowStorage) {}

  settle(job: ClaimedJob, settlement: Settlement, record?: DeliveryRecord): Promise<SettleResult> {
    return new Promise((resolve, reject) => {
      this.queue.push({ job, settlement, record, resolve, reject });
      this.schedule();
    });
  }

  /** A transaction may go now: none is out, or the one out is stalled. */
  private mayFlush(): boolean {
    if (this.flushes === 0) return true;
    return this.flushes < MAX_FLUSHES && Date.now() - this.sentAt >= STALLED_MS;
  }

  /** Next turn of the event loop, so settlements finishing in this one share a transaction. */
  private schedule(): void {
    if (this.scheduled || this.queue.length === 0) return;
    if (!this.mayFlush()) {
      // Looked at again when the transaction out returns, or once it counts as stalled.
      if (this.flushes < MAX_FLUSHES && !this.stallTimer) {
        this.stallTimer = setTimeout(
          () => {
            this.stallTimer = undefined;
            this.schedule();
          },
          Math.max(1, this.sentAt + STALLED_MS - Date.now()),
        );
        this.stallTimer.unref();
      }
      return;
    }
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
    if (this.queue.length === 0 || !this.mayFlush()) return;
    if (this.flushes++ === 0) this.sentAt = Date.now();
    const batch = this.take(MAX_BATCH);
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
      // The one left out (if two were) was sent later than `sentAt`: judged from now on.
      if (--this.flushes > 0) this.sentAt = Date.now();
      clearTimeout(this.stallTimer);
      this.stallTimer = undefined;
      this.schedule();
    }
  }
}
