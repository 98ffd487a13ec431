import { newRun } from './storage/new-run.js';
import { Inject, Injectable, Logger, type OnApplicationBootstrap } from '@nestjs/common';
import { InvalidScheduleError } from './errors/invalid-schedule.error.js';
import { InputMismatchError } from './errors/input-mismatch.error.js';
import { InvalidRunIdError } from './errors/invalid-run-id.error.js';
import { InvalidRunSpecError } from './errors/invalid-run-spec.error.js';
import { PacketTooLargeError } from './errors/packet-too-large.error.js';
import { ReservedHeaderError } from './errors/reserved-header.error.js';
import { RunNotFoundError } from './errors/run-not-found.error.js';
import { UnknownWorkflowError } from './errors/unknown-workflow.error.js';
import { WaitTimeoutError } from './errors/wait-timeout.error.js';
import type { ScheduleInfo, ScheduleSpec } from './interfaces/schedule.interface.js';
import { resolveSchedule, SCHEDULE_ID_PATTERN } from './utils/schedule-spec.js';
import type {
  DeadStep,
  DeadStepFilter,
  StepRecord,
  RunCounts,
  RunFilter,
  RunOutcome,
  RunPage,
  RunSpec,
  RunStatus,
  SignalOptions,
  SubmitOptions,
  SubmitOutcome,
  WaitOptions,
} from './interfaces/run.interface.js';
import { isConnectionError } from './storage/sql-client.js';
import { type CancelResult, WorkflowStorage } from './storage/workflow.storage.js';
import { TERMINAL_STATES as TERMINAL, toOutcome, toStatus } from './run-views.js';
import { countRuns, listRuns } from './run-listing.js';
import {
  handlerOf,
  JobKind,
  type NewRun,
  parseJobId,
  publicJobId,
  type ReserveSlot,
  type RunRow,
} from './storage/storage.types.js';
import { hashJson, parseJson, serializeJson } from './utils/json.js';
import { ulid } from './utils/ulid.js';
import { range, type ResolvedWorkflowConfig, show } from './workflow.config.js';
import {
  concurrencyKeyProblem,
  LIMITS,
  RESERVED_HEADER_PREFIX,
  RUN_ID_PATTERN,
  SIGNAL_NAME_PATTERN,
  WORKFLOW_CONFIG,
  WORKFLOW_NAME_PATTERN,
} from './workflow.constants.js';
import { WorkflowRegistry } from './workflow.registry.js';
import { escapedBytes, packetBudget } from './storage/packet.js';
import { WorkflowNotifier } from './workflow.notifier.js';
import { RunLookups } from './run-lookups.js';
import { traceSubmit } from './observability/telemetry.js';

/** Submit, cancel and observe runs, from any process that imports WorkflowModule. */
@Injectable()
export class WorkflowService implements OnApplicationBootstrap {
  constructor(
    @Inject(WORKFLOW_CONFIG) private readonly config: ResolvedWorkflowConfig,
    private readonly registry: WorkflowRegistry,
    private readonly storage: WorkflowStorage,
    private readonly notifier: WorkflowNotifier,
  ) {}

  /**
   * Upserts the declared `schedules` (after the explorer has found the runners, so an
   * unknown workflow is known to be one). All are checked before any is written: one bad
   * spec fails startup with InvalidScheduleError and stores nothing. Never deletes one.
   */
  async onApplicationBootstrap(): Promise<void> {
    if (this.config.schedules.length === 0) return;
    const now = this.config.clock.now();
    const resolved = this.config.schedules.map((s) =>
      resolveSchedule(s, this.registry.submittable, this.config.maxPayloadBytes, now),
    );
    const seen = new Set<string>();
    for (const s of resolved) {
      if (seen.has(s.id)) throw new InvalidScheduleError(s.id, 'declared twice in `schedules`.');
      seen.add(s.id);
    }
    await this.storage.upsertSchedules(resolved);
  }

  /**
   * Creates or replaces a schedule, for every process. Its next tick is kept when neither
   * cron, time zone nor paused changed; otherwise it is the first tick after now.
   * InvalidScheduleError (nothing written) for a bad id, cron, time zone or an unknown workflow.
   */
  async schedule(spec: ScheduleSpec): Promise<void> {
    const resolved = resolveSchedule(
      spec,
      this.registry.submittable,
      this.config.maxPayloadBytes,
      this.config.clock.now(),
    );
    await this.storage.upsertSchedules([resolved]);
  }

