import { Inject, Injectable } from '@nestjs/common';
import type { EntityManager } from 'typeorm';
import type { ResolvedWorkflowConfig } from '../workflow.config.js';
import { WORKFLOW_CONFIG } from '../workflow.constants.js';
import { type CancelResult, cancelRun, finishCascade, takeDueCascades } from './cancel.js';
import { type ClaimCursor, claimBatch, promoteDue, readyQueues } from './claim.js';
import { BlockedKeys, type FlowLimits, wakeThrottled } from './flow.js';
import { deadSteps, retryDead } from './dead-letters.js';
import { expireHandlers, HandlerDirectory, type HostedHandler, registerHandlers } from './handlers.js';
import { cancellingAmong, renewLeases } from './leases.js';
import { type DueWork, dueWork, reapExpired, sweepRetention } from './maintenance.js';
import { foldCounts, readCounts } from './counts.js';
import { oldestDue, oldestDueByQueue } from './queue-lag.js';
import {
  busyJobs,
  childRunIds,
  childRuns,
  currentPayload,
  getRun,
  getRuns,
  type HistoryRow,
  historyOf,
  joinHandled,
  liveChildren,
  type ListQuery,
  listRuns,
  trippedJoins,
} from './queries.js';
import { type SettleItem, settleMany } from './settle.js';
import {
  deleteSchedule,
  dueSchedules,
  fireDueSchedules,
  listSchedules,
  type ScheduleRow,
  upsertSchedules,
} from './schedules.js';
import { type OutgoingSignal, sendSignal, wakeTimedOut } from './signals.js';
import { settleWithin } from './step-transaction.js';
import type { Settlement } from './settlements.js';
import type { ResolvedSchedule } from '../utils/schedule-spec.js';
import type {
  ClaimedJob,
  DeadRow,
  DeliveryRecord,
  NewRun,
  ReserveSlot,
  RunRow,
  SettleResult,
} from './storage.types.js';
import { type ExistingRun, submitRuns } from './submit.js';
import { type StorageContext, tablesOf } from './tables.js';
import { WorkflowConnection } from './workflow-connection.js';

export type { CancelResult, ClaimedJob, ExistingRun, HostedHandler, OutgoingSignal, ScheduleRow, SettleItem };

/**
 * The module's one door to its tables. Each method is one transaction (or one read),
 * kept in a file of its own named for what it commits; the statements they share, and
 * the lock order they all follow, are in transitions.ts.
 *
 * A provider like any other, so a unit test swaps it (`overrideProvider(WorkflowStorage)`).
 * It reaches the database through WorkflowConnection on first use, never at compile().
 */
@Injectable()
export class WorkflowStorage {
  private ctx?: StorageContext;
  private starting?: Promise<StorageContext>;

  constructor(
    private readonly connection: WorkflowConnection,
    @Inject(WORKFLOW_CONFIG) private readonly config: ResolvedWorkflowConfig,
  ) {}

  /** Connects (once), reads which handlers exist; every method waits for it. */
  ready(): Promise<StorageContext> {
    this.starting ??= (async () => {
      const db = await this.connection.ready();
      const ctx: StorageContext = {
        client: db.client,
        t: tablesOf(this.config.tablePrefix),
        now: () => this.config.clock.now(),
        handlers: new HandlerDirectory(),
        deliveryAttempts: this.config.defaults.maxAttempts,
        history: this.config.history,
        stats: { fastBatches: 0, carefulBatches: 0 },
        blockedKeys: new BlockedKeys(),
      };
      const rows = await db.client.query<Array<{ workflow: string; queue: string }>>(
        `SELECT \`workflow\`, \`queue\` FROM ${ctx.t.handlers}`,
      );
      ctx.handlers.remember(rows);
      this.ctx = ctx;
      return ctx;
    })();
    // A failed start may be tried again (the connection decides whether it can be).
    this.starting.catch(() => (this.starting = undefined));
    return this.starting;
  }

