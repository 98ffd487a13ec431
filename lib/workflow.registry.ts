import { Injectable } from '@nestjs/common';
import type { StepRunner } from './interfaces/step-runner.interface.js';
import type { RunOutcome } from './interfaces/run.interface.js';
import type { BackoffPolicy } from './interfaces/backoff-policy.interface.js';
import type { FlowLimits } from './storage/flow.js';

export interface RunnerBinding {
  name: string;
  /** `Class#runStep`, for logs. */
  label: string;
  maxAttempts: number;
  backoff: BackoffPolicy;
  priority: number;
  concurrency: number;
  timeoutMs?: number;
  /** keyConcurrency and rateLimit, when the runner declares either: its claims go through flow.ts. */
  limits?: FlowLimits;
  /** The instance for this step: the singleton, or a fresh one for request-scoped runners. */
  resolve(step: object): Promise<StepRunner>;
}

export interface TerminalHandlerBinding {
  /** Queue of this handler's deliveries: stable across deploys as long as the class and method keep their names. */
  queue: string;
  /** `Class#method`, for logs. */
  label: string;
  workflows?: ReadonlySet<string>;
  invoke(outcome: RunOutcome): Promise<void>;
}

/**
 * What the explorer found in this application: runners by workflow name and terminal
 * handlers. One per application, never static, so two apps in one process (tests)
 * stay apart.
 */
@Injectable()
export class WorkflowRegistry {
  readonly runners = new Map<string, RunnerBinding>();
  readonly handlers = new Map<string, TerminalHandlerBinding>();
  /** Names `submit` accepts: discovered runners plus `options.workflows`. */
  readonly submittable = new Set<string>();
  maxAttempts = 3;
  /** Workflows this process's worker claims: every hosted one, a listed subset, or none (`worker: false`). */
  claims: 'all' | 'none' | ReadonlySet<string> = 'none';
  private readonly fanout = new Map<string, readonly string[]>();

  /** Whether this process's worker claims steps of `name`. */
  runsHere(name: string): boolean {
    if (!this.runners.has(name) || this.claims === 'none') return false;
    return this.claims === 'all' || this.claims.has(name);
  }

  /** Queues of this process's handlers that want `workflow` (other processes may host more). */
  queuesFor(workflow: string): readonly string[] {
    let queues = this.fanout.get(workflow);
    if (!queues) {
      queues = [...this.handlers.values()].filter((h) => !h.workflows || h.workflows.has(workflow)).map((h) => h.queue);
      this.fanout.set(workflow, queues);
    }
    return queues;
  }
}
