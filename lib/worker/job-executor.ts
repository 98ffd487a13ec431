import { newRun } from '../storage/new-run.js';
import { Inject, Injectable, Logger } from '@nestjs/common';
import { StepError } from '../outcomes/step-error.js';
import type { StepOutcome } from '../outcomes/step-outcome.js';
import type { ReceivedSignal, Step } from '../interfaces/step.interface.js';
import type { ChildSpec, RunOutcome } from '../interfaces/run.interface.js';
import { createHash } from 'node:crypto';
import { hostname } from 'node:os';
import { outcomeOfRow } from '../run-views.js';
import { outcomeOf } from '../observability/outcome.js';
import { WorkflowStorage } from '../storage/workflow.storage.js';
import {
  type ClaimedJob,
  countedAttempts,
  JobKind,
  NEVER,
  type NewJob,
  type NewRun,
  publicJobId,
  type SettleResult,
  type DeliveryRecord,
} from '../storage/storage.types.js';
import { endsRun, Settle, type Settlement } from '../storage/settlements.js';
import type { EntityManager } from 'typeorm';
import { LeaseLostError } from '../errors/lease-lost.error.js';
import { WorkflowConfigError } from '../errors/workflow-config.error.js';
import { WorkflowError } from '../errors/workflow.error.js';
import { MESSAGES } from '../workflow.messages.js';
import { CommitUnknownError, isConnectionError } from '../storage/sql-client.js';
import { hashJson, serializeJson } from '../utils/json.js';
import type { ResolvedWorkflowConfig } from '../workflow.config.js';
import {
  concurrencyKeyProblem,
  LIMITS,
  RESERVED_HEADER_PREFIX,
  RUN_ID_PATTERN,
  SIGNAL_NAME_PATTERN,
  WORKFLOW_CONFIG,
} from '../workflow.constants.js';
import { WorkflowRegistry, type RunnerBinding } from '../workflow.registry.js';
import { backoffDelay, type BackoffPolicy } from './backoff.js';
import { Execution } from './execution.js';
import { packetBudget, settlementSize } from '../storage/packet.js';
import { SettleBatcher } from './settle-batcher.js';
import { WorkflowNotifier } from '../workflow.notifier.js';
import {
  childTraceHeaders,
  deliveryEnded,
  deliverySettled,
  observeDelivery,
  withContext,
} from '../observability/telemetry.js';
import { visibleHeaders } from '../observability/trace-context.js';

const OUTCOME_KINDS = new Set(['continue', 'wait', 'spawn', 'succeed', 'fail', 'cancel']);
/** Most children one step may spawn. */
const MAX_CHILDREN = 1000;

/**
 * Runs one claimed job (a step through its runner, or a terminal delivery through its
 * handler) and turns what happened into exactly one settlement. Every call into user
 * code is wrapped: a throw becomes a stored attempt, never an unhandled rejection.
 */
@Injectable()
export class JobExecutor {
  private readonly logger = new Logger(JobExecutor.name);

  constructor(
    @Inject(WORKFLOW_CONFIG) private readonly config: ResolvedWorkflowConfig,
    private readonly registry: WorkflowRegistry,
    private readonly storage: WorkflowStorage,
    private readonly batcher: SettleBatcher,
    private readonly notifier: WorkflowNotifier,
  ) {}

  private get leaseMs(): number {
    return this.config.worker ? this.config.worker.leaseMs : 30_000;
  }

  private now(): number {
    return this.config.clock.now();
  }

  async execute(exec: Execution): Promise<void> {
    exec.begunAt = this.now();
    try {
      // The delivery's span (when an SDK records): the runner or handler runs inside it.
      const traced = observeDelivery(exec);
      if (traced) await withContext(traced, () => this.dispatch(exec));
      else await this.dispatch(exec);
    } catch (err) {
      this.logger.error(`Unexpected error around job ${exec.job.id}: ${(err as Error)?.stack ?? err}`);
    } finally {
      exec.settled();
      // A delivery the runtime took over ends when its takeOver() does.
      if (!exec.abortReason) deliveryEnded(exec);
      // Only here has the runner's promise settled: a runner the runtime took the job
      // from held its slot until now.
      exec.runnerReturned();
    }
  }

