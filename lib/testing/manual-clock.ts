import type { WorkflowClock } from '../interfaces/workflow-module-options.interface.js';

/**
 * A clock that moves only when told: pass it as `WorkflowModule.forRoot({ clock })` and
 * `advance(ms)` makes delayed steps, backoffs and signal timeouts due at once (the worker
 * is told and promotes them without waiting for its next poll). Leases stay in the
 * database's own clock, so advancing never expires one.
 */
export class ManualClock implements WorkflowClock {
  private ms: number;
  private readonly listeners = new Set<() => void>();

  constructor(startMs: number = Date.now()) {
    if (!Number.isFinite(startMs)) throw new RangeError(`ManualClock(startMs) needs a finite number, got ${startMs}`);
    this.ms = Math.round(startMs);
  }

  now(): number {
    return this.ms;
  }

  /** Moves the clock forward by `ms` (>= 0). */
  advance(ms: number): void {
    if (!Number.isFinite(ms) || ms < 0)
      throw new RangeError(`ManualClock.advance(ms) needs a finite number >= 0, got ${ms}`);
    this.set(this.ms + ms);
  }

  /** Sets the clock; it may go back, as a host clock can. */
  set(ms: number): void {
    if (!Number.isFinite(ms)) throw new RangeError(`ManualClock.set(ms) needs a finite number, got ${ms}`);
    this.ms = Math.round(ms);
    for (const fn of this.listeners) fn();
  }

  /** Called by the worker: what to do when the time jumps. */
  onChange(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }
}