  private async c(): Promise<StorageContext> {
    return this.ctx ?? this.ready();
  }

  /** The server's max_allowed_packet in bytes, once connected: settlements and submits are sized to fit it. */
  get maxAllowedPacket(): number {
    return this.connection.database?.maxAllowedPacket ?? Number.POSITIVE_INFINITY;
  }

  /** Terminal deliveries a run of `workflow` ending now would get, as the handler cache knows them (a hint). */
  handlersFor(workflow: string): number {
    return this.ctx?.handlers.cachedFor(workflow) ?? 0;
  }

  get settleStats(): Readonly<StorageContext['stats']> {
    return this.ctx?.stats ?? { fastBatches: 0, carefulBatches: 0 };
  }

  /** Announces (and, called again, keeps alive) the @OnTerminal handlers this process hosts. */
  async registerHandlers(hosted: HostedHandler[]): Promise<void> {
    return registerHandlers(await this.c(), hosted);
  }

  /** Dead-letters the deliveries of handlers no live process hosts any more. */
  async expireHandlers(): Promise<number> {
    return expireHandlers(await this.c());
  }

  async submitRuns(
    runs: NewRun[],
    check: (existing: Map<string, ExistingRun>) => void,
    manager?: EntityManager,
  ): Promise<Set<string>> {
    const ctx = await this.c();
    return submitRuns(ctx, runs, check, manager, this.maxAllowedPacket);
  }

  async claimBatch(
    queue: string,
    limit: number,
    token: string,
    leaseMs: number,
    maxAttempts: number,
    limits?: FlowLimits,
    from?: ClaimCursor,
  ) {
    return claimBatch(await this.c(), queue, limit, token, leaseMs, maxAttempts, limits, from);
  }

  /** Rate-limited steps whose window has room again become ready. */
  async wakeThrottled(limit?: number): Promise<number> {
    return wakeThrottled(await this.c(), limit);
  }

  async readyQueues(queues: readonly string[]): Promise<Set<string>> {
    return readyQueues(await this.c(), queues);
  }

  /** Which kinds of due work a promotion pass would find (a plain read). */
  async dueWork(): Promise<DueWork> {
    return dueWork(await this.c());
  }

  async promoteDue(limit?: number): Promise<number> {
    return promoteDue(await this.c(), limit);
  }

  /** Wakes waits whose timeout has come. */
  async wakeTimedOut(limit?: number): Promise<number> {
    return wakeTimedOut(await this.c(), limit);
  }

  /** `reserve`: a slot of this process's worker that the step the signal wakes may be leased to at once. */
  async sendSignal(signal: OutgoingSignal, manager?: EntityManager, reserve?: ReserveSlot): Promise<boolean> {
    return sendSignal(await this.c(), signal, manager, reserve);
  }

  async renewLeases(
    jobs: Array<{ id: string; token: string }>,
    ms: number,
    options?: { skipLocked?: boolean },
  ): Promise<string[]> {
    return renewLeases(await this.c(), jobs, ms, options);
  }

  async cancellingAmong(runIds: string[]): Promise<string[]> {
    return cancellingAmong(await this.c(), runIds);
  }

  async settleMany(items: SettleItem[]): Promise<SettleResult[]> {
    return settleMany(await this.c(), items);
  }

  /** Whether the module runs on the application's DataSource (so a step's writes can join its settlement). */
  get sharesDataSource(): boolean {
    return this.connection.database?.client.shared ?? false;
  }

  /** Runs `work` and settles the step it decides in one transaction (step.transaction). */
  async settleWithin<T>(
    job: ClaimedJob,
    work: (manager: EntityManager) => Promise<{ value: T; settlement: Settlement; record?: DeliveryRecord }>,
  ): Promise<{ value: T; settlement: Settlement; cancelled: boolean }> {
    return settleWithin(await this.c(), job, work);
  }

  async reapExpired(limit?: number) {
    return reapExpired(await this.c(), limit);
  }

