import {
  type BeforeApplicationShutdown,
  Inject,
  Injectable,
  Logger,
  type OnApplicationBootstrap,
} from '@nestjs/common';
import { randomBytes } from 'node:crypto';
import type { ResolvedWorkerConfig, ResolvedWorkflowConfig } from '../workflow.config.js';
import { WORKFLOW_CONFIG } from '../workflow.constants.js';
import { WorkflowRegistry } from '../workflow.registry.js';
import { WorkflowStorage } from '../storage/workflow.storage.js';
import { type ClaimedJob, type Handoff, JobKind } from '../storage/storage.types.js';
import { Execution } from './execution.js';
import { LeaseKeeper } from './lease-keeper.js';
import { Maintenance } from './maintenance.js';
import { JobExecutor } from './job-executor.js';
import { WorkflowNotifier } from '../workflow.notifier.js';
import type { FlowLimits } from '../storage/flow.js';
import type { ClaimCursor } from '../storage/claim.js';

/** Most jobs one claim transaction takes; deep queues are drained in batches of this. */
const CLAIM_BATCH = 32;
/**
 * Consecutive steps of one run a slot may run in place (the job row rewritten as the
 * successor, still leased to it: no claim) while other work of this process waits. Bounded
 * so queued runs, other workflows, terminal deliveries and higher priorities get the slot
 * back; with nobody waiting the run keeps it, since handing it back would only mean
 * claiming the same job again.
 */
const MAX_IN_PLACE = 16;

/**
 * Jobs one process holds leased that will run here again (running, waiting for a slot,
 * settling with a successor leased in place), per slot of `concurrency`. More runs begun
 * than slots can serve only wait in this process, and each batch of steps grows: the
 * chain's p99 broke 10 ms at 3-4 (bench/RESULTS.md, 2026-12-02).
 */
const HELD_PER_SLOT = 2;
/**
 * All jobs one process holds leased, endings still settling included, per slot. Endings
 * leave nothing to run here, so a drain of single-step runs claims past its free slots
 * while they commit (bench/RESULTS.md, 2026-12-03).
 */
const MAX_HELD_PER_SLOT = 4;
/** Weight of the newest sample in the running averages of runner and claim times. */
const EWMA = 0.2;

type Slot = { free: boolean };

interface Queued {
  q: QueueSlot;
  exec: Execution;
  /** Set once it runs. */
  slot?: Slot;
  /** When its runner was called (performance.now()). */
  began?: number;
}

interface QueueSlot {
  name: string;
  workflow?: string;
  limit: number;
  maxAttempts: number;
  inFlight: number;
  /** Slots a claim in flight may fill: nothing else takes them meanwhile. */
  claiming: number;
  /** Ready jobs may be waiting for a slot: what the last claim or probe saw, or a local wake-up. */
  waiting: boolean;
  /** keyConcurrency / rateLimit: every step goes through a claim (none runs in place). */
  limits?: FlowLimits;
  /** Where the last full claim stopped: the next one starts there (see claimBatch's `from`). */
  cursor?: ClaimCursor;
  /** When a claim of this queue must start from the head again (Date.now()). */
  headDueAt: number;
  /** How long its runners take, on average (ms); unknown until one returned. */
  runMs?: number;
}

/**
 * The worker pool: claims jobs of the workflows and handlers this process hosts,
 * runs them up to the concurrency limits, and drains on shutdown. Starts at
 * onApplicationBootstrap (never at compile()), stops claiming in
 * beforeApplicationShutdown while the database is still open.
 */
