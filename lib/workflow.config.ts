import type { DataSource } from 'typeorm';
import { WorkflowConfigError } from './errors/workflow-config.error.js';
import type {
  WorkflowClock,
  WorkflowConnectionOptions,
  WorkflowModuleOptions,
} from './interfaces/workflow-module-options.interface.js';
import { connectionTarget } from './storage/connection-target.js';
import { DEFAULTS, LIMITS, TABLE_PREFIX_PATTERN, WORKFLOW_NAME_PATTERN } from './workflow.constants.js';
import type { BackoffPolicy } from './interfaces/backoff-policy.interface.js';
import type { ScheduleSpec } from './interfaces/schedule.interface.js';
import { InvalidScheduleError } from './errors/invalid-schedule.error.js';

export interface ResolvedWorkerConfig {
  concurrency: number;
  pollIntervalMs: number;
  leaseMs: number;
  shutdownTimeoutMs: number;
  workflows?: string[];
}

export interface ResolvedWorkflowConfig {
  connection?: WorkflowConnectionOptions;
  dataSource?: DataSource | string;
  tablePrefix: string;
  autoMigrate: boolean;
  worker: false | ResolvedWorkerConfig;
  defaults: { maxAttempts: number; backoff: BackoffPolicy; priority: number };
  retention: { runsMs: number; deadMs: number };
  /** Every delivery of a step leaves a StepRecord. */
  history: boolean;
  workflows: string[];
  maxPayloadBytes: number;
  clock: WorkflowClock;
  /** Declared schedules, checked against the discovered workflows and upserted at bootstrap. */
  schedules: ScheduleSpec[];
}

const systemClock: WorkflowClock = { now: () => Date.now() };

/** Applies defaults and rejects nonsense with a message that names the option and the fix. */
export function resolveConfig(options: WorkflowModuleOptions | undefined): ResolvedWorkflowConfig {
  if (!options || typeof options !== 'object') {
    throw new WorkflowConfigError('WorkflowModule.forRoot() needs options: give it `connection` or `dataSource`.');
  }
  const hasConnection = options.connection !== undefined && options.connection !== null;
  const hasDataSource = options.dataSource !== undefined && options.dataSource !== null;
  if (hasConnection === hasDataSource) {
    throw new WorkflowConfigError(
      hasConnection
        ? 'WorkflowModule: give either `connection` or `dataSource`, not both.'
        : 'WorkflowModule: give `connection` ({ url } or host/port/username/password/database) for a pool of its own, ' +
            "or `dataSource` (a TypeORM DataSource, or the name it has in TypeOrmModule) to share the app's.",
    );
  }
  // Parsed now for its errors (an unset URL, a bad port...), so they surface before any connection is tried.
  if (hasConnection) connectionTarget(options.connection!);
  const tablePrefix = options.tablePrefix ?? DEFAULTS.tablePrefix;
  if (typeof tablePrefix !== 'string' || !TABLE_PREFIX_PATTERN.test(tablePrefix)) {
    throw new WorkflowConfigError(
      `WorkflowModule: tablePrefix ${JSON.stringify(tablePrefix)} must match ${TABLE_PREFIX_PATTERN} (letters, digits, underscore; at most 41 characters).`,
    );
  }
  const worker =
    options.worker === false
      ? false
      : {
          concurrency: int(
            options.worker?.concurrency,
            DEFAULTS.concurrency,
            'worker.concurrency',
            1,
            LIMITS.maxConcurrency,
          ),
          pollIntervalMs: int(
            options.worker?.pollIntervalMs,
            DEFAULTS.pollIntervalMs,
            'worker.pollIntervalMs',
            1,
            LIMITS.maxTimerMs,
          ),
          leaseMs: int(options.worker?.leaseMs, DEFAULTS.leaseMs, 'worker.leaseMs', 100, LIMITS.maxTimerMs),
          shutdownTimeoutMs: int(
            options.worker?.shutdownTimeoutMs,
            DEFAULTS.shutdownTimeoutMs,
            'worker.shutdownTimeoutMs',
            0,
            LIMITS.maxTimerMs,
          ),
          workflows: options.worker?.workflows ? names(options.worker.workflows, 'worker.workflows') : undefined,
        };
  const clock = options.clock ?? systemClock;
  if (typeof clock.now !== 'function') throw new WorkflowConfigError('WorkflowModule: clock must have a now() method.');
  if (options.schedules !== undefined && !Array.isArray(options.schedules)) {
    throw new InvalidScheduleError(undefined, 'WorkflowModule option `schedules` must be an array of ScheduleSpec.');
  }
  return {
    connection: hasConnection ? options.connection : undefined,
    dataSource: hasDataSource ? options.dataSource : undefined,
    tablePrefix,
    autoMigrate: options.autoMigrate ?? true,
    worker,
    defaults: {
      maxAttempts: int(
        options.defaults?.maxAttempts,
        DEFAULTS.maxAttempts,
        'defaults.maxAttempts',
        1,
        LIMITS.maxAttempts,
      ),
      backoff: backoff(options.defaults?.backoff, 'defaults.backoff'),
      priority: int(
        options.defaults?.priority,
        DEFAULTS.priority,
        'defaults.priority',
        LIMITS.minPriority,
        LIMITS.maxPriority,
      ),
    },
    retention: {
      runsMs: int(options.retention?.runsMs, DEFAULTS.retentionMs, 'retention.runsMs', 0),
      deadMs: int(options.retention?.deadMs, DEFAULTS.retentionMs, 'retention.deadMs', 0),
    },
    history: bool(options.history, true, 'history'),
    workflows: options.workflows ? names(options.workflows, 'workflows') : [],
    maxPayloadBytes: int(
      options.maxPayloadBytes,
      DEFAULTS.maxPayloadBytes,
      'maxPayloadBytes',
      1,
      LIMITS.maxPayloadBytes,
    ),
    clock,
    schedules: options.schedules ? [...options.schedules] : [],
  };
}

