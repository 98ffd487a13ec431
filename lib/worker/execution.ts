import type { ClaimedJob } from '../storage/storage.types.js';
import { StepAbortedError, type StepAbortReason } from '../errors/step-aborted.error.js';

/**
 * One delivery in flight. Whoever calls `takeOver()` first, the runner's return or the
 * runtime (cancel, timeout, shutdown, lost lease), owns the settlement; the other's
 * result is discarded. That single flag is what keeps a late outcome from settling twice
 * inside one process; across processes the lease token does the same.
 */
export class Execution {
  readonly controller = new AbortController();
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
  ) {}

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
    if (by !== 'runner') this.controller.abort(new StepAbortedError(by, detail ?? by));
    return true;
  }

  settled(): void {
    if (this.timer) clearTimeout(this.timer);
    this.finish();
  }
}