  private dispatch(exec: Execution): Promise<void> {
    return exec.job.kind === JobKind.Step ? this.runStep(exec) : this.deliver(exec);
  }

  /** The runtime takes a job from its runner (cancel, timeout, shutdown, lost lease) and settles it itself. */
  async takeOver(
    exec: Execution,
    reason: 'cancelled' | 'timeout' | 'shutdown' | 'lease-lost',
    detail?: string,
  ): Promise<void> {
    if (!exec.takeOver(reason, detail)) return;
    const job = exec.job;
    switch (reason) {
      case 'cancelled':
        await this.settle(exec, Settle.observeCancel());
        break;
      case 'timeout': {
        const binding = this.registry.runners.get(exec.workflow);
        await this.settle(exec, this.failure(job, new Error(detail ?? 'step timed out'), binding?.backoff));
        break;
      }
      case 'shutdown':
        await this.settle(exec, Settle.release());
        break;
      case 'lease-lost':
        this.logger.warn(
          `${this.where(exec)}: lease lost (another worker took it over); this delivery's outcome is discarded.`,
        );
        break;
    }
    exec.settled();
    deliveryEnded(exec);
  }

  private async runStep(exec: Execution): Promise<void> {
    const job = exec.job;
    const binding = this.registry.runners.get(job.queue);
    if (!binding) {
      // Only hosted queues are claimed, so this is a tampered or foreign row.
      await this.own(exec, () => this.deadNow(exec, `no @StepRunner('${job.queue}') in this process`));
      return;
    }
    let payload: unknown;
    let headers: Readonly<Record<string, string>>;
    let received: ReceivedSignal | undefined;
    try {
      payload = JSON.parse(job.payload);
      headers = job.parsedHeaders ??= Object.freeze(visibleHeaders(job.headers));
      if (job.received) received = toReceived(JSON.parse(job.received));
    } catch (err) {
      await this.own(exec, () =>
        this.deadNow(exec, `stored payload or headers are not valid JSON: ${(err as Error).message}`),
      );
      return;
    }
    const step: Step = {
      runId: job.runId,
      workflow: job.queue,
      stepNumber: job.stepNumber,
      payload,
      headers,
      jobId: publicJobId(job.id, job.kind, job.stepNumber),
      attempts: job.attempts,
      get signal() {
        return exec.signal;
      },
      extendLease: (ms: number) => this.extendLease(exec, ms),
      transaction: (work) => this.transaction(exec, binding, work),
    };
    if (received) Object.defineProperty(step, 'received', { value: received, enumerable: true });
    if (binding.timeoutMs) {
      exec.timer = setTimeout(
        () => void this.takeOver(exec, 'timeout', `step timed out after ${binding.timeoutMs} ms`),
        binding.timeoutMs,
      );
    }
    let outcome: StepOutcome | undefined;
    let thrown: unknown;
    let threw = false;
    try {
      // The step after a spawn: every child has ended (the last one made it claimable).
      if (job.childrenOpen === 0) {
        const rows = await this.storage.childRuns(job.runId, job.stepNumber - 1);
        Object.defineProperty(step, 'children', { value: Object.freeze(rows.map(outcomeOfRow)), enumerable: true });
      }
      const runner = await binding.resolve(step);
      outcome = await runner.runStep(step);
    } catch (err) {
      threw = true;
      thrown = err;
    }
    if (exec.transaction === 'settled') {
      if (threw) {
        this.logger.warn(
          `${this.where(exec)}: threw after its step.transaction() committed; the committed outcome stands: ${errorText(thrown)}`,
        );
      } else if (outcome !== exec.committedOutcome) {
        this.logger.warn(
          `${this.where(exec)}: returned an outcome other than the one its step.transaction() committed; the committed one stands.`,
        );
      }
      return;
    }
    if (!exec.takeOver('runner') && !(exec.transaction && exec.ownedByRunner)) {
      this.logger.debug?.(`${this.where(exec)}: outcome discarded (${exec.abortReason}).`);
      return;
    }
    if (threw) {
      this.logFailure(exec, binding.label, thrown);
      await this.settle(exec, this.failure(job, thrown, binding.backoff));
    } else {
      await this.settle(exec, this.toSettlement(exec, binding, outcome));
    }
  }

