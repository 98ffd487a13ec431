import { REQUEST } from '@nestjs/core';

/**
 * Inject into a request-scoped runner or @OnTerminal host to get the Step (or the
 * RunOutcome) it was built for: `constructor(@Inject(STEP_REF) step: Step)`.
 */
export const STEP_REF = REQUEST;

export const STEP_RUNNER_METADATA = 'workflow:step_runner';
export const ON_TERMINAL_METADATA = 'workflow:on_terminal';

/** Resolved, validated module options (defaults applied). */
export const WORKFLOW_CONFIG = Symbol('WORKFLOW_CONFIG');

export const DEFAULTS = {
  tablePrefix: 'workflow_',
  concurrency: 16,
  pollIntervalMs: 250,
  leaseMs: 30_000,
  shutdownTimeoutMs: 30_000,
  maxAttempts: 3,
  backoffBaseMs: 1_000,
  backoffMaxMs: 300_000,
  priority: 0,
  retentionMs: 7 * 24 * 3600 * 1000,
  maxPayloadBytes: 16 * 1024 * 1024,
  poolSize: 10,
} as const;

export const RUN_ID_PATTERN = /^[A-Za-z0-9_-]{1,128}$/;
export const WORKFLOW_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$/;
/** Signal names: the same plain ASCII as workflow names. */
export const SIGNAL_NAME_PATTERN = WORKFLOW_NAME_PATTERN;
export const TABLE_PREFIX_PATTERN = /^[A-Za-z_][A-Za-z0-9_]{0,40}$/;
export const RESERVED_HEADER_PREFIX = 'workflow.';

/**
 * What the columns and the runtime can hold, checked at the API so nothing out of range
 * reaches the server (where it would be a raw ER_WARN_DATA_OUT_OF_RANGE, or silently
 * clamped under a lax sql_mode).
 */
export const LIMITS = {
  /** `priority` is a signed INT column; kept well inside it. */
  minPriority: -2_000_000_000,
  maxPriority: 2_000_000_000,
  /** `max_attempts` is INT UNSIGNED; more than this is a retry loop, not a policy. */
  maxAttempts: 1_000_000,
  /** Delays and backoffs: 10 years, so `now + delay` stays a safe integer in the BIGINT `run_at`. */
  maxDelayMs: 10 * 365 * 24 * 3600 * 1000,
  /** In-process timers (timeoutMs, poll, lease, shutdown): setTimeout fires at once past 2^31-1 ms. */
  maxTimerMs: 2_147_483_647,
  maxConcurrency: 10_000,
  /** A concurrencyKey, in characters (the VARCHAR(128) columns). */
  maxConcurrencyKeyLength: 128,
  /** rateLimit.limit: the window keeps one row per start it remembers. */
  maxRateLimit: 10_000,
  /** rateLimit.periodMs: one day. */
  maxRatePeriodMs: 24 * 3600 * 1000,
  /** maxPayloadBytes: the server's max_allowed_packet cannot exceed 1 GiB. */
  maxPayloadBytes: 1024 * 1024 * 1024,
  /** A fail/cancel reason, and the stored text of a thrown error, in UTF-8 bytes. */
  maxReasonBytes: 64 * 1024,
  /** Room in every packet for the SQL text, the other columns and the protocol header. */
  packetMarginBytes: 64 * 1024,
} as const;

/** Why `key` cannot be a concurrencyKey (undefined: it can, or it is absent). */
export function concurrencyKeyProblem(key: unknown): string | undefined {
  if (key === undefined) return undefined;
  if (typeof key !== 'string') return `must be a string, got ${key === null ? 'null' : typeof key}`;
  if (key.length === 0 || key.length > LIMITS.maxConcurrencyKeyLength)
    return `must be 1 to ${LIMITS.maxConcurrencyKeyLength} characters long, got ${key.length}`;
  return undefined;
}
