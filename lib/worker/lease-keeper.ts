import { Logger } from '@nestjs/common';
import type { WorkflowStorage } from '../storage/workflow.storage.js';
import { JobKind } from '../storage/storage.types.js';
import type { Execution } from './execution.js';

/**
 * Keeps the leases of in-flight jobs alive and notices cross-process cancels:
 * renews every third of the lease, looks for `cancelling` runs about every second.
 * A renewal that fails (database briefly away) is simply tried again next tick; the
 * lease has two more thirds to go before anyone else may take the job.
 */
export class LeaseKeeper {
  private readonly logger = new Logger(LeaseKeeper.name);
  private renewTimer?: NodeJS.Timeout;
  private cancelTimer?: NodeJS.Timeout;
  private busy = { renew: false, cancel: false };
  /** Runners that outlive the runtime's takeover, and when each is due to be reported again. */
  private readonly strays = new Map<Execution, number>();

  constructor(
    private readonly storage: WorkflowStorage,
    private readonly inFlight: ReadonlyMap<string, Execution>,
    private readonly leaseMs: number,
    private readonly onLost: (exec: Execution) => void,
    private readonly onCancelled: (exec: Execution) => void,
  ) {}

  start(): void {
    this.renewTimer = setInterval(
      () => {
        this.reportStrays();
        void this.renew();
      },
      Math.max(50, Math.floor(this.leaseMs / 3)),
    );
    this.cancelTimer = setInterval(
      () => void this.pollCancels(),
      Math.min(1000, Math.max(50, Math.floor(this.leaseMs / 3))),
    );
    this.renewTimer.unref();
    this.cancelTimer.unref();
  }

  stop(): void {
    clearInterval(this.renewTimer);
    clearInterval(this.cancelTimer);
  }

  /**
   * A runner whose job the runtime took over (timeout, cancel, lost lease, shutdown) and
   * that has not returned: it ignores its aborted signal and holds a slot, which someone
   * should hear about once every lease period until it returns.
   */
  watch(exec: Execution): void {
    if (exec.abandoned) this.strays.set(exec, Date.now() + this.leaseMs);
  }

  private reportStrays(): void {
    const now = Date.now();
    for (const [exec, due] of this.strays) {
      if (!exec.abandoned) this.strays.delete(exec);
      else if (now >= due) {
        this.strays.set(exec, now + this.leaseMs);
        this.logger.warn(
          `${exec.label} ignores its aborted step.signal (${exec.abortReason}): still running ${now - exec.startedAt} ms ` +
            'after it started; it keeps its slot until it returns.',
        );
      }
    }
  }

  async renew(): Promise<void> {
    if (this.busy.renew) return;
    // Settling executions too: a settlement retried through a database blip must not lose its lease meanwhile.
    // A step.transaction holds its job row locked (and so its lease): a renewal would wait on it.
    const execs = [...this.inFlight.values()].filter(
      (e) => e.abortReason !== 'lease-lost' && e.transaction !== 'open' && e.transaction !== 'taken',
    );
    if (execs.length === 0) return;
    this.busy.renew = true;
    try {
      const lost = new Set(
        // Rows a transaction holds (a settlement of ours, waiting) are renewed next round, not waited for.
        await this.storage.renewLeases(
          execs.map((e) => ({ id: e.job.id, token: e.job.token })),
          this.leaseMs,
          { skipLocked: true },
        ),
      );
      for (const e of execs) if (lost.has(e.job.id) && !e.owned) this.onLost(e);
    } catch (err) {
      this.logger.warn(`Lease renewal failed (${(err as Error).message}); will retry.`);
    } finally {
      this.busy.renew = false;
    }
  }

  private async pollCancels(): Promise<void> {
    if (this.busy.cancel) return;
    const execs = [...this.inFlight.values()].filter((e) => !e.owned && e.job.kind === JobKind.Step);
    if (execs.length === 0) return;
    this.busy.cancel = true;
    try {
      const cancelling = new Set(await this.storage.cancellingAmong([...new Set(execs.map((e) => e.job.runId))]));
      for (const e of execs) if (cancelling.has(e.job.runId)) this.onCancelled(e);
    } catch (err) {
      this.logger.warn(`Cancellation check failed (${(err as Error).message}); will retry.`);
    } finally {
      this.busy.cancel = false;
    }
  }
}