@Injectable()
export class WorkflowWorker implements OnApplicationBootstrap, BeforeApplicationShutdown {
  private readonly logger = new Logger(WorkflowWorker.name);
  private readonly tag = randomBytes(6).toString('hex');
  private seq = 0;
  private readonly inFlight = new Map<string, Execution>();
  /** Slots taken: runners (and handlers) running now. */
  private busySlots = 0;
  /** Slots the claims in flight may fill. */
  private claiming = 0;
  /** How long a claim takes, on average (ms). */
  private claimMs = 0;
  /** The last claim took fewer than the free slots because of the jobs held: a settlement's end wakes the loop. */
  private heldBack = false;
  /**
   * Successors leased to this worker by their predecessor's settlement, waiting for a
   * slot: they are in `inFlight` (leases renewed, cancels seen) and go before any claim.
   */
  private readonly queued: Queued[] = [];
  /**
   * Jobs a claim took beyond the free slots of a queue with more ready work: they wait
   * here (in `inFlight` too) behind the successors, so runs in progress keep their pace.
   */
  private readonly ahead: Queued[] = [];
  private runQueuedSoon = false;
  private queues: QueueSlot[] = [];
  private running = false;
  private loop?: Promise<void>;
  private stopping?: Promise<void>;
  private wakePending = false;
  private wakeUp?: () => void;
  private unsubscribe: Array<() => void> = [];
  private leases?: LeaseKeeper;
  private maintenance?: Maintenance;
  private rotation = 0;
  private nextProbe = 0;
  private throttleTimer?: NodeJS.Timeout;
  private throttleAt = Number.POSITIVE_INFINITY;
  /** When the claim loop last began an iteration (Date.now()): the health check's heartbeat. */
  private beatAt = 0;
  /** Slots reserved for a signal's step (reserve) and not yet taken or released; the drain waits for them. */
  private handoffs = 0;
  private handoffsSettled?: () => void;

  constructor(
    @Inject(WORKFLOW_CONFIG) private readonly config: ResolvedWorkflowConfig,
    private readonly registry: WorkflowRegistry,
    private readonly storage: WorkflowStorage,
    private readonly executor: JobExecutor,
    private readonly notifier: WorkflowNotifier,
  ) {}

  private get options(): ResolvedWorkerConfig {
    return this.config.worker as ResolvedWorkerConfig;
  }

  /** The queues this process's worker claims from: its workflows and its handlers' deliveries. */
  hostedQueues(): string[] {
    return this.queues.map((q) => q.name);
  }

  /** When the claim loop last began an iteration (Date.now()); undefined while it is not running. */
  loopBeatAt(): number | undefined {
    return this.running && this.loop ? this.beatAt : undefined;
  }

  /** Steps and deliveries this process is running now. */
  get activeCount(): number {
    return this.inFlight.size;
  }

  async onApplicationBootstrap(): Promise<void> {
    if (!this.config.worker) return;
    await this.start();
  }

  async start(): Promise<void> {
    if (this.running || this.stopping || !this.config.worker) return;
    const storage = this.storage;
    await storage.ready();
    const opts = this.options;
    this.queues = [];
    for (const [name, runner] of this.registry.runners) {
      if (this.registry.runsHere(name)) {
        this.queues.push({
          name,
          workflow: name,
          limit: runner.concurrency,
          maxAttempts: runner.maxAttempts,
          inFlight: 0,
          claiming: 0,
          waiting: true,
          limits: runner.limits,
          headDueAt: 0,
        });
      }
    }
    for (const handler of this.registry.handlers.values()) {
      this.queues.push({
        name: handler.queue,
        limit: opts.concurrency,
        maxAttempts: this.config.defaults.maxAttempts,
        inFlight: 0,
        claiming: 0,
        waiting: true,
        headDueAt: 0,
      });
    }
    // Before the first claim: from now on every run that ends, in any process, writes deliveries for these.
    const hosted = [...this.registry.handlers.values()].map((h) => ({
      queue: h.queue,
      workflows: h.workflows && [...h.workflows],
    }));
    await storage.registerHandlers(hosted);
    this.running = true;
    this.unsubscribe.push(
      this.notifier.onWake(() => this.jobsMayWait()),
      this.notifier.onDue(() => this.maintenance?.promoteNow()),
      this.config.clock.onChange?.(() => this.maintenance?.promoteNow()) ?? (() => undefined),
      this.notifier.offerSlots((queue, keyed) => this.reserve(queue, keyed)),
      this.notifier.onCancel((runId) => {
        for (const e of this.inFlight.values())
          if (e.job.runId === runId && e.job.kind === JobKind.Step) this.cancel(e);
      }),
    );
    this.leases = new LeaseKeeper(
      storage,
      this.inFlight,
      opts.leaseMs,
      (e) => void this.executor.takeOver(e, 'lease-lost'),
      (e) => this.cancel(e),
    );
    this.leases.start();
    this.maintenance = new Maintenance(
      storage,
      {
        pollIntervalMs: opts.pollIntervalMs,
        leaseMs: opts.leaseMs,
        runsMs: this.config.retention.runsMs,
        deadMs: this.config.retention.deadMs,
        now: () => this.config.clock.now(),
        hosted,
        priorityOf: (workflow) => this.registry.runners.get(workflow)?.priority ?? this.config.defaults.priority,
        rateLimited: this.queues.some((q) => q.limits?.rate),
      },
      () => this.jobsMayWait(),
    );
    this.maintenance.start();
    if (this.queues.length) {
      this.logger.log(
        `Worker started: ${this.queues.map((q) => q.name).join(', ')} (concurrency ${opts.concurrency}, lease ${opts.leaseMs} ms)`,
      );
    }
    this.loop = this.claimLoop(storage);
  }

