import type { ClaimedJob } from '../storage/storage.types.js';
import { StepAbortedError, type StepAbortReason } from '../errors/step-aborted.error.js';

/**
 * One delivery in flight. Whoever calls `takeOver()` first, the runner's return or the
 * runtime (cancel, timeout, shutdown, lost lease), owns the settlement; the other's
 * result is discarded. That single flag is what keeps a late outcome from settling twice
 * inside one process; across processes the lease token does the same.
 */
export class Execution {
  /** Made on first use of `signal`: most steps never look at it, and an AbortController is a measurable share of a step. */
  private controller?: AbortController;
  private abortError?: StepAbortedError;
  private owner: 'runner' | StepAbortReason | undefined;
  private finish!: () => void;
  readonly done = new Promise<void>((resolve) => (this.finish = resolve));
  timer?: NodeJS.Timeout;
  /** The successor, inserted already leased to this worker: run it in this slot without a claim. */
  next?: ClaimedJob;

  constructor(
    readonly job: ClaimedJob,
    readonly workflow: string,
    /** A fresh lease token if this step's successor may run in place, else undefined. */
    readonly inPlaceToken: () => string | undefined = () => undefined,
    /** Gives the worker slot back (idempotent): the step's own work is over. */
    readonly releaseSlot: () => void = () => undefined,
  ) {}

  /** The step's `signal`; already aborted if the runtime took the job over before the runner asked for it. */
  get signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (this.abortError) this.controller.abort(this.abortError);
    }
    return this.controller.signal;
  }

  get owned(): boolean {
    return this.owner !== undefined;
  }

  get abortReason(): StepAbortReason | undefined {
    return this.owner === 'runner' ? undefined : this.owner;
  }

  /** True if the caller now owns the settlement. */
  takeOver(by: 'runner' | StepAbortReason, detail?: string): boolean {
    if (this.owner) return false;
    this.owner = by;
    if (this.timer) clearTimeout(this.timer);
    if (by !== 'runner') {
      this.abortError = new StepAbortedError(by, detail ?? by);
      this.controller?.abort(this.abortError);
    }
    return true;
  }

  settled(): void {
    if (this.timer) clearTimeout(this.timer);
    this.finish();
  }
}
