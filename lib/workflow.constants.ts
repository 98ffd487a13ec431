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
export const WORKFLOW_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.:\/-]{0,127}$/;
export const TABLE_PREFIX_PATTERN = /^[A-Za-z_][A-Za-z0-9_]{0,40}$/;
export const RESERVED_HEADER_PREFIX = 'workflow.';