  /**
   * A slot for a step of `queue` that a signal of this process is about to wake: the
   * signal's transaction leases the step to it and hands it over, which saves the claim's
   * transaction (its round trips and its commit). Only what a claim would do next anyway:
   * while the worker runs, for a workflow hosted here whose steps a claim need not count
   * (no rateLimit; keyConcurrency only for a step with a key), under both concurrency
   * limits, and when no queue of this process is known to have work waiting (that work
   * goes first, in the claim's order). Internal: the module's own WorkflowService calls it.
   */
  reserve(queue: string, keyed: boolean): Handoff | undefined {
    const q = this.reservable(queue, keyed);
    if (!q) return undefined;
    const slot = this.takeSlot(q);
    let done = false;
    this.handoffs++;
    const settled = () => {
      done = true;
      if (--this.handoffs === 0) this.handoffsSettled?.();
    };
    return {
      token: this.nextToken(),
      leaseMs: this.options.leaseMs,
      maxAttempts: q.maxAttempts,
      take: (job) => {
        if (done) return;
        // Leased to this process already: it runs here even if shutdown began meanwhile (its drain waits for it).
        this.launch(q, job, 0, slot);
        settled();
      },
      release: () => {
        if (done) return;
        this.freeSlot(q, slot);
        settled();
      },
    };
  }

  /** Whether reserve() would give a slot now (it takes nothing). Internal: tests of the hand-off wait for it. */
  canReserve(queue: string, keyed: boolean): boolean {
    return this.reservable(queue, keyed) !== undefined;
  }

  private reservable(queue: string, keyed: boolean): QueueSlot | undefined {
    if (!this.running) return undefined;
    const q = this.queues.find((r) => r.name === queue);
    if (!q?.workflow || q.limits?.rate || (keyed && q.limits?.keyConcurrency)) return undefined;
    if (!this.hasSlot(q)) return undefined;
    if (this.queued.length || this.ahead.length || this.queues.some((r) => r.waiting)) return undefined;
    return q;
  }

  wake(): void {
    this.wakePending = true;
    this.wakeUp?.();
  }

  /** Jobs were submitted, promoted or returned: until a claim says otherwise, runs past their in-place bound yield. */
  private jobsMayWait(): void {
    for (const q of this.queues) q.waiting = true;
    this.wake();
  }

  /**
   * A rate window has room again in `ms`: its throttled steps are woken then and claimed
   * at once (maintenance wakes them at its next poll too, for windows other processes filled).
   */
  private wakeThrottledIn(ms: number): void {
    const at = Date.now() + ms;
    if (this.throttleTimer && this.throttleAt <= at) return;
    clearTimeout(this.throttleTimer);
    this.throttleAt = at;
    this.throttleTimer = setTimeout(() => {
      this.throttleTimer = undefined;
      if (!this.running) return;
      this.storage.wakeThrottled().then(
        (n) => n > 0 && this.jobsMayWait(),
        () => undefined,
      );
    }, ms);
    this.throttleTimer.unref();
  }

  private cancel(exec: Execution): void {
    void this.executor.takeOver(exec, 'cancelled', 'run cancelled');
  }

  private nextToken(): string {
    return `${this.tag}.${(this.seq++).toString(36)}`;
  }

