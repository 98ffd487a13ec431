import type { ScheduleSpec } from './schedule.interface.js';
import type { SslOptions } from 'mysql2';
import type { DataSource } from 'typeorm';

export interface WorkflowConnectionOptions {
  /**
   * `mysql://user:pass@host:port/db`; other fields override its parts. `?ssl=true` turns
   * TLS on (verified against Node's CAs), `?ssl={"ca":"..."}` passes mysql2's SslOptions as JSON.
   */
  url?: string;
  host?: string;
  port?: number;
  username?: string;
  password?: string;
  database?: string;
  /** Connections in the module's own pool. Default 10. */
  poolSize?: number;
  /**
   * TLS for the module's own pool, as mysql2 takes it: SslOptions (e.g. `{ ca }`; the
   * server certificate is verified unless `rejectUnauthorized: false`), or the name of a
   * mysql2 SSL profile; `true` is `{}`. Overrides `?ssl=` in `url`. Default: no TLS.
   */
  ssl?: boolean | string | SslOptions;
}

export interface BackoffOptions {
  /** First retry delay. Default 1_000 ms. */
  baseMs?: number;
  /** Ceiling for any retry delay. Default 300_000 ms. */
  maxMs?: number;
}

export interface WorkerOptions {
  /** Steps in flight at once in this process. Default 16. */
  concurrency?: number;
  /** Idle poll interval when nothing wakes the worker. Default 250 ms. */
  pollIntervalMs?: number;
  /** Lease length; renewed automatically while a step runs. Default 30_000 ms. */
  leaseMs?: number;
  /** How long shutdown waits for in-flight steps before aborting them. Default 30_000 ms. */
  shutdownTimeoutMs?: number;
  /** Workflows this process works. Default: every discovered runner. */
  workflows?: string[];
}

export interface WorkflowDefaults {
  /** Deliveries per step, the first included. Default 3. */
  maxAttempts?: number;
  backoff?: BackoffOptions;
  /** Lower runs first. Default 0. */
  priority?: number;
}

export interface RetentionOptions {
  /** Finished runs are deleted this long after they finished. Default 7 days. */
  runsMs?: number;
  /** Dead letters are deleted this long after they died. Default 7 days. */
  deadMs?: number;
}

export interface WorkflowClock {
  now(): number;
  /** A clock that jumps (ManualClock) tells the worker, so what became due runs at once. */
  onChange?(fn: () => void): () => void;
}

export interface WorkflowModuleOptions {
  connection?: WorkflowConnectionOptions;
  /** The app's TypeORM DataSource, or the name it was registered under with @nestjs/typeorm. */
  dataSource?: DataSource | string;
  /** Prefix of every table. Default 'workflow_'. */
  tablePrefix?: string;
  /** Every delivery of a step leaves a StepRecord (`WorkflowService.history`). Default true. */
  history?: boolean;
  /** Create or upgrade the tables at startup, under a database lock. Default true. */
  autoMigrate?: boolean;
  /** `false`: this process only submits and observes. */
  worker?: false | WorkerOptions;
  defaults?: WorkflowDefaults;
  retention?: RetentionOptions;
  /** Workflow names this process may submit to without hosting their runner. */
  workflows?: string[];
  /** Largest serialized input, payload or result. Default 16 MiB. */
  maxPayloadBytes?: number;
  /** Time source for schedules (delays, backoff, timestamps). Default Date.now. */
  clock?: WorkflowClock;
  /** Upserted at startup by every process (never deleted by it); see WorkflowService.schedule. */
  schedules?: ScheduleSpec[];
}