  async cancelRun(runId: string): Promise<CancelResult> {
    return cancelRun(await this.c(), runId);
  }

  /** Cancels what is below a cancelled run (see cancel.ts); how many runs it cancelled or asked to cancel. */
  async finishCascade(runId: string, seen?: (runId: string, result: CancelResult) => void): Promise<number> {
    return finishCascade(await this.c(), runId, seen);
  }

  async takeDueCascades(limit?: number): Promise<string[]> {
    return takeDueCascades(await this.c(), limit);
  }

  async busyJobs(queues: string[], now: number) {
    return busyJobs(await this.c(), queues, now);
  }

  /** The due time (runtime clock) of the oldest ready job of any queue, or null. */
  async oldestDue(): Promise<number | null> {
    return oldestDue(await this.c());
  }

  /** The due time of the oldest ready job of each of `queues` that has one. */
  async oldestDueByQueue(queues: readonly string[]): Promise<Map<string, number>> {
    return oldestDueByQueue(await this.c(), queues);
  }

  async childRuns(parentRunId: string, parentStep: number): Promise<RunRow[]> {
    return childRuns(await this.c(), parentRunId, parentStep);
  }

  async liveChildren(parentRunId: string): Promise<string[]> {
    return liveChildren(await this.c(), parentRunId);
  }

  async childRunIds(parentRunId: string, parentStep?: number): Promise<string[]> {
    return childRunIds(await this.c(), parentRunId, parentStep);
  }

  async trippedJoins(limit?: number) {
    return trippedJoins(await this.c(), limit);
  }

  async joinHandled(jobId: string, stepNumber: number): Promise<void> {
    return joinHandled(await this.c(), jobId, stepNumber);
  }

  async history(runId: string): Promise<HistoryRow[]> {
    return historyOf(await this.c(), runId);
  }

  async getRun(runId: string): Promise<RunRow | null> {
    return getRun(await this.c(), runId);
  }

  async getRuns(runIds: readonly string[]): Promise<RunRow[]> {
    return getRuns(await this.c(), runIds);
  }

  /** The current step's payload as stored (JSON text), null once the run has ended. */
  async currentPayload(runId: string): Promise<string | null> {
    return currentPayload(await this.c(), runId);
  }

  async deadSteps(filter: { workflow?: string; runId?: string; limit: number; before?: number }): Promise<DeadRow[]> {
    return deadSteps(await this.c(), filter);
  }

  async retryDead(jobId: string, stepNumber?: number): Promise<boolean> {
    return retryDead(await this.c(), jobId, stepNumber);
  }

  async upsertSchedules(schedules: ResolvedSchedule[]): Promise<void> {
    return upsertSchedules(await this.c(), schedules);
  }

  async deleteSchedule(id: string): Promise<boolean> {
    return deleteSchedule(await this.c(), id);
  }

  async listSchedules(): Promise<ScheduleRow[]> {
    return listSchedules(await this.c());
  }

  /** Schedules with a tick due by `now`. */
  async dueSchedules(now: number): Promise<number> {
    return dueSchedules(await this.c(), now);
  }

  /** Starts the runs of the ticks that have come; `priorityOf` gives a workflow's step priority. */
  async fireDueSchedules(
    priorityOf: (workflow: string) => number,
    limit?: number,
  ): Promise<{ created: number; more: boolean }> {
    const ctx = await this.c();
    return fireDueSchedules(ctx, priorityOf, this.maxAllowedPacket, limit);
  }

  async foldCounts(limit?: number): Promise<number> {
    return foldCounts(await this.c(), limit);
  }

  async readCounts() {
    return readCounts(await this.c());
  }

  async listRuns(query: ListQuery): Promise<RunRow[]> {
    return listRuns(await this.c(), query);
  }

  async sweepRetention(runsBefore: number, deadBefore: number, batch?: number) {
    return sweepRetention(await this.c(), this.config.tablePrefix, runsBefore, deadBefore, batch);
  }
}
