import { Logger } from '@nestjs/common';
import type { HostedHandler, WorkflowStorage } from '../storage/workflow.storage.js';

/**
 * Background upkeep every worker process runs: promote due scheduled jobs, fire due
 * schedule ticks, reap expired leases, cancel the siblings of tripped failFast joins,
 * finish cancel cascades whose canceller stopped on the way, and (one process at a time, by database lock) delete finished runs
 * and dead letters past retention. Errors are logged and tried again next tick.
 */
export class Maintenance {
  private readonly logger = new Logger(Maintenance.name);
  private timers: NodeJS.Timeout[] = [];
  private readonly running = new Map<string, Promise<void>>();
  private readonly again = new Set<string>();
  private stopped = false;

  constructor(
    private readonly storage: WorkflowStorage,
    private readonly opts: {
      pollIntervalMs: number;
      leaseMs: number;
      runsMs: number;
      deadMs: number;
      now: () => number;
      /** The @OnTerminal handlers this process hosts, re-registered every heartbeat. */
      hosted: HostedHandler[];
      /** Step priority of a workflow's runs (its runner's, else the default), for schedule ticks. */
      priorityOf: (workflow: string) => number;
      /** This process claims a rate-limited workflow: it wakes throttled steps too. */
      rateLimited: boolean;
    },
    private readonly onWork: () => void,
  ) {}

  start(): void {
    this.every('promote', this.opts.pollIntervalMs, () => this.promote());
    this.every('joins', this.opts.pollIntervalMs, () => this.joins());
    const reapMs = Math.min(5000, Math.max(200, Math.floor(this.opts.leaseMs / 4)));
    this.every('reap', reapMs, () => this.reap());
    // Like the reaper, it takes over what a process that died left: a cascade's lease passes first anyway.
    this.every('cascades', reapMs, () => this.cascades());
    // A sweep that finds nothing is two index probes: cheap enough to run every few seconds.
    const upkeepMs = Math.min(60_000, Math.max(1_000, this.opts.pollIntervalMs * 40));
    this.every('retention', upkeepMs, () => this.sweep());
    this.every('handlers', Math.min(30_000, upkeepMs), () => this.handlers());
    this.every('counts', Math.max(1_000, this.opts.pollIntervalMs * 4), () => this.foldCounts());
    const first = setTimeout(() => void this.run('retention', () => this.sweep()), 1000 + Math.random() * 4000);
    first.unref();
    this.timers.push(first);
  }