  /**
   * step.transaction(work): `work`'s writes and the settlement of the outcome it returns
   * commit together (storage/step-transaction.ts). The runner returns that outcome; the
   * step is settled already, so runStep writes nothing more.
   */
  private async transaction(
    exec: Execution,
    binding: RunnerBinding,
    work: (manager: EntityManager) => Promise<StepOutcome>,
  ): Promise<StepOutcome> {
    const jobId = publicJobId(exec.job.id, exec.job.kind, exec.job.stepNumber);
    if (typeof work !== 'function')
      throw new TypeError('step.transaction(work) needs a function (manager) => Promise<StepOutcome>');
    if (!this.storage.sharesDataSource) throw new WorkflowConfigError(MESSAGES.transactionNeedsDataSource);
    if (exec.transaction) throw new WorkflowError(MESSAGES.transactionTwice(jobId));
    if (exec.owned) throw new LeaseLostError(jobId, `the runtime took the step from its runner: ${exec.abortReason}`);
    exec.transaction = 'open';
    let settlement: Settlement;
    let outcome: StepOutcome;
    let cancelled: boolean;
    try {
      ({
        value: outcome,
        settlement,
        cancelled,
      } = await this.storage.settleWithin(exec.job, async (manager) => {
        const value = await work(manager);
        const decided = this.toSettlement(exec, binding, value);
        // Not storable: nothing of the step commits, and it fails permanently as a throw would.
        if (decided.type === 'deadLetter') throw StepError.permanent(decided.error);
        // From here on a cancel, timeout or shutdown in this process no longer takes the step: it commits or fails here.
        if (!exec.takeOver('runner'))
          throw new LeaseLostError(jobId, `the runtime took the step from its runner: ${exec.abortReason}`);
        exec.transaction = 'taken';
        return { value, settlement: decided, record: this.recordOf(exec, decided) };
      }));
    } catch (err) {
      exec.transaction = exec.ownedByRunner ? 'failed' : undefined;
      throw err;
    }
    if (cancelled) {
      // Rolled back: the run was cancelled while the step ran. The cancel is settled on its own.
      exec.transaction = 'settled';
      await this.settle(exec, Settle.observeCancel());
      throw new LeaseLostError(jobId, `run ${exec.job.runId} was cancelled while the step ran`);
    }
    exec.transaction = 'settled';
    exec.committedOutcome = outcome;
    if (!inPlace(settlement)) exec.releaseSlot();
    this.settled(exec, settlement, 'settled');
    return outcome;
  }

  private async deliver(exec: Execution): Promise<void> {
    const job = exec.job;
    const handler = this.registry.handlers.get(job.queue);
    if (!handler) {
      await this.own(exec, () => this.deadNow(exec, `no @OnTerminal handler for queue "${job.queue}" in this process`));
      return;
    }
    let outcome: RunOutcome;
    try {
      const raw = JSON.parse(job.payload);
      outcome = {
        ...raw,
        headers: visibleHeaders(job.headers),
        submittedAt: new Date(raw.submittedAt),
        finishedAt: new Date(raw.finishedAt),
        // Deliveries written before endings were counted are all of a first ending.
        ending: raw.ending ?? 1,
      };
    } catch (err) {
      await this.own(exec, () => this.deadNow(exec, `stored outcome is not valid JSON: ${(err as Error).message}`));
      return;
    }
    try {
      await handler.invoke(outcome);
    } catch (err) {
      if (!exec.takeOver('runner')) return;
      this.logFailure(exec, handler.label, err);
      await this.settle(exec, this.failure(job, err, this.config.defaults.backoff));
      return;
    }
    if (exec.takeOver('runner')) await this.settle(exec, Settle.acknowledge());
  }

