import type { BlockedKeys } from './flow.js';
import type { HandlerDirectory } from './handlers.js';
import type { SqlClient } from './sql-client.js';
import { type ClaimedJob, JobKind } from './storage.types.js';

/** Quoted names of one prefix's tables. */
export interface Tables {
  runs: string;
  jobs: string;
  dead: string;
  handlers: string;
  signals: string;
  schedules: string;
  flow: string;
  flowStarts: string;
  history: string;
  counts: string;
}

export function tablesOf(prefix: string): Tables {
  const t = (name: string) => `\`${prefix}${name}\``;
  return {
    runs: t('runs'),
    jobs: t('jobs'),
    dead: t('dead'),
    handlers: t('handlers'),
    signals: t('signals'),
    schedules: t('schedules'),
    flow: t('flow'),
    flowStarts: t('flow_starts'),
    history: t('history'),
    counts: t('counts'),
  };
}

/** What every storage operation needs: the way to the database, the tables, the runtime clock, what it knows of the handlers. */
export interface StorageContext {
  client: SqlClient;
  t: Tables;
  now(): number;
  handlers: HandlerDirectory;
  /** maxAttempts of a terminal delivery. */
  deliveryAttempts: number;
  /** Whether deliveries leave history rows (the reaper's records of expired leases too). */
  history: boolean;
  /** Settle batches by the path that committed them (the fast one is the one to keep fast). */
  stats: { fastBatches: number; carefulBatches: number };
  /** Keys this process last saw with steps waiting for a slot (a hint for the settle path). */
  blockedKeys: BlockedKeys;
}

export const JOB_COLUMNS =
  '`id`, `queue`, `kind`, `state`, `priority`, `run_at`, `run_id`, `step_number`, `attempts`, `max_attempts`, `lease_token`, `lease_until`, `payload`, `headers`, `created_at`, `ckey`';
export const CLAIM_COLUMNS =
  '`id`, `queue`, `kind`, `run_id`, `step_number`, `attempts`, `handbacks`, `max_attempts`, `priority`, `payload`, `headers`, `received`, `children_open`, `ckey`, `started_at`';

/** A job row as `CLAIM_COLUMNS` reads it. */
export interface JobRow {
  id: string;
  queue: string;
  kind: number | string;
  run_id: string;
  step_number: number | string;
  attempts: number | string;
  handbacks: number | string;
  max_attempts: number | string | null;
  priority: number | string;
  payload: string;
  headers: string;
  received?: string | null;
  children_open?: number | string | null;
  ckey?: string | null;
  started_at?: number | string | null;
}

export function toClaimed(r: JobRow, token: string, attempts: number): ClaimedJob {
  return {
    id: r.id,
    queue: r.queue,
    kind: Number(r.kind) as JobKind,
    runId: r.run_id,
    stepNumber: Number(r.step_number),
    attempts,
    handbacks: Number(r.handbacks ?? 0),
    maxAttempts: Number(r.max_attempts),
    priority: Number(r.priority),
    payload: r.payload,
    headers: r.headers,
    received: r.received ?? null,
    childrenOpen: r.children_open == null ? null : Number(r.children_open),
    token,
  };
}