  private async claimLoop(storage: WorkflowStorage): Promise<void> {
    const opts = this.options;
    let failures = 0;
    while (this.running) {
      this.beatAt = Date.now();
      this.wakePending = false;
      let more = false;
      let idleMs = opts.pollIntervalMs;
      try {
        const blocked: QueueSlot[] = [];
        for (const q of this.claimOrder()) {
          if (!this.running) break;
          const unheld = Math.min(
            HELD_PER_SLOT * opts.concurrency - this.returning(),
            MAX_HELD_PER_SLOT * opts.concurrency - this.inFlight.size,
          );
          const slots = Math.min(
            opts.concurrency - this.busySlots - this.claiming - this.queued.length - this.ahead.length,
            q.limit - q.inFlight,
          );
          const free = Math.min(slots + this.aheadOf(q, slots), unheld, CLAIM_BATCH);
          // Held back by settlements, not by slots: the next one to commit wakes the loop.
          if (unheld <= free) this.heldBack = true;
          if (free <= 0) {
            // One its last claim left work in needs no probe (its next claim tells); `waiting`
            // alone may be a local wake-up's guess, which the probe is there to check.
            if (!q.cursor) blocked.push(q);
            continue;
          }
          const filling = Math.min(free, slots);
          this.claiming += filling;
          q.claiming = filling;
          // A step ready ahead of the cursor (from another process, a retry come due) waits at
          // most a poll interval for a claim from the head. Not for limited queues: the steps
          // they park become ready again in their old place, behind the cursor.
          const from = !q.limits && Date.now() < q.headDueAt ? q.cursor : undefined;
          if (!from) q.headDueAt = Date.now() + opts.pollIntervalMs;
          let claimed: Awaited<ReturnType<typeof storage.claimBatch>>;
          const claimStart = performance.now();
          try {
            claimed = await storage.claimBatch(
              q.name,
              free,
              this.nextToken(),
              opts.leaseMs,
              q.maxAttempts,
              q.limits,
              from,
            );
          } finally {
            this.claiming -= filling;
            q.claiming = 0;
          }
          this.claimMs += EWMA * (performance.now() - claimStart - this.claimMs);
          for (const job of claimed.jobs) this.launch(q, job, 0, this.hasSlot(q) ? this.takeSlot(q) : null, this.ahead);
          if (this.queued.length || this.ahead.length) this.runQueued();
          if (claimed.wakeInMs !== undefined) this.wakeThrottledIn(claimed.wakeInMs);
          q.cursor = claimed.more ? claimed.next : undefined;
          // Past the cursor the queue ran dry: what is ahead of it is claimed from the head next.
          q.waiting = claimed.more || from !== undefined;
          if (q.waiting) more = true;
        }
        // Each claim says whether it left a job behind and a local submit says so at once;
        // work other processes submit to a queue that got no slot is noticed by one probe of
        // all such queues per poll interval. That is what makes runs past their in-place
        // bound yield, and puts the starved queue first in line for the slot they free.
        if (blocked.length) {
          const wait = this.nextProbe - Date.now();
          if (wait > 0) idleMs = Math.min(idleMs, wait);
          else {
            this.nextProbe = Date.now() + opts.pollIntervalMs;
            const ready = await storage.readyQueues(blocked.map((q) => q.name));
            for (const q of blocked) q.waiting = ready.has(q.name);
          }
        }
        if (failures > 0) this.logger.log('Database reachable again; claiming resumed.');
        failures = 0;
      } catch (err) {
        failures++;
        const delay = Math.min(10_000, opts.pollIntervalMs * 2 ** Math.min(failures, 6));
        this.logger.error(`Claim failed (${(err as Error).message}); retrying in ${delay} ms.`);
        await this.sleep(delay);
        continue;
      }
      if (!more || this.busySlots >= opts.concurrency) await this.sleep(idleMs);
    }
  }