  private async own(exec: Execution, fn: () => Promise<void>): Promise<void> {
    if (exec.takeOver('runner')) await fn();
  }

  private async deadNow(exec: Execution, error: string): Promise<void> {
    this.logger.error(`${this.where(exec)}: ${error}; dead-lettered.`);
    await this.settle(exec, Settle.deadLetter(error));
  }

  /** Maps what the runner returned to a settlement; anything that is not a valid StepOutcome fails the step permanently. */
  private toSettlement(exec: Execution, binding: RunnerBinding, outcome: StepOutcome | undefined): Settlement {
    const o = outcome as Record<string, any> | undefined;
    if (!o || typeof o !== 'object' || !OUTCOME_KINDS.has(o.kind)) {
      const error =
        `${binding.label} returned ${describe(outcome)}, which is not a StepOutcome. ` +
        'Return StepOutcome.continue(payload), continueAfter(payload, ms), waitForSignal(name, payload), succeed(result), fail(reason) or cancel(reason).';
      this.logger.error(`${this.where(exec)}: ${error}`);
      return Settle.deadLetter(error);
    }
    const max = this.config.maxPayloadBytes;
    try {
      const settlement = this.verdict(exec, o, max);
      const tooBig = this.overPacket(exec, settlement);
      if (!tooBig) return settlement;
      const error = `${binding.label} returned a ${o.kind} outcome too large to store: ${tooBig}`;
      this.logger.error(`${this.where(exec)}: ${error}`);
      return Settle.deadLetter(error);
    } catch (err) {
      const error = `${binding.label} returned an invalid ${o.kind} outcome: ${(err as Error).message}`;
      this.logger.error(`${this.where(exec)}: ${error}`);
      return Settle.deadLetter(error);
    }
  }

  /** The settlement a well-formed outcome asks for; throws, naming the limit, for one that cannot be stored. */
  private verdict(exec: Execution, o: Record<string, any>, max: number): Settlement {
    const job = exec.job;
    switch (o.kind) {
      case 'continue': {
        const raw = o.delayMs ?? 0;
        if (typeof raw !== 'number' || !(raw >= 0 && raw <= LIMITS.maxDelayMs)) {
          throw new Error(
            `continueAfter(payload, delayMs) needs delayMs from 0 to ${LIMITS.maxDelayMs} ms (LIMITS.maxDelayMs, 10 years), got ${describe(raw)}`,
          );
        }
        const delay = Math.round(raw);
        const token = delay === 0 ? exec.inPlaceToken() : undefined;
        return Settle.continueWith({
          ...successorOf(job, serializeJson(o.payload, `payload returned by step ${job.stepNumber}`, max)),
          runAt: this.now() + delay,
          scheduled: delay > 0,
          leaseToken: token,
          leaseMs: token ? this.leaseMs : undefined,
        });
      }
      case 'wait': {
        if (typeof o.signal !== 'string' || !SIGNAL_NAME_PATTERN.test(o.signal)) {
          throw new Error(
            `waitForSignal(name, payload) needs a name matching ${SIGNAL_NAME_PATTERN}, got ${describe(o.signal)}`,
          );
        }
        const raw = o.timeoutMs;
        if (raw !== undefined && (typeof raw !== 'number' || !(raw >= 0 && raw <= LIMITS.maxDelayMs))) {
          throw new Error(
            `waitForSignal(name, payload, { timeoutMs }) needs timeoutMs from 0 to ${LIMITS.maxDelayMs} ms (LIMITS.maxDelayMs), got ${describe(raw)}`,
          );
        }
        return Settle.waitFor({
          ...successorOf(job, serializeJson(o.payload, `payload returned by step ${job.stepNumber}`, max)),
          runAt: raw === undefined ? NEVER : this.now() + Math.round(raw),
          waitFor: o.signal,
        });
      }
      case 'spawn': {
        if (!Array.isArray(o.children))
          throw new Error(`spawn(children, payload) needs an array of ChildSpec, got ${describe(o.children)}`);
        if (o.children.length > MAX_CHILDREN) {
          throw new Error(`spawn: ${o.children.length} children, over the limit of ${MAX_CHILDREN} per step`);
        }
        const children = o.children.map((c: unknown, i: number) => this.childRun(job, c, i, max));
        return Settle.spawn(
          {
            ...successorOf(job, serializeJson(o.payload, `payload returned by step ${job.stepNumber}`, max)),
            runAt: NEVER,
            childrenOpen: children.length,
            failFast: o.failFast === true,
          },
          children,
        );
      }
      case 'succeed':
        return Settle.finish('succeeded', {
          result: o.result === undefined ? undefined : serializeJson(o.result, 'run result', max),
        });
      default: {
        const reason = String(o.reason ?? '');
        const bytes = textBytes(reason);
        if (bytes > LIMITS.maxReasonBytes) {
          throw new Error(
            `${o.kind}(reason) got a reason of ${bytes} bytes, over the ${LIMITS.maxReasonBytes}-byte limit (LIMITS.maxReasonBytes); ` +
              `it began: ${JSON.stringify(reason.slice(0, 200))}`,
          );
        }
        return Settle.finish(o.kind === 'fail' ? 'failed' : 'cancelled', { error: reason });
      }
    }
  }

