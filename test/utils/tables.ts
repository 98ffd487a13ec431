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
