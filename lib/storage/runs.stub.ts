/**
 * TEMPORARY stand-in for WorkflowService.listRuns / countRuns, which are landing on main.
 * The dashboard codes against their signatures; this file goes at the merge.
 */
import type { RunState, RunStatus } from '../interfaces/run.interface.js';
import { toStatus } from '../run-views.js';
import { WorkflowService } from '../workflow.service.js';
import { JobState, type RunRow } from './storage.types.js';
import type { StorageContext } from './tables.js';

export interface RunCounts {
  workflow: string;
  states: Record<RunState, number>;
}
export interface ListRunsFilter {
  workflow?: string;
  state?: RunState | RunState[];
  concurrencyKey?: string;
  parentRunId?: string;
  limit?: number;
  cursor?: string;
}

declare module '../workflow.service.js' {
  interface WorkflowService {
    listRuns(filter?: ListRunsFilter): Promise<{ runs: RunStatus[]; nextCursor?: string }>;
    countRuns(): Promise<RunCounts[]>;
  }
}

const STATES: RunState[] = ['pending', 'running', 'waiting', 'cancelling', 'succeeded', 'failed', 'cancelled'];
const stateSql: Record<RunState, string> = {
  pending: `(r.\`state\` = 'active' AND j.\`state\` IN (${JobState.Ready}, ${JobState.Scheduled}, ${JobState.Blocked}, ${JobState.Throttled}))`,
  running: `(r.\`state\` = 'active' AND j.\`state\` = ${JobState.Leased})`,
  waiting: `(r.\`state\` = 'active' AND j.\`state\` = ${JobState.Waiting})`,
  cancelling: "r.`state` = 'cancelling'",
  succeeded: "r.`state` = 'succeeded'",
  failed: "r.`state` = 'failed'",
  cancelled: "r.`state` = 'cancelled'",
};

async function ctxOf(service: WorkflowService): Promise<StorageContext> {
  return (service as any).storage.ready();
}

WorkflowService.prototype.listRuns = async function (this: WorkflowService, filter: ListRunsFilter = {}) {
  const ctx = await ctxOf(this);
  const where: string[] = [];
  const params: unknown[] = [];
  const eq = (column: string, value: unknown) => {
    if (value === undefined) return;
    where.push(`r.\`${column}\` = ?`);
    params.push(value);
  };
  eq('workflow', filter.workflow);
  eq('parent_run_id', filter.parentRunId);
  eq('concurrency_key', filter.concurrencyKey);
  if (filter.state !== undefined) {
    const states = Array.isArray(filter.state) ? filter.state : [filter.state];
    where.push(`(${states.map((s) => stateSql[s] ?? 'FALSE').join(' OR ') || 'FALSE'})`);
  }
  if (filter.cursor) {
    const [at, id] = Buffer.from(filter.cursor, 'base64url').toString().split(':');
    where.push('(r.`submitted_at` < ? OR (r.`submitted_at` = ? AND r.`id` < ?))');
    params.push(Number(at), Number(at), id);
  }
  const limit = Math.min(500, Math.max(1, filter.limit ?? 50));
  params.push(limit + 1);
  const rows = await ctx.client.query<RunRow[]>(
    `SELECT r.*, j.\`state\` AS job_state, j.\`attempts\` AS job_attempts, j.\`run_at\` AS job_run_at, j.\`wait_for\` AS job_wait_for, j.\`children_open\` AS job_children_open
      FROM ${ctx.t.runs} r LEFT JOIN ${ctx.t.jobs} j ON j.\`id\` = r.\`current_job_id\`
      ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY r.\`submitted_at\` DESC, r.\`id\` DESC LIMIT ?`,
    params,
  );
  const page = rows.slice(0, limit);
  const last = page[page.length - 1];
  return {
    runs: page.map(toStatus),
    ...(rows.length > limit
      ? { nextCursor: Buffer.from(`${last.submitted_at}:${last.id}`).toString('base64url') }
      : {}),
  };
};

WorkflowService.prototype.countRuns = async function (this: WorkflowService) {
  const ctx = await ctxOf(this);
  const rows = await ctx.client.query<Array<{ workflow: string; state: string; job_state: number | null; n: number }>>(
    `SELECT r.\`workflow\`, r.\`state\`, j.\`state\` AS job_state, COUNT(*) AS n
      FROM ${ctx.t.runs} r LEFT JOIN ${ctx.t.jobs} j ON j.\`id\` = r.\`current_job_id\`
      GROUP BY r.\`workflow\`, r.\`state\`, j.\`state\``,
  );
  const byWorkflow = new Map<string, RunCounts>();
  for (const row of rows) {
    let entry = byWorkflow.get(row.workflow);
    if (!entry) {
      entry = {
        workflow: row.workflow,
        states: Object.fromEntries(STATES.map((s) => [s, 0])) as Record<RunState, number>,
      };
      byWorkflow.set(row.workflow, entry);
    }
    const js = Number(row.job_state);
    const state = (
      row.state !== 'active'
        ? row.state
        : js === JobState.Leased
          ? 'running'
          : js === JobState.Waiting
            ? 'waiting'
            : 'pending'
    ) as RunState;
    entry.states[state] += Number(row.n);
  }
  return [...byWorkflow.values()].sort((a, b) => a.workflow.localeCompare(b.workflow));
};