  /** Removes a schedule; the runs it started stay. False if there was none. */
  async unschedule(id: string): Promise<boolean> {
    if (typeof id !== 'string' || !SCHEDULE_ID_PATTERN.test(id)) return false; // no schedule can have that id
    return this.storage.deleteSchedule(id);
  }

  /** Every stored schedule, by id, with the defaults applied. */
  async schedules(): Promise<ScheduleInfo[]> {
    const rows = await this.storage.listSchedules();
    return rows.map((r) => {
      const info: ScheduleInfo = {
        id: r.id,
        workflow: r.workflow,
        cron: r.cron,
        timeZone: r.time_zone,
        input: parseJson(r.input),
        headers: JSON.parse(r.headers),
        overlap: r.overlap,
        paused: Number(r.paused) === 1,
        nextRunAt: r.next_run_at === null ? null : new Date(Number(r.next_run_at)),
      };
      if (r.last_run_id) info.lastRunId = r.last_run_id;
      if (r.concurrency_key != null) info.concurrencyKey = r.concurrency_key;
      return info;
    });
  }

  /**
   * Starts a run at step 0 with `spec.input`. With a `runId` that already exists: the
   * same workflow and input return `newlySubmitted: false`; anything else throws
   * InputMismatchError. With `options.manager`, the run commits with the caller's
   * transaction. Every check happens before anything is written.
   */
  async submit<I>(workflow: string, spec: RunSpec<I>, options?: SubmitOptions): Promise<SubmitOutcome> {
    const [outcome] = await this.submitMany(workflow, [spec], options);
    return outcome;
  }

  /** Like submit, for many runs in one transaction: all are created, or none. */
  async submitMany<I>(workflow: string, specs: RunSpec<I>[], options?: SubmitOptions): Promise<SubmitOutcome[]> {
    // A `workflow.submit` span when an SDK records; its context is stored with the runs.
    return traceSubmit(workflow, (trace) => this.submitTraced(workflow, specs, options, trace));
  }

  private async submitTraced<I>(
    workflow: string,
    specs: RunSpec<I>[],
    options: SubmitOptions | undefined,
    trace: Record<string, string> | undefined,
  ): Promise<SubmitOutcome[]> {
    if (!this.registry.submittable.has(workflow)) {
      throw new UnknownWorkflowError(String(workflow), [...this.registry.submittable].sort());
    }
    if (!Array.isArray(specs)) throw new InvalidRunSpecError('submitMany(workflow, specs) needs an array of RunSpec.');
    const runs = specs.map((spec) => this.prepare(workflow, spec, trace));
    if (runs.length === 0) return [];

    // The same id twice in one call: identical input collapses to one run, anything else is a mismatch.
    const unique = new Map<string, NewRun>();
    for (const run of runs) {
      const prior = unique.get(run.id);
      if (!prior) unique.set(run.id, run);
      else if (prior.inputHash !== run.inputHash)
        throw new InputMismatchError(run.id, 'a different input in the same call');
    }
    await this.storage.ready();
    for (const run of unique.values()) assertFitsPacket(run, this.storage.maxAllowedPacket);
    // An existing id with another workflow or input refuses the whole call, before anything is written.
    const check = (existing: Map<string, { workflow: string; inputHash: string }>) => {
      for (const [id, run] of existing) {
        if (run.workflow !== workflow) {
          throw new InputMismatchError(id, `workflow "${run.workflow}" (this submit names "${workflow}")`);
        }
        if (run.inputHash !== unique.get(id)!.inputHash) throw new InputMismatchError(id, 'a different input');
      }
    };
    const inserted = await this.storage.submitRuns([...unique.values()], check, options?.manager);
    if (inserted.size) this.notifier.wake();
    const reported = new Set<string>();
    return runs.map((r) => {
      const fresh = inserted.has(r.id) && !reported.has(r.id);
      reported.add(r.id);
      return { runId: r.id, newlySubmitted: fresh };
    });
  }

