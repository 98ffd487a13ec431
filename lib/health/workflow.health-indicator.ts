import { Inject, Injectable } from '@nestjs/common';
import { ModuleRef } from '@nestjs/core';
import type { ResolvedWorkflowConfig } from '../workflow.config.js';
import { WORKFLOW_CONFIG } from '../workflow.constants.js';
import { WorkflowStorage } from '../storage/workflow.storage.js';
import { WorkflowWorker } from '../worker/workflow.worker.js';
import { healthSession } from './terminus.js';

export interface WorkflowHealthOptions {
  /** Down when the oldest due step has waited longer than this (ms). Unset: the lag is reported, never judged. */
  maxLagMs?: number;
  /** How long the database may take to answer before the check is down; default 1000 ms. */
  timeoutMs?: number;
}

/** What `isHealthy` reports under its key, the terminus way (`HealthIndicatorResult`). */
export type WorkflowHealthResult<Key extends string = string> = Record<
  Key,
  {
    status: 'up' | 'down';
    /** How long the oldest due step has waited, ms (0: none waits); null when the database did not answer. */
    lagMs: number | null;
    /** Why it is down. */
    message?: string;
  }
>;

const DEFAULT_TIMEOUT_MS = 1_000;
/** The worker loop must have run within 3 poll intervals, or this long, whichever is longer. */
const MIN_LOOP_WINDOW_MS = 5_000;

/**
 * A health indicator for `@nestjs/terminus` (v11 and later): inject it anywhere the
 * module is imported, and hand `() => indicator.isHealthy('workflow', { maxLagMs })`
 * to `HealthCheckService.check`. Up when the database answers and this process's worker
 * loop has run within the last 3 poll intervals or 5 s, whichever is longer (a
 * `worker: false` process checks the database alone); down, with a `message` saying
 * why, otherwise, or when the oldest due step has waited longer than `maxLagMs`. The
 * wait is reported as `lagMs` either way.
 *
 * Terminus is imported only when a check runs, so the module works without it.
 */
@Injectable()
export class WorkflowHealthIndicator {
  constructor(
    @Inject(WORKFLOW_CONFIG) private readonly config: ResolvedWorkflowConfig,
    private readonly storage: WorkflowStorage,
    private readonly worker: WorkflowWorker,
    private readonly moduleRef: ModuleRef,
  ) {}

  async isHealthy<const Key extends string = 'workflow'>(
    key: Key = 'workflow' as Key,
    options: WorkflowHealthOptions = {},
  ): Promise<WorkflowHealthResult<Key>> {
    const maxLagMs = nonNegative(options.maxLagMs, 'maxLagMs');
    const timeoutMs = nonNegative(options.timeoutMs, 'timeoutMs') ?? DEFAULT_TIMEOUT_MS;
    const session = await healthSession(this.moduleRef, key);
    const problems: string[] = [];

    let lagMs: number | null = null;
    try {
      const oldest = await withTimeout(this.storage.oldestDue(), timeoutMs);
      lagMs = oldest === null ? 0 : Math.max(0, this.config.clock.now() - oldest);
    } catch (err) {
      problems.push(`database did not answer: ${(err as Error)?.message ?? String(err)}`);
    }

    const worker = this.config.worker;
    if (worker) {
      const beat = this.worker.loopBeatAt();
      const window = Math.max(3 * worker.pollIntervalMs, MIN_LOOP_WINDOW_MS);
      if (beat === undefined) problems.push('the worker loop is not running');
      else if (Date.now() - beat > window)
        problems.push(`the worker loop has not run for ${Date.now() - beat} ms (allowed: ${window} ms)`);
    }

    if (lagMs !== null && maxLagMs !== undefined && lagMs > maxLagMs)
      problems.push(`the oldest due step has waited ${lagMs} ms, over maxLagMs (${maxLagMs} ms)`);

    return (
      problems.length ? session.down({ lagMs, message: problems.join('; ') }) : session.up({ lagMs })
    ) as WorkflowHealthResult<Key>;
  }
}

function nonNegative(value: unknown, name: string): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !(value >= 0) || !Number.isFinite(value))
    throw new RangeError(`WorkflowHealthIndicator.isHealthy: ${name} must be a number >= 0, got ${String(value)}`);
  return value;
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  // The read goes on after a timeout; its late failure must not be an unhandled rejection.
  promise.catch(() => undefined);
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}
