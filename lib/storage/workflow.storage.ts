import type { EntityManager } from 'typeorm';
import { type CancelResult, cancelRun } from './cancel.js';
import { claimBatch, promoteDue, readyQueues } from './claim.js';
import { deadSteps, retryDead } from './dead-letters.js';
import { cancellingAmong, renewLeases } from './leases.js';
import { reapExpired, sweepRetention } from './maintenance.js';
import { getRun } from './queries.js';
import { type SettleItem, settleMany } from './settle.js';
import type { SqlClient } from './sql-client.js';
import { expireHandlers, HandlerDirectory, type HostedHandler, registerHandlers } from './handlers.js';
import type { ClaimedJob, DeadRow, NewRun, RunRow, SettleResult } from './storage.types.js';
import { type ExistingRun, submitRuns } from './submit.js';
import { type StorageContext, tablesOf } from './tables.js';

export type { CancelResult, ExistingRun, HostedHandler, SettleItem };

/**
 * The module's one door to its tables. Each method is one transaction (or one read),
 * kept in a file of its own named for what it commits; the statements they share, and
 * the lock order they all follow, are in transitions.ts.
 */
export class WorkflowStorage {
  private readonly ctx: StorageContext;
  /** The server's max_allowed_packet in bytes, read at startup: settlements and submits are sized to fit it. */
  maxAllowedPacket = Number.POSITIVE_INFINITY;

  constructor(
    readonly client: SqlClient,
    private readonly prefix: string,
    now: () => number,
    deliveryAttempts: number,
  ) {
    this.ctx = {
      client,
      t: tablesOf(prefix),
      now,
      handlers: new HandlerDirectory(),
      deliveryAttempts,
      stats: { fastBatches: 0, carefulBatches: 0 },
    };
  }

  /** Announces (and, called again, keeps alive) the @OnTerminal handlers this process hosts. */
  registerHandlers(hosted: HostedHandler[]): Promise<void> {
    return registerHandlers(this.ctx, hosted);
  }

  /** Dead-letters the deliveries of handlers no live process hosts any more. */
  expireHandlers(): Promise<number> {
    return expireHandlers(this.ctx);
  }

  /** Reads which workflows have handlers, so settlements of the others keep their one round trip. */
  async loadHandlers(): Promise<void> {
    const rows = await this.client.query<Array<{ workflow: string; queue: string }>>(
      `SELECT \`workflow\`, \`queue\` FROM ${this.ctx.t.handlers}`,
    );
    this.ctx.handlers.remember(rows);
  }

  /** Terminal deliveries a run of `workflow` ending now would get, as the handler cache knows them (a hint). */
  handlersFor(workflow: string): number {
    return this.ctx.handlers.cachedFor(workflow);
  }

  get settleStats(): Readonly<StorageContext['stats']> {
    return this.ctx.stats;
  }

  submitRuns(runs: NewRun[], check: (existing: Map<string, ExistingRun>) => void, manager?: EntityManager): Promise<Set<string>> {
    return submitRuns(this.ctx, runs, check, manager, this.maxAllowedPacket);
  }

  claimBatch(queue: string, limit: number, token: string, leaseMs: number, maxAttempts: number) {
    return claimBatch(this.ctx, queue, limit, token, leaseMs, maxAttempts);
  }

  readyQueues(queues: readonly string[]): Promise<Set<string>> {
    return readyQueues(this.ctx, queues);
  }

  promoteDue(limit?: number): Promise<number> {
    return promoteDue(this.ctx, limit);
  }

  renewLeases(jobs: Array<{ id: string; token: string }>, ms: number): Promise<string[]> {
    return renewLeases(this.ctx, jobs, ms);
  }

  cancellingAmong(runIds: string[]): Promise<string[]> {
    return cancellingAmong(this.ctx, runIds);
  }

  settleMany(items: SettleItem[]): Promise<SettleResult[]> {
    return settleMany(this.ctx, items);
  }

  reapExpired(limit?: number) {
    return reapExpired(this.ctx, limit);
  }

  cancelRun(runId: string): Promise<CancelResult> {
    return cancelRun(this.ctx, runId);
  }

  getRun(runId: string): Promise<RunRow | null> {
    return getRun(this.ctx, runId);
  }

  deadSteps(filter: { workflow?: string; limit: number; before?: number }): Promise<DeadRow[]> {
    return deadSteps(this.ctx, filter);
  }

  retryDead(jobId: string, stepNumber?: number): Promise<boolean> {
    return retryDead(this.ctx, jobId, stepNumber);
  }

  sweepRetention(runsBefore: number, deadBefore: number, batch?: number) {
    return sweepRetention(this.ctx, this.prefix, runsBefore, deadBefore, batch);
  }
}

export type { ClaimedJob };