  /**
   * Why the settlement's statements cannot fit the server's max_allowed_packet, or
   * undefined. A refused packet looks like an outage (the connection drops), so the step
   * would run again at every lease expiry; failing it here, permanently, says what is wrong.
   */
  private overPacket(exec: Execution, s: Settlement): string | undefined {
    const storage = this.storage;
    if (storage.maxAllowedPacket === Number.POSITIVE_INFINITY) return undefined;
    const budget = packetBudget(storage.maxAllowedPacket);
    const handlers = Math.max(storage.handlersFor(exec.workflow), this.registry.queuesFor(exec.workflow).length);
    // The O(1) bound first: only a settlement that could be near the packet is measured.
    if (settlementSize(exec.job, s, handlers, false).bytes <= budget) return undefined;
    const { bytes, copies } = settlementSize(exec.job, s, handlers, true);
    if (bytes <= budget) return undefined;
    const what =
      s.type === 'continue'
        ? "the next step's payload takes"
        : `the run's result and error are written ${copies} times (the run and ${copies - 1} @OnTerminal deliveries), taking`;
    return (
      `${what} about ${bytes} bytes after escaping, over the server's max_allowed_packet ` +
      `(${storage.maxAllowedPacket} bytes, ${budget} usable). Store large data elsewhere and return a reference, or raise max_allowed_packet.`
    );
  }

  /** One ChildSpec as the run it starts: validated like a submit, its id derived unless given. */
  private childRun(parent: ClaimedJob, spec: unknown, index: number, max: number): NewRun {
    const c = spec as ChildSpec;
    const where = `spawn: child ${index}`;
    if (!c || typeof c !== 'object') throw new Error(`${where} is not a ChildSpec`);
    if (!this.registry.submittable.has(c.workflow)) {
      throw new Error(
        `${where} names workflow ${JSON.stringify(c.workflow) ?? describe(c.workflow)}, which this process does not know (known: ${[...this.registry.submittable].sort().join(', ')})`,
      );
    }
    const runId = c.runId ?? childRunId(parent.runId, parent.stepNumber, index);
    if (typeof runId !== 'string' || !RUN_ID_PATTERN.test(runId))
      throw new Error(`${where} has an invalid runId ${describe(runId)}`);
    const headers: Record<string, string> = Object.assign(Object.create(null), JSON.parse(parent.headers));
    for (const [key, value] of Object.entries(c.headers ?? {})) {
      if (key.startsWith(RESERVED_HEADER_PREFIX)) throw new Error(`${where} sets the reserved header "${key}"`);
      if (typeof value !== 'string') throw new Error(`${where}: header "${key}" must be a string`);
      headers[key] = value;
    }
    // The child's spans belong to the trace of the step that spawned it.
    Object.assign(headers, childTraceHeaders(parent));
    const runner = this.registry.runners.get(c.workflow);
    const priority = c.priority ?? runner?.priority ?? this.config.defaults.priority;
    if (!Number.isSafeInteger(priority) || Math.abs(priority) > LIMITS.maxPriority) {
      throw new Error(`${where}: priority must be an integer within ±${LIMITS.maxPriority}, got ${describe(priority)}`);
    }
    const keyProblem = concurrencyKeyProblem(c.concurrencyKey);
    if (keyProblem) throw new Error(`${where}: concurrencyKey ${keyProblem}`);
    const input = serializeJson(c.input === undefined ? null : c.input, `${where} input`, max);
    const headersJson = serializeJson(headers, `${where} headers`, max);
    return newRun({
      id: runId,
      workflow: c.workflow,
      input,
      inputHash: hashJson(input),
      headers: headersJson,
      priority,
      maxAttempts: null,
      now: this.now(),
      parent: { runId: parent.runId, step: parent.stepNumber, index },
      concurrencyKey: c.concurrencyKey,
    });
  }