export function backoff(
  value: { baseMs?: number; maxMs?: number } | undefined,
  where: string,
  fallback: BackoffPolicy = { baseMs: DEFAULTS.backoffBaseMs, maxMs: DEFAULTS.backoffMaxMs },
): BackoffPolicy {
  const baseMs = int(value?.baseMs, fallback.baseMs, `${where}.baseMs`, 0, LIMITS.maxDelayMs);
  const maxMs = int(value?.maxMs, Math.max(fallback.maxMs, baseMs), `${where}.maxMs`, 0, LIMITS.maxDelayMs);
  if (maxMs < baseMs)
    throw new WorkflowConfigError(`WorkflowModule: ${where}.maxMs (${maxMs}) is below baseMs (${baseMs}).`);
  return { baseMs, maxMs };
}

/** An integer option within [min, max] (max: what its column or timer holds; unbounded by default). */
export function int(
  value: unknown,
  fallback: number,
  name: string,
  min: number,
  max = Number.MAX_SAFE_INTEGER,
): number {
  if (value === undefined || value === null) return fallback;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) {
    throw new WorkflowConfigError(`WorkflowModule: ${name} must be an integer ${range(min, max)}, got ${show(value)}.`);
  }
  return value;
}

/** "from a to b", or ">= a" when only the safe-integer bound applies. */
export function range(min: number, max: number): string {
  return max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `from ${min} to ${max}`;
}

/** A value as a message shows it: JSON.stringify turns NaN and Infinity into "null". */
export function show(value: unknown): string {
  return typeof value === 'number' || typeof value === 'bigint'
    ? String(value)
    : (JSON.stringify(value) ?? String(value));
}

function names(list: unknown, option: string): string[] {
  if (!Array.isArray(list))
    throw new WorkflowConfigError(`WorkflowModule: ${option} must be an array of workflow names.`);
  for (const n of list) assertWorkflowName(n, `WorkflowModule option ${option}`);
  return [...list];
}

export function assertWorkflowName(name: unknown, where: string): asserts name is string {
  if (typeof name !== 'string' || !WORKFLOW_NAME_PATTERN.test(name)) {
    throw new WorkflowConfigError(
      `${where}: workflow name ${JSON.stringify(name)} must match ${WORKFLOW_NAME_PATTERN} (ASCII, at most 128 characters).`,
    );
  }
}

function bool(value: unknown, fallback: boolean, name: string): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean') throw new WorkflowConfigError(`${name} must be true or false, got ${show(value)}.`);
  return value;
}