  private prepare<I>(workflow: string, spec: RunSpec<I>, trace?: Record<string, string>): NewRun {
    if (!spec || typeof spec !== 'object')
      throw new InvalidRunSpecError('A RunSpec must be an object: { input, runId?, headers?, ... }.');
    if (!('input' in spec)) throw new InvalidRunSpecError('RunSpec.input is required (use null for "no input").');
    const runId = spec.runId ?? ulid(this.config.clock.now());
    if (typeof runId !== 'string' || !RUN_ID_PATTERN.test(runId)) throw new InvalidRunIdError(runId);
    // No prototype: a header named "__proto__" is data like any other.
    const headers: Record<string, string> = Object.create(null);
    if (spec.headers !== undefined) {
      if (!spec.headers || typeof spec.headers !== 'object' || Array.isArray(spec.headers)) {
        throw new InvalidRunSpecError('RunSpec.headers must be an object of string values.');
      }
      for (const [key, value] of Object.entries(spec.headers)) {
        if (key.startsWith(RESERVED_HEADER_PREFIX)) throw new ReservedHeaderError(key);
        if (typeof value !== 'string')
          throw new InvalidRunSpecError(`Header "${key}" must be a string, got ${typeof value}.`);
        headers[key] = value;
      }
    }
    // Reserved keys, after the check that refuses them from the caller.
    if (trace) Object.assign(headers, trace);
    const runner = this.registry.runners.get(workflow);
    const priority =
      optionalInt(spec.priority, 'priority', LIMITS.minPriority, LIMITS.maxPriority) ??
      runner?.priority ??
      this.config.defaults.priority;
    const maxAttempts = optionalInt(spec.maxAttemptsPerStep, 'maxAttemptsPerStep', 1, LIMITS.maxAttempts);
    const delayMs = optionalInt(spec.delayMs, 'delayMs', 0, LIMITS.maxDelayMs) ?? 0;
    const keyProblem = concurrencyKeyProblem(spec.concurrencyKey);
    if (keyProblem) throw new InvalidRunSpecError(`RunSpec.concurrencyKey ${keyProblem}.`);
    const max = this.config.maxPayloadBytes;
    const input = serializeJson(spec.input, 'run input', max);
    const headersJson = serializeJson(headers, 'run headers', max);
    const now = this.config.clock.now();
    return newRun({
      id: runId,
      workflow,
      input,
      inputHash: hashJson(input),
      headers: headersJson,
      priority,
      maxAttempts: maxAttempts ?? null,
      now,
      delayMs,
      concurrencyKey: spec.concurrencyKey,
    });
  }

  /**
   * Cancels a run from any process. A waiting step is removed and the run is cancelled
   * at once; a running step's worker aborts `step.signal` and settles the run cancelled.
   * False for a finished or unknown run; InvalidRunIdError for an id no run can have.
   */
  async cancel(runId: string): Promise<boolean> {
    // Refused like submit, so a caller's bug (an id from the wrong field) is not taken for an unknown run.
    if (typeof runId !== 'string' || !RUN_ID_PATTERN.test(runId)) throw new InvalidRunIdError(runId);
    const result = await this.storage.cancelRun(runId);
    this.cancelled(runId, result);
    // The descendants, each in a transaction of its own (a parent's never locks a child's rows). The
    // cancel left a durable mark of them: if this process dies on the way, maintenance finishes the walk.
    if (result) await this.storage.finishCascade(runId, (id, r) => this.cancelled(id, r));
    return result !== false;
  }

  private cancelled(runId: string, result: CancelResult): void {
    if (result === 'cancelled') {
      this.notifier.runFinished(runId);
      this.notifier.wake();
    } else if (result) {
      this.notifier.cancelRequested(runId);
    }
  }

  /** The run as it is now; null for an unknown run, InvalidRunIdError for an id no run can have. */
  async status(runId: string): Promise<RunStatus | null> {
    return (await this.lookup(runId))?.status ?? null;
  }

  private async lookup(
    runId: string,
    read: (runId: string) => Promise<RunRow | null> = (id) => this.storage.getRun(id),
  ): Promise<{ status: RunStatus; ending: number } | null> {
    if (typeof runId !== 'string' || !RUN_ID_PATTERN.test(runId)) throw new InvalidRunIdError(runId);
    const row = await read(runId);
    return row ? { status: toStatus(row), ending: Number(row.ending) } : null;
  }

  /** The polls of every waitForOutcome in this process, a few statements per tick. */
  private readonly waits = new RunLookups((ids) => this.storage.getRuns(ids));

  private readonly waitLogger = new Logger(WorkflowService.name);
  /** True from a wait's first failed poll to the next good one: an outage is logged once, not per poll and waiter. */
  private waitOutage = false;