  private failure(job: ClaimedJob, err: unknown, policy: BackoffPolicy | undefined): Settlement {
    const text = errorText(err);
    const permanent = err instanceof StepError && err.kind === 'permanent';
    if (permanent || countedAttempts(job) >= job.maxAttempts) {
      // Room for the "gave up" note, so the run's error stays within the limit too.
      const reason = err instanceof Error ? truncated(String(err.message), LIMITS.maxReasonBytes - 100) : text;
      return Settle.deadLetter(
        text,
        permanent ? reason : `${reason} (gave up after ${countedAttempts(job)} of ${job.maxAttempts} attempts)`,
      );
    }
    const asked = err instanceof StepError ? err.retryAfterMs : undefined;
    const valid = typeof asked === 'number' && asked >= 0 && asked <= LIMITS.maxDelayMs;
    if (asked !== undefined && !valid) {
      this.logger.warn(
        `StepError.transient retryAfterMs ${describe(asked)} is not 0..${LIMITS.maxDelayMs} ms; retrying after the backoff instead.`,
      );
    }
    // A provider's Retry-After wins over the backoff.
    const delay = valid ? Math.round(asked) : backoffDelay(policy ?? this.config.defaults.backoff, job.attempts);
    return Settle.retryAt(this.now() + delay, text);
  }

  /**
   * Commits a settlement, retrying while the database is unreachable. Giving up is safe:
   * the job stays leased, the lease expires and another delivery runs it.
   */
  private async settle(exec: Execution, settlement: Settlement): Promise<void> {
    const record = this.recordOf(exec, settlement);
    // The step has run: its slot serves other work while the settlement commits. A
    // successor leased to this worker waits for a slot like any claimed job (the worker
    // runs those first), so the commit is not dead time on the slot.
    exec.releaseSlot();
    exec.leaving = settlement.type !== 'continue' || !settlement.next.leaseToken;
    const started = Date.now();
    // Set once a try failed with its COMMIT possibly applied: a later 'lost' may be our own write.
    let unanswered = false;
    for (let attempt = 1; ; attempt++) {
      try {
        let result = await this.batcher.settle(exec.job, settlement, record);
        if (result === 'lost' && unanswered) result = await this.settledEarlier(exec, settlement);
        if (result === 'lost') {
          this.logger.warn(
            `${this.where(exec)}: lease lost before settling; outcome discarded (another delivery owns it).`,
          );
          return;
        }
        this.settled(exec, settlement, result);
        return;
      } catch (err) {
        if (err instanceof CommitUnknownError) unanswered = true;
        if (!isConnectionError(err) || Date.now() - started > this.leaseMs) {
          this.logger.error(
            `${this.where(exec)}: could not settle (${(err as Error).message}); the lease will expire and the job run again.`,
          );
          return;
        }
        this.logger.warn(
          `${this.where(exec)}: database unreachable while settling (${(err as Error).message}); retrying.`,
        );
        await new Promise((r) => setTimeout(r, Math.min(2000, 100 * 2 ** attempt)));
      }
    }
  }