  /**
   * Queues with work waiting first, the least served of those first, so a queue starved
   * by runs continuing in place gets the slot one of them gives up instead of that run's
   * own queue taking it back; ties rotate.
   */
  private claimOrder(): QueueSlot[] {
    const n = this.queues.length;
    const order: QueueSlot[] = [];
    for (let i = 0; i < n; i++) order.push(this.queues[(this.rotation + i) % n]);
    this.rotation++;
    return order.sort((a, b) => Number(b.waiting) - Number(a.waiting) || a.inFlight - b.inFlight);
  }

  /** Whether a slot a run of `q` gives back would serve waiting work: of its own queue, or of another below its limit. */
  private wanted(q: QueueSlot): boolean {
    if (this.ahead.length) return true;
    for (const r of this.queues) if (r.waiting && (r === q || r.inFlight < r.limit)) return true;
    return false;
  }

  /** Waits for `ms` or until woken (a local submit, settlement or freed slot). */
  private sleep(ms: number): Promise<void> {
    if (this.wakePending || !this.running) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wakeUp = () => {
        this.wakeUp = undefined;
        done();
      };
    });
  }

  /**
   * Runs a job in a slot, or queues it for the next free one (`slot` null). The slot is
   * given back as soon as the step's outcome is handed to the settlement batcher, so other
   * work overlaps that commit; the job stays in `inFlight` (leases, shutdown) until
   * settled. A runner the runtime took the job from keeps the slot until it returns.
   */
  private launch(
    q: QueueSlot,
    job: ClaimedJob,
    chain = 0,
    slot: Slot | null = this.takeSlot(q),
    waitIn: Queued[] = this.queued,
  ): void {
    const workflow = q.workflow ?? safeWorkflowOf(job);
    const inPlace = () => (this.running && (chain < MAX_IN_PLACE || !this.wanted(q)) ? this.nextToken() : undefined);
    const entry: Queued = { q, slot: slot ?? undefined, exec: undefined! };
    // A rate-limited step must pass a claim (its start is counted there), so it never runs in place.
    const exec = new Execution(job, workflow, q.workflow && !q.limits?.rate ? inPlace : undefined, () => {
      if (!entry.slot) return;
      if (!entry.slot.free && entry.began !== undefined)
        q.runMs = (q.runMs ?? 0) + EWMA * (performance.now() - entry.began - (q.runMs ?? 0));
      this.freeSlot(q, entry.slot);
    });
    entry.exec = exec;
    this.inFlight.set(job.id, exec);
    if (slot) this.begin(entry);
    else waitIn.push(entry);
    void exec.done.then(() => {
      if (this.inFlight.get(job.id) === exec) this.inFlight.delete(job.id);
      if (this.heldBack) {
        this.heldBack = false;
        this.wake();
      }
      if (!entry.slot) {
        // Taken over (cancel, lost lease, shutdown) while it waited for a slot: no runner to wait for.
        const at = waitIn.indexOf(entry);
        if (at >= 0) waitIn.splice(at, 1);
        exec.runnerReturned();
      }
      // The successor is already leased to us: it runs here, in this slot if the runner
      // still holds it (a step.transaction), else in the next free one, even while draining.
      if (exec.next) return this.launch(q, exec.next, chain + 1, this.slotFor(q, entry.slot));
      exec.releaseSlot();
      this.leases?.watch(exec);
    });
  }

  /** The slot a successor runs in: its predecessor's if still held, a free one if nothing queued is ahead, else none yet. */
  private slotFor(q: QueueSlot, held: Slot | undefined): Slot | null {
    if (held && !held.free) return held;
    return this.queued.length || !this.hasSlot(q) ? null : this.takeSlot(q);
  }

  /** A slot is free for `q`: under both limits, counting the slots a claim in flight may fill. */
  private hasSlot(q: QueueSlot): boolean {
    return this.busySlots + this.claiming < this.options.concurrency && q.inFlight + q.claiming < q.limit;
  }

  private takeSlot(q: QueueSlot): Slot {
    q.inFlight++;
    this.busySlots++;
    return { free: false };
  }

  private freeSlot(q: QueueSlot, slot: Slot): void {
    if (slot.free) return;
    slot.free = true;
    q.inFlight--;
    this.busySlots--;
    if (this.queued.length || this.ahead.length) this.scheduleQueued();
    this.wake();
  }

  /** Soon, not inside the freeing call: that is the middle of a settlement (and a sync runner would recurse). */
  private scheduleQueued(): void {
    if (this.runQueuedSoon) return;
    this.runQueuedSoon = true;
    queueMicrotask(() => {
      this.runQueuedSoon = false;
      this.runQueued();
    });
  }

  /** Queued successors take free slots, oldest first, each under its queue's limit; then jobs claimed ahead. */
  private runQueued(): void {
    for (const list of [this.queued, this.ahead]) {
      for (let i = 0; i < list.length && this.busySlots + this.claiming < this.options.concurrency;) {
        const entry = list[i];
        if (!this.hasSlot(entry.q)) {
          i++;
          continue;
        }
        list.splice(i, 1);
        entry.slot = this.takeSlot(entry.q);
        this.begin(entry);
      }
    }
  }

  /**
   * How many jobs a claim of `q` may take past its free slots: as many as its runners
   * finish, at their recent pace, while one claim is out, so none waits here longer than
   * a claim would have taken (steps of seconds get none, and stay claimable by other
   * processes). Only a queue whose last claim left work behind, and not a limited one:
   * a leased step holds its key's slot, and its start counts in the rate window.
   */
  private aheadOf(q: QueueSlot, slots: number): number {
    if (slots <= 0 || !q.cursor || q.limits || q.runMs === undefined) return 0;
    const perClaim = (Math.min(this.options.concurrency, q.limit) * this.claimMs) / Math.max(q.runMs, 0.01);
    return Math.floor(Math.min(perClaim, CLAIM_BATCH));
  }

  private begin(entry: Queued): void {
    entry.began = performance.now();
    void this.executor.execute(entry.exec);
  }

  /** Jobs held that will run here again: all in flight but endings settling (see MAX_HELD_PER_SLOT). */
  private returning(): number {
    let n = 0;
    for (const exec of this.inFlight.values()) if (!exec.leaving) n++;
    return n;
  }

  async beforeApplicationShutdown(): Promise<void> {
    await this.stop();
  }

  /**
   * Stops claiming, waits up to shutdownTimeoutMs for in-flight jobs, then aborts the
   * rest and hands their leases back so another process resumes them at once.
   * Idempotent and bounded.
   */
  stop(): Promise<void> {
    this.stopping ??= this.drain();
    return this.stopping;
  }

  private async drain(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    this.wakeUp?.();
    for (const off of this.unsubscribe) off();
    this.unsubscribe = [];
    clearTimeout(this.throttleTimer);
    await this.maintenance?.stop();
    this.notifier.close();
    await this.loop;
    // Claimed ahead and not begun: handed back at once, for another process to run now.
    const unbegun = this.ahead
      .splice(0)
      .map((e) => this.executor.takeOver(e.exec, 'shutdown', 'application shutting down'));
    // A signal's transaction that leased a step to this worker hands it over once it commits: wait for it to be in flight.
    if (this.handoffs > 0) await waitAll([new Promise<void>((r) => (this.handoffsSettled = r))], 5_000);
    const timeout = this.options.shutdownTimeoutMs;
    await waitAll(unbegun, 5_000);
    if (this.inFlight.size) {
      this.logger.log(`Shutting down: waiting up to ${timeout} ms for ${this.inFlight.size} job(s) in flight.`);
      await waitAll(
        [...this.inFlight.values()].map((e) => e.done),
        timeout,
      );
    }
    if (this.inFlight.size) {
      this.logger.warn(`Shutdown timeout: aborting ${this.inFlight.size} job(s) and handing their leases back.`);
      await waitAll(
        [...this.inFlight.values()].map((e) => this.executor.takeOver(e, 'shutdown', 'application shutting down')),
        5_000,
      );
    }
    this.leases?.stop();
    this.logger.log('Worker stopped.');
  }
}

function safeWorkflowOf(job: ClaimedJob): string {
  try {
    return String((JSON.parse(job.payload) as { workflow?: unknown }).workflow ?? job.queue);
  } catch {
    return job.queue;
  }
}

async function waitAll(promises: Promise<unknown>[], ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    Promise.allSettled(promises),
    new Promise((r) => {
      timer = setTimeout(r, ms);
    }),
  ]);
  clearTimeout(timer);
}
