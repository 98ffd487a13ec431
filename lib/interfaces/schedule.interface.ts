/** A recurring start of a workflow: one run per tick of `cron`, across all processes. */
export interface ScheduleSpec {
  /** `^[A-Za-z0-9_-]{1,100}$`; a tick's run id is `${id}-${tick epoch ms}`. */
  id: string;
  workflow: string;
  /** Five fields (minute precision) or six (seconds first). */
  cron: string;
  /** IANA name; daylight-saving changes are followed. Default 'UTC'. */
  timeZone?: string;
  /** Every tick's run input. Default null. */
  input?: unknown;
  headers?: Record<string, string>;
  /** 'skip' (default): a tick is dropped while the previous run of this schedule has not ended. */
  overlap?: 'skip' | 'allow';
  /** Fires nothing while true. */
  paused?: boolean;
  /** Every tick's run gets this `concurrencyKey` (keyConcurrency, per-key rateLimit). */
  concurrencyKey?: string;
}

/** A stored schedule, with the defaults applied. */
export interface ScheduleInfo extends ScheduleSpec {
  timeZone: string;
  overlap: 'skip' | 'allow';
  paused: boolean;
  /** The next tick that will fire (or, if due, is about to); null while paused. */
  nextRunAt: Date | null;
  /** The run the latest fired tick started. */
  lastRunId?: string;
}
