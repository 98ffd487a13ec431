import type { TestingModule } from '@nestjs/testing';
import { WorkflowWorker } from 'nestjs-durable-workflow';
import { waitFor } from './wait.js';

/**
 * Waits until the app's worker would take a signalled step of `workflow` into a free slot:
 * a wake-up marks every queue as maybe waiting, and a claim in flight holds the slots it
 * may fill, until its claims (or probe) are through. A hand-off test must not race that.
 */
export async function handoffPossible(app: TestingModule, workflow: string): Promise<void> {
  const worker = app.get(WorkflowWorker);
  await waitFor(() => worker.canReserve(workflow, false), `the worker ready to take a signalled ${workflow} step`);
}