  /**
   * After a settlement whose COMMIT went unanswered, its retry finds the lease gone. A
   * successor leased to this worker is recognized by its token (and then run here, or its
   * lease would expire and spend an attempt); anything else cannot be told from a lost
   * lease and is taken as applied, which only decides the local wake-ups that follow.
   */
  private async settledEarlier(exec: Execution, s: Settlement): Promise<'settled' | 'lost'> {
    if (s.type !== 'continue' || !s.next.leaseToken) return 'settled';
    const storage = this.storage;
    const lost = await storage.renewLeases([{ id: s.next.id, token: s.next.leaseToken }], this.leaseMs);
    return lost.length ? 'lost' : 'settled';
  }

  /** The delivery's history row, with history on: how it ended, in StepRecord's words. */
  private recordOf(exec: Execution, s: Settlement): DeliveryRecord | undefined {
    if (!this.config.history || exec.job.kind !== JobKind.Step) return undefined;
    const error = s.type === 'retry' || s.type === 'deadLetter' ? s.error : undefined;
    return {
      // A job handed back before its runner was called (claimed ahead, at shutdown) took no time.
      startedAt: exec.begunAt || this.now(),
      // The same words as the spans and metrics (a retried timeout is 'timeout', one that gave up 'dead').
      outcome: outcomeOf(s, 'settled', exec.abortReason),
      ...(error !== undefined ? { error } : {}),
      worker: WORKER_ID,
    };
  }

  /** After a settlement committed: the successor leased to this worker runs in this slot; anything else wakes whom it concerns. */
  private settled(exec: Execution, settlement: Settlement, result: SettleResult): void {
    deliverySettled(exec, settlement, result);
    if (result === 'settled' && inPlace(settlement)) {
      const n = settlement.next;
      exec.next = {
        id: n.id,
        queue: n.queue,
        kind: n.kind,
        runId: n.runId,
        stepNumber: n.stepNumber,
        attempts: 1,
        handbacks: 0,
        maxAttempts: n.maxAttempts ?? exec.job.maxAttempts,
        priority: n.priority,
        payload: n.payload,
        headers: n.headers,
        token: n.leaseToken!,
        parsedHeaders: n.headers === exec.job.headers ? exec.job.parsedHeaders : undefined,
        // It holds its predecessor's key slot: its settlement frees it.
        ...(exec.job.keySlot !== undefined ? { keySlot: exec.job.keySlot } : {}),
      };
      return;
    }
    this.afterSettle(exec, settlement, result === 'cancelled');
  }

  private afterSettle(exec: Execution, s: Settlement, cancelled: boolean): void {
    // A held slot of a key was freed: a step of that key waiting for it may be ready now.
    if (exec.job.keySlot !== undefined) this.notifier.wake();
    const ended = cancelled || endsRun(s);
    if (exec.job.kind === JobKind.Step && ended) {
      this.notifier.runFinished(exec.job.runId);
      if (this.registry.queuesFor(exec.workflow).length) this.notifier.wake();
    }
    if (s.type === 'continue' && !cancelled) {
      if (s.next.scheduled) this.notifier.dueIn(s.next.runAt - this.now());
      else this.notifier.wake();
    }
    if (s.type === 'spawn' && !cancelled) this.notifier.wake(); // the children are claimable now
    if (s.type === 'wait' && !cancelled) {
      // A signal already in the mailbox woke it in the settlement; else its timeout, if any, is a due time.
      this.notifier.wake();
      if (s.next.runAt < NEVER) this.notifier.dueIn(s.next.runAt - this.now());
    }
    if (s.type === 'retry') this.notifier.dueIn(s.runAt - this.now());
    if (s.type === 'release') this.notifier.wake();
  }

  private async extendLease(exec: Execution, ms: number): Promise<void> {
    if (!Number.isFinite(ms) || ms <= 0) throw new RangeError(`extendLease(ms) needs a positive number, got ${ms}`);
    const storage = this.storage;
    const lost = await storage.renewLeases([{ id: exec.job.id, token: exec.job.token }], Math.round(ms));
    if (lost.length) await this.takeOver(exec, 'lease-lost');
  }

