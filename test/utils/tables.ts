import { rawConnection } from './db.js';

export interface RowCounts {
  runs: number;
  jobs: number;
  dead: number;
}

/** How many rows each workflow table holds now, read straight from the database. */
export async function countRows(prefix: string): Promise<RowCounts> {
  const conn = await rawConnection();
  try {
    const counts = {} as RowCounts;
    for (const t of ['runs', 'jobs', 'dead'] as const) {
      const [rows] = await conn.query(`SELECT COUNT(*) AS n FROM \`${prefix}${t}\``);
      counts[t] = Number((rows as Array<{ n: number | string }>)[0].n);
    }
    return counts;
  } finally {
    await conn.end();
  }
}

/** Every row of `${prefix}runs` and `${prefix}jobs`, ordered by id, to prove a call changed nothing. */
export async function snapshotRows(prefix: string): Promise<{ runs: unknown[]; jobs: unknown[] }> {
  const conn = await rawConnection();
  try {
    const [runs] = await conn.query(`SELECT * FROM \`${prefix}runs\` ORDER BY \`id\``);
    const [jobs] = await conn.query(`SELECT * FROM \`${prefix}jobs\` ORDER BY \`id\``);
    return { runs: runs as unknown[], jobs: jobs as unknown[] };
  } finally {
    await conn.end();
  }
}

/** Rows of `${prefix}jobs` belonging to one run (steps and terminal deliveries still queued or running). */
export async function jobsOfRun(prefix: string, runId: string): Promise<number> {
  const conn = await rawConnection();
  try {
    const [rows] = await conn.query(`SELECT COUNT(*) AS n FROM \`${prefix}jobs\` WHERE \`run_id\` = ?`, [runId]);
    return Number((rows as Array<{ n: number | string }>)[0].n);
  } finally {
    await conn.end();
  }
}

export interface JobRowView {
  id: string;
  queue: string;
  kind: number;
  state: number;
  step_number: number;
  attempts: number;
  lease_token: string | null;
  /** ms from now (database clock) until the lease ends; null when not leased. */
  lease_left_ms: number | null;
}

/** The live queue rows of one run, straight from the table. */
export async function jobRows(prefix: string, runId: string): Promise<JobRowView[]> {
  const conn = await rawConnection();
  try {
    const [rows] = await conn.query(
      `SELECT id, queue, kind, state, step_number, attempts, lease_token,
              TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(3), lease_until) / 1000 AS lease_left_ms
         FROM \`${prefix}jobs\` WHERE run_id = ? ORDER BY id`,
      [runId],
    );
    return (rows as any[]).map((r) => ({
      ...r,
      kind: Number(r.kind),
      state: Number(r.state),
      step_number: Number(r.step_number),
      attempts: Number(r.attempts),
      lease_left_ms: r.lease_left_ms === null ? null : Number(r.lease_left_ms),
    }));
  } finally {
    await conn.end();
  }
}

/** Dead-letter rows of one run, straight from the table. */
export async function deadRows(prefix: string, runId: string): Promise<Array<{ job_id: string; attempts: number }>> {
  const conn = await rawConnection();
  try {
    const [rows] = await conn.query(`SELECT job_id, attempts FROM \`${prefix}dead\` WHERE run_id = ?`, [runId]);
    return (rows as any[]).map((r) => ({ job_id: r.job_id, attempts: Number(r.attempts) }));
  } finally {
    await conn.end();
  }
}