  /**
   * Stops the timers and waits (at most `ms`) for tasks already running, so the pool is
   * not closed under a promotion or a schedule tick halfway through.
   */
  async stop(ms = 5_000): Promise<void> {
    this.stopped = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers = [];
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.allSettled(this.running.values()), new Promise((r) => (timer = setTimeout(r, ms)))]);
    clearTimeout(timer);
  }

  /** Promotes now (a due time came, the clock jumped) rather than at the next poll. */
  promoteNow(): void {
    void this.run('promote', () => this.promote());
  }

  /**
   * failFast joins a failed child tripped: the other children of that spawn are cancelled,
   * each in a transaction of its own, and everything below them (finishCascade). A pass cut
   * off by a crash leaves the join tripped, so the next one cancels what is left of that
   * spawn, and each cancelled sibling's cascade mark, so whatever process takes it up
   * cancels the rest below. Only that spawn's children: a pass that reaches a join late,
   * after another process handled it and the parent spawned again, cancels nothing of the new one.
   */
  async joins(): Promise<void> {
    let cancelled = false;
    for (const join of await this.storage.trippedJoins()) {
      for (const child of await this.storage.childRunIds(join.runId, join.stepNumber - 1)) {
        const result = await this.storage.cancelRun(child);
        if (!result) continue;
        if (result !== 'already-cancelling') cancelled = true;
        if ((await this.storage.finishCascade(child)) > 0) cancelled = true;
      }
      await this.storage.joinHandled(join.jobId, join.stepNumber);
    }
    // The last cancel of a join makes its parent's next step claimable.
    if (cancelled) this.onWork();
  }

  /**
   * Cancel cascades whose walker stopped before the end (its process died or stalled
   * past the cascade lease): this process walks them on from the marks left.
   */
  async cascades(): Promise<void> {
    let cancelled = 0;
    const taken = await this.storage.takeDueCascades();
    for (const runId of taken) cancelled += await this.storage.finishCascade(runId);
    if (taken.length) {
      this.logger.warn(
        `Took over the cancel cascade of ${taken.length} run(s) whose canceller stopped on the way: ${cancelled} run(s) below them cancelled.`,
      );
    }
    // Terminal deliveries of what was cancelled wait to be claimed.
    if (cancelled) this.onWork();
  }

  /** Also fires due schedule ticks: the same cadence, and a ManualClock jump calls it at once. */
  async promote(): Promise<void> {
    // One plain read says which of the locking passes below have anything to do.
    const work = await this.storage.dueWork();
    const due =
      (work.promote ? await this.storage.promoteDue() : 0) +
      (work.timeouts ? await this.storage.wakeTimedOut() : 0) +
      (this.opts.rateLimited ? await this.storage.wakeThrottled() : 0);
    if (due > 0) this.onWork();
    if (!work.schedules) return;
    // After the wake-up above, so a schedule that fails to fire cannot hold back promoted steps.
    const fired = await this.storage.fireDueSchedules(this.opts.priorityOf);
    if (fired.created > 0) this.onWork();
    // Stopped by its time budget with ticks still due: run again right after, not a poll later.
    if (fired.more) this.again.add('promote');
  }

  async reap(): Promise<void> {
    const r = await this.storage.reapExpired();
    if (r.requeued || r.dead || r.cancelled) {
      this.logger.warn(
        `Expired leases: ${r.requeued} job(s) requeued, ${r.dead} dead-lettered, ${r.cancelled} cancelled (their workers died or stalled).`,
      );
      this.onWork();
    }
  }

  async sweep(): Promise<void> {
    const now = this.opts.now();
    const r = await this.storage.sweepRetention(now - this.opts.runsMs, now - this.opts.deadMs);
    if (r && (r.runs || r.dead))
      this.logger.log(`Retention removed ${r.runs} finished run(s) and ${r.dead} dead letter(s).`);
  }

  /** Keeps the run counts a few rows per workflow, however many runs moved. */
  async foldCounts(): Promise<void> {
    while ((await this.storage.foldCounts()) >= 5000);
  }

  /** Keeps this process's handlers registered, and dead-letters deliveries no live process will ever take. */
  async handlers(): Promise<void> {
    await this.storage.registerHandlers(this.opts.hosted);
    const dead = await this.storage.expireHandlers();
    if (dead) {
      this.logger.warn(
        `${dead} terminal deliveries dead-lettered: no running process hosts their @OnTerminal handler (see deadSteps()).`,
      );
    }
  }

  private every(name: string, ms: number, fn: () => Promise<void>): void {
    const t = setInterval(() => void this.run(name, fn), ms);
    t.unref();
    this.timers.push(t);
  }

  /**
   * Runs one task of a kind at a time. Asked again while it runs (a due time, a clock jump),
   * it runs once more right after, so no wake-up is lost in between.
   */
  private run(name: string, fn: () => Promise<void>): Promise<void> {
    if (this.stopped) return Promise.resolve();
    const busy = this.running.get(name);
    if (busy) {
      this.again.add(name);
      return busy;
    }
    const task = (async () => {
      do {
        this.again.delete(name);
        try {
          await fn();
        } catch (err) {
          this.logger.warn(`${name} failed (${(err as Error).message}); will retry.`);
        }
      } while (this.again.has(name) && !this.stopped);
      this.running.delete(name);
    })();
    this.running.set(name, task);
    return task;
  }
}