  private logFailure(exec: Execution, label: string, err: unknown): void {
    const job = exec.job;
    const permanent = err instanceof StepError && err.kind === 'permanent';
    const what = job.kind === JobKind.Step ? `step ${job.stepNumber}` : `terminal delivery`;
    this.logger.warn(
      `${exec.workflow} ${what} of run ${job.runId} failed in ${label} (attempt ${job.attempts}/${job.maxAttempts}` +
        `${permanent ? ', permanent' : ''}): ${errorText(err)}`,
    );
  }

  private where(exec: Execution): string {
    return exec.label;
  }
}

/** The stored text of a thrown value, cut to LIMITS.maxReasonBytes: a huge exception must not make a failure worse. */
function errorText(err: unknown): string {
  if (err instanceof Error)
    return truncated(err.stack && err.stack.includes(err.message) ? err.stack : `${err.name}: ${err.message}`);
  try {
    return truncated(`non-Error thrown: ${typeof err === 'string' ? err : JSON.stringify(err)}`);
  } catch {
    return truncated(`non-Error thrown: ${String(err)}`);
  }
}

/** UTF-8 bytes of `text`, or its length when that is too short to matter (at most 3 bytes per UTF-16 unit). */
function textBytes(text: string): number {
  return text.length * 3 <= LIMITS.maxReasonBytes ? text.length : Buffer.byteLength(text, 'utf8');
}

function truncated(text: string, limit: number = LIMITS.maxReasonBytes): string {
  const bytes = text.length * 3 <= limit ? 0 : Buffer.byteLength(text, 'utf8');
  if (bytes <= limit) return text;
  const marker = ` … [truncated: ${bytes} bytes, over the ${LIMITS.maxReasonBytes}-byte limit]`;
  const keep = Buffer.from(text, 'utf8').subarray(0, limit - Buffer.byteLength(marker));
  // A character cut in two decodes as U+FFFD: dropped, so the text stays within the limit.
  return keep.toString('utf8').replace(/\uFFFD$/, '') + marker;
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  if (typeof value === 'object') {
    try {
      return JSON.stringify(value).slice(0, 120);
    } catch {
      return 'an object';
    }
  }
  return `${typeof value} ${String(value).slice(0, 80)}`;
}

/** A stored `received` as the step sees it. */
function toReceived(raw: {
  name: string;
  timedOut: boolean;
  data?: unknown;
  signalId?: string;
  sentAt?: number;
}): ReceivedSignal {
  return raw.timedOut
    ? Object.freeze({ name: raw.name, timedOut: true })
    : Object.freeze({
        name: raw.name,
        timedOut: false,
        data: raw.data,
        signalId: raw.signalId!,
        sentAt: new Date(raw.sentAt!),
      });
}

/** This process, as history rows name the worker of a delivery. */
const WORKER_ID = `${hostname()}#${process.pid}`;

/** A continue whose successor is leased to this worker: it keeps the slot and runs without a claim. */
function inPlace(s: Settlement): s is Extract<Settlement, { type: 'continue' }> & { next: { leaseToken: string } } {
  return s.type === 'continue' && !!s.next.leaseToken;
}

/** Step n + 1 of a job's run, in the job's own row (rewriteAsSuccessors): ready now unless the caller says otherwise. */
function successorOf(job: ClaimedJob, payload: string): NewJob {
  return {
    id: job.id,
    queue: job.queue,
    kind: JobKind.Step,
    runId: job.runId,
    stepNumber: job.stepNumber + 1,
    priority: job.priority,
    runAt: 0,
    scheduled: false,
    maxAttempts: job.maxAttempts,
    payload,
    headers: job.headers,
  };
}

/** A child's run id when the spec gives none: the same for every delivery of the spawning step. */
function childRunId(parentRunId: string, step: number, index: number): string {
  const plain = `${parentRunId}-${step}-${index}`;
  return plain.length <= 128
    ? plain
    : `c${createHash('sha256').update(`${parentRunId}/${step}`).digest('hex').slice(0, 40)}-${index}`;
}
