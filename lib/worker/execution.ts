import { type ClaimedJob, JobKind, publicJobId } from '../storage/storage.types.js';
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
  /** Its settlement, handed over, leaves nothing to run here (no successor leased in place). */
  leaving = false;
  /** The successor, inserted already leased to this worker: it runs in the next free slot without a claim. */
  next?: ClaimedJob;
  /**
   * `step.transaction()`: open while it holds the job row (the lease keeper leaves the row
   * alone, the lock keeps the lease); taken once it owns the settlement; settled once that
   * committed (or was handed to the batcher), so the runner's return settles nothing more;
   * failed after taking it: the runner's return or throw settles the step as usual.
   */
  transaction?: 'open' | 'taken' | 'settled' | 'failed';
  /** What the committed step.transaction() returned, to tell the runner returned it too. */
  committedOutcome?: unknown;

  /** When the runner (or handler) was called, for reporting one that outlives its abort. */
  readonly startedAt = Date.now();
  /** The same moment by the runtime clock, for the delivery's history row. */
  begunAt = 0;
  private returned = false;

  constructor(
    readonly job: ClaimedJob,
    readonly workflow: string,
    /** A fresh lease token if this step's successor may run in place, else undefined. */
    readonly inPlaceToken: () => string | undefined = () => undefined,
    /** Gives the worker slot back (idempotent). */
    private readonly freeSlot: () => void = () => undefined,
  ) {}

  /**
   * Gives the slot back, unless the runtime took the job over while the runner still
   * runs: an abandoned runner keeps its slot until it returns, or a runner that ignores
   * its signal would let `concurrency` be exceeded.
   */
  releaseSlot(): void {
    if (!this.abandoned) this.freeSlot();
  }

  /** Taken over by the runtime while the runner has not returned yet. */
  get abandoned(): boolean {
    return !this.returned && this.owner !== undefined && this.owner !== 'runner';
  }

  /** The runner's (or handler's) promise settled: an abandoned one gives its slot back now. */
  runnerReturned(): void {
    const held = this.abandoned;
    this.returned = true;
    if (held) this.freeSlot();
  }

  /** The step's `signal`; already aborted if the runtime took the job over before the runner asked for it. */
  get signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (this.abortError) this.controller.abort(this.abortError);
    }
    return this.controller.signal;
  }

  /** How log lines name this delivery. */
  get label(): string {
    const job = this.job;
    const what =
      job.kind === JobKind.Step ? `${this.workflow} step ${job.stepNumber}` : `terminal delivery ${job.queue}`;
    return `${what} of run ${job.runId} (job ${publicJobId(job.id, job.kind, job.stepNumber)})`;
  }

  /** The settlement is the runner's to make (it returned, or its step.transaction took it). */
  get ownedByRunner(): boolean {
    return this.owner === 'runner';
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
