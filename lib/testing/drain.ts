import type { INestApplicationContext } from '@nestjs/common';
import { WorkflowStorage } from '../storage/workflow.storage.js';
import { WorkflowWorker } from '../worker/workflow.worker.js';
import { WORKFLOW_CONFIG } from '../workflow.constants.js';
import type { ResolvedWorkflowConfig } from '../workflow.config.js';

export interface DrainOptions {
  /** Reject after this long, naming what is still busy. Default 10_000 ms. */
  timeoutMs?: number;
}

/**
 * Resolves when no step or terminal delivery of the workflows and handlers this app's
 * worker hosts is due or running, and no schedule tick is due: nothing ready, nothing leased, nothing scheduled or
 * waiting whose time (by the app's clock) has come, and no job in flight in this
 * process. Checked twice in a row, so a settlement that just queued a successor is seen.
 * Rejects after `timeoutMs` with what is still busy. Work due later (a delay not yet
 * reached on a ManualClock, a wait without a signal) does not keep it from resolving.
 */
export async function drainWorkflows(app: INestApplicationContext, options: DrainOptions = {}): Promise<void> {
  const timeoutMs = options.timeoutMs ?? 10_000;
  const worker = app.get(WorkflowWorker, { strict: false });
  const storage = app.get(WorkflowStorage, { strict: false });
  const config = app.get<ResolvedWorkflowConfig>(WORKFLOW_CONFIG, { strict: false });
  const queues = worker.hostedQueues();
  const deadline = Date.now() + timeoutMs;
  let quietChecks = 0;
  for (;;) {
    const busy: string[] = [];
    if (worker.activeCount > 0) busy.push(`${worker.activeCount} job(s) running in this process`);
    const now = config.clock.now();
    for (const b of await storage.busyJobs(queues, now)) busy.push(`${b.count} ${b.state} in ${b.queue}`);
    const ticks = await storage.dueSchedules(now);
    if (ticks) busy.push(`${ticks} schedule tick(s) due`);
    quietChecks = busy.length === 0 ? quietChecks + 1 : 0;
    if (quietChecks >= 2) return;
    if (Date.now() > deadline) {
      throw new Error(`drainWorkflows: still busy after ${timeoutMs} ms: ${busy.join('; ') || 'settling'}`);
    }
    if (busy.length) worker.wake();
    await new Promise((r) => setTimeout(r, 10));
  }
}
