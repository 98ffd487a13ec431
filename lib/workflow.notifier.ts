import { Injectable } from '@nestjs/common';
import { EventEmitter } from 'node:events';
import type { Handoff, ReserveSlot } from './storage/storage.types.js';

/**
 * In-process signals between the service and the worker of one application: wake the
 * claim loop at once after a local submit or settlement, tell a local worker a run was
 * cancelled, tell local waiters a run ended. Other processes learn the same facts by
 * polling the database.
 */
@Injectable()
export class WorkflowNotifier {
  private readonly events = new EventEmitter().setMaxListeners(0);
  private dueTimer?: NodeJS.Timeout;
  private dueAt = 0;
  private slots?: ReserveSlot;

  wake(): void {
    this.events.emit('wake');
  }

  onWake(fn: () => void): () => void {
    return this.on('wake', fn);
  }

  /** A scheduled job becomes due in `ms`: promote and claim then instead of at the next poll. */
  dueIn(ms: number): void {
    // Node fires a timer over 2^31 - 1 ms at once; a due time that far out is the poll's to find.
    if (ms > 2_147_483_000) return;
    const at = Date.now() + Math.max(0, ms);
    if (this.dueTimer && this.dueAt <= at) return;
    if (this.dueTimer) clearTimeout(this.dueTimer);
    this.dueAt = at;
    this.dueTimer = setTimeout(
      () => {
        this.dueTimer = undefined;
        this.events.emit('due');
      },
      Math.max(0, ms) + 5,
    );
    this.dueTimer.unref();
  }

  onDue(fn: () => void): () => void {
    return this.on('due', fn);
  }

  close(): void {
    if (this.dueTimer) clearTimeout(this.dueTimer);
    this.dueTimer = undefined;
  }

  /** The local worker offers its free slots to steps this process's signals wake (WorkflowWorker.reserve). */
  offerSlots(fn: ReserveSlot): () => void {
    this.slots = fn;
    return () => {
      if (this.slots === fn) this.slots = undefined;
    };
  }

  /** A slot of the local worker for a step of `queue` about to be made ready here, if it has one to spare. */
  reserveSlot(queue: string, keyed: boolean): Handoff | undefined {
    return this.slots?.(queue, keyed);
  }

  cancelRequested(runId: string): void {
    this.events.emit('cancel', runId);
  }

  onCancel(fn: (runId: string) => void): () => void {
    return this.on('cancel', fn);
  }

  runFinished(runId: string): void {
    this.events.emit(`finished:${runId}`);
  }

  onRunFinished(runId: string, fn: () => void): () => void {
    return this.on(`finished:${runId}`, fn);
  }

  private on(event: string, fn: (...args: any[]) => void): () => void {
    this.events.on(event, fn);
    return () => this.events.off(event, fn);
  }
}