  /**
   * Resolves with the run's outcome once it is terminal: when its settlement has
   * committed, before any `@OnTerminal` handler has run. Woken at once by a local
   * settlement; otherwise polls. A poll that cannot reach the database is retried until the
   * timeout: the run goes on without us and will still end. Rejects with
   * WaitTimeoutError after `timeoutMs` (the run goes on), RunNotFoundError for an
   * unknown run, and with any other database error as it is.
   */
  async waitForOutcome(runId: string, options?: WaitOptions): Promise<RunOutcome> {
    const timeoutMs = options?.timeoutMs;
    if (timeoutMs !== undefined && (typeof timeoutMs !== 'number' || !(timeoutMs >= 0))) {
      throw new InvalidRunSpecError(`waitForOutcome timeoutMs must be a number >= 0, got ${String(timeoutMs)}.`);
    }
    if (typeof runId !== 'string' || !RUN_ID_PATTERN.test(runId)) throw new InvalidRunIdError(runId);
    const deadline = timeoutMs === undefined ? Infinity : Date.now() + timeoutMs;
    const poll = Math.min(1000, Math.max(20, this.config.worker ? this.config.worker.pollIntervalMs : 250));
    let woken: (() => void) | undefined;
    const off = this.notifier.onRunFinished(runId, () => woken?.());
    let delay = poll;
    try {
      for (;;) {
        let found: Awaited<ReturnType<WorkflowService['lookup']>> | undefined;
        try {
          found = await this.lookup(runId, (id) => this.waits.get(id));
          delay = poll;
          if (this.waitOutage) {
            this.waitOutage = false;
            this.waitLogger.debug('waitForOutcome: the database answers again.');
          }
        } catch (err) {
          if (!isConnectionError(err)) throw err;
          if (!this.waitOutage) {
            this.waitOutage = true;
            const what = (err as { code?: string }).code ?? (err as Error).message;
            this.waitLogger.warn(
              `waitForOutcome: database unreachable (${what}); waits keep polling until their timeout.`,
            );
          }
          // Gentler on a server that is coming back, still quick to notice it is up.
          delay = Math.min(1000, delay * 2);
        }
        if (found === null) throw new RunNotFoundError(runId);
        if (found && TERMINAL.has(found.status.state)) return toOutcome(found.status, found.ending);
        const left = deadline - Date.now();
        if (left <= 0) throw new WaitTimeoutError(runId, timeoutMs!);
        // On a tick shared by every waiter (a multiple of the delay), so their polls share a statement.
        const untilTick = delay - (Date.now() % delay);
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, Math.min(untilTick, left));
          woken = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        woken = undefined;
      }
    } finally {
      off();
    }
  }

  /**
   * Runs newest first (ties by run id, descending), `limit` per page (50 by default, at
   * most 500), every filter given holding. Pass `nextCursor` back as `cursor` for the next
   * page; a cursor stays valid while runs are added and finish.
   */
  listRuns(filter?: RunFilter): Promise<RunPage> {
    return listRuns(this.storage, filter);
  }

  /**
   * Runs per workflow and state, for every workflow with runs in the database or known to
   * this process, by name. Read from totals the settlements keep: the cost does not grow
   * with finished runs.
   */
  countRuns(): Promise<RunCounts[]> {
    return countRuns(this.storage, this.registry.submittable);
  }

  /**
   * Every delivery of the run's steps so far, oldest first (with `history` on, the
   * default). Empty for an unknown run; InvalidRunIdError for an id no run can have.
   */
  async history(runId: string): Promise<StepRecord[]> {
    if (typeof runId !== 'string' || !RUN_ID_PATTERN.test(runId)) throw new InvalidRunIdError(runId);
    const rows = await this.storage.history(runId);
    return rows.map((r) => {
      const record: StepRecord = {
        stepNumber: Number(r.step_number),
        attempt: Number(r.attempt),
        startedAt: new Date(Number(r.started_at)),
        finishedAt: new Date(Number(r.finished_at)),
        outcome: r.outcome,
        worker: r.worker,
      };
      if (r.error != null) record.error = r.error;
      return record;
    });
  }

  /** Dead letters, newest first: steps (and terminal deliveries) that exhausted their attempts or failed permanently. */
  async deadSteps(filter: DeadStepFilter = {}): Promise<DeadStep[]> {
    const limit = optionalInt(filter.limit, 'limit', 1) ?? 100;
    if (filter.before !== undefined && !(filter.before instanceof Date && Number.isFinite(filter.before.getTime()))) {
      throw new InvalidRunSpecError('deadSteps: `before` must be a valid Date.');
    }
    if (
      filter.workflow !== undefined &&
      (typeof filter.workflow !== 'string' || !WORKFLOW_NAME_PATTERN.test(filter.workflow))
    ) {
      return []; // no workflow can have that name
    }
    if (filter.runId !== undefined && (typeof filter.runId !== 'string' || !RUN_ID_PATTERN.test(filter.runId)))
      throw new InvalidRunIdError(filter.runId);
    const rows = await this.storage.deadSteps({
      workflow: filter.workflow,
      runId: filter.runId,
      limit: Math.min(limit, 10_000),
      before: filter.before ? filter.before.getTime() : undefined,
    });
    return rows.map((r) => ({
      jobId: publicJobId(r.job_id, Number(r.kind), r.step_number),
      runId: r.run_id,
      workflow: r.workflow,
      stepNumber: Number(r.step_number),
      attempts: Number(r.attempts),
      lastError: r.last_error,
      deadAt: new Date(Number(r.dead_at)),
      ...(Number(r.kind) === JobKind.Terminal ? { handler: handlerOf(r.queue) } : {}),
    }));
  }

  /**
   * Sends the signal `name` to a run. A run waiting for it takes it at once (its next step
   * becomes claimable in this transaction); otherwise it is kept in the run's mailbox for
   * the next wait of that name (oldest first). False, and nothing stored, for an unknown or
   * finished run. A repeated `signalId` for one run stores nothing more and returns true,
   * also once the run has ended.
   * With `manager`, the signal is stored if and only if the caller's transaction commits.
   */
  async signal(runId: string, name: string, data?: unknown, options: SignalOptions = {}): Promise<boolean> {
    if (typeof runId !== 'string' || !RUN_ID_PATTERN.test(runId)) throw new InvalidRunIdError(runId);
    if (typeof name !== 'string' || !SIGNAL_NAME_PATTERN.test(name)) {
      throw new InvalidRunSpecError(`signal name ${JSON.stringify(name)} must match ${SIGNAL_NAME_PATTERN}.`);
    }
    const signalId = options.signalId ?? ulid(this.config.clock.now());
    if (typeof signalId !== 'string' || !RUN_ID_PATTERN.test(signalId)) {
      throw new InvalidRunSpecError(`signalId ${JSON.stringify(signalId)} must match ${RUN_ID_PATTERN}.`);
    }
    const json = serializeJson(data === undefined ? null : data, 'signal data', this.config.maxPayloadBytes);
    await this.storage.ready();
    const budget = packetBudget(this.storage.maxAllowedPacket);
    if (escapedBytes(json, true) > budget)
      throw new PacketTooLargeError('signal data', escapedBytes(json, true), budget);
    // Outside a caller's transaction the step may be leased to a free slot of this process's
    // worker in the signal's own transaction; otherwise the wake-up is real now (inside a
    // caller's transaction, the next poll finds it).
    let handed = false;
    const reserve: ReserveSlot = (queue, keyed) => {
      const hand = this.notifier.reserveSlot(queue, keyed);
      return hand && { ...hand, take: (job) => ((handed = true), hand.take(job)) };
    };
    const sent = await this.storage.sendSignal(
      { runId, name, data: json, signalId, sentAt: this.config.clock.now() },
      options.manager,
      options.manager ? undefined : reserve,
    );
    if (sent && !options.manager && !handed) this.notifier.wake();
    return sent;
  }

  /**
   * Re-drives one dead letter. For a step, its failed run becomes active again at that
   * step with fresh attempts, in the same transaction. False if the dead letter is
   * gone or its run has moved on.
   */
  async retryDead(jobId: string): Promise<boolean> {
    const id = parseJobId(jobId);
    if (!id) return false;
    const ok = await this.storage.retryDead(id.rowId, id.stepNumber);
    if (ok) this.notifier.wake();
    return ok;
  }
}

function optionalInt(value: unknown, name: string, min: number, max = Number.MAX_SAFE_INTEGER): number | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) {
    throw new InvalidRunSpecError(`${name} must be an integer ${range(min, max)}, got ${show(value)}.`);
  }
  return value;
}

/**
 * Refuses a run whose step 0 row (input and headers, escaped on the client) could not
 * go to the server in one packet: the server would drop the connection, which looks
 * like an outage. The O(1) bound first; only a large input is measured.
 */
function assertFitsPacket(run: NewRun, maxAllowedPacket: number): void {
  const budget = packetBudget(maxAllowedPacket);
  const size = (exact: boolean) => escapedBytes(run.firstJob.payload, exact) + 2 * escapedBytes(run.headers, exact);
  if (size(false) <= budget) return;
  const bytes = size(true);
  if (bytes > budget) throw new PacketTooLargeError(`run input (with its headers) of run ${run.id}`, bytes, budget);
}
