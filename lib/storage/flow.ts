/**
 * Flow control: `keyConcurrency` and `rateLimit`, held across every process by rows of
 * the `flow` table, one per (workflow, bucket), that the transactions of that bucket lock:
 *
 * - `c:<key>`: the steps of one concurrency key. Its running steps are counted, not kept
 *   in a counter: they are the key's Leased job rows (ix_key), so a process that dies
 *   holding slots gives them back when the reaper returns its expired leases; no slot can
 *   leak. A step over the limit is parked Blocked; a settlement that frees a slot makes
 *   the best Blocked one ready again, in its own transaction.
 * - `r*` (the workflow) or `r:<key>` (perKey; `r:` for runs without a key): a rate window.
 *   `flow_starts` keeps its last `limit` step starts as a ring whose slot `ring_next` is
 *   the oldest; a start is allowed when that slot is empty or older than `periodMs`, so no
 *   `periodMs` window ever holds more than `limit` starts, in the database clock, across
 *   restarts of every process. A step over the limit is parked Throttled, and the bucket's
 *   `wake_at` says when the window next has room (one ix_wake scan serves all buckets).
 *
 * Lock order: job rows, then run rows, then flow rows (sorted by bucket), then the
 * Blocked / Throttled job rows they release, SKIP LOCKED. A claim locks its candidates
 * SKIP LOCKED and then waits only for flow rows, and nothing that holds a flow row waits
 * for anything else, so no cycle can form.
 */
import type { Sql, WriteResult } from './sql-client.js';
import { JobState } from './storage.types.js';
import type { JobRow, StorageContext, Tables } from './tables.js';
import type { Statement } from './transitions.js';

export interface FlowLimits {
  keyConcurrency?: number;
  rate?: { limit: number; periodMs: number; perKey: boolean };
}

const concurrencyBucket = (key: string) => `c:${key}`;
const rateBucket = (rate: NonNullable<FlowLimits['rate']>, key: string | null) =>
  rate.perKey ? `r:${key ?? ''}` : 'r*';

export interface Admission {
  admitted: JobRow[];
  /** Writes that go with the claim's commit: ring starts, parked jobs, wake times. */
  writes: Statement[];
  /** When the earliest throttled bucket has room again, for a local wake-up. */
  wakeInMs?: number;
}

/**
 * Which of a claim's candidates (in claim order) may start now, inside the claim's
 * transaction. The rest are parked, and will be made ready again by whoever frees the
 * room they wait for.
 */
export async function admit(
  ctx: StorageContext,
  sql: Sql,
  queue: string,
  rows: JobRow[],
  limits: FlowLimits,
): Promise<Admission> {
  const { t } = ctx;
  const conc = limits.keyConcurrency;
  const rate = limits.rate;
  const keys = conc ? [...new Set(rows.filter((r) => r.ckey != null).map((r) => r.ckey!))] : [];
  const rateBuckets = rate ? [...new Set(rows.map((r) => rateBucket(rate, r.ckey ?? null)))] : [];
  const buckets = [...keys.map(concurrencyBucket), ...rateBuckets].sort();
  if (buckets.length === 0) return { admitted: rows, writes: [] };

  // Locks the bucket rows in key order (a lock, not a write, for the ones that exist), then
  // creates the missing ones. The limit in force is the claiming process's.
  const have = await sql.query<Array<{ bucket: string; climit: number | null }>>(
    `SELECT \`bucket\`, \`climit\` FROM ${t.flow} WHERE \`queue\` = ? AND \`bucket\` IN (?) ORDER BY \`bucket\` FOR UPDATE`,
    [queue, buckets],
  );
  const existing = new Map(have.map((h) => [h.bucket, h.climit === null ? null : Number(h.climit)]));
  const stale = buckets.filter((b) => !existing.has(b) || (b.startsWith('c:') && existing.get(b) !== conc));
  if (stale.length) {
    await sql.query(
      `INSERT INTO ${t.flow} (\`queue\`, \`bucket\`, \`climit\`) VALUES ? ON DUPLICATE KEY UPDATE \`climit\` = VALUES(\`climit\`)`,
      [stale.map((b) => [queue, b, b.startsWith('c:') ? conc : null])],
    );
  }
  const running = new Map<string, number>();
  if (keys.length) {
    const counted = await sql.query<Array<{ ckey: string; n: number | string }>>(
      `SELECT \`ckey\`, COUNT(*) AS n FROM ${t.jobs} FORCE INDEX (\`ix_key\`)
        WHERE \`queue\` = ? AND \`ckey\` IN (?) AND \`state\` = ${JobState.Leased} GROUP BY \`ckey\``,
      [queue, keys],
    );
    for (const c of counted) running.set(c.ckey, Number(c.n));
  }
  const rooms = rate ? await rateRooms(sql, t, queue, rows, rate, rateBuckets) : new Map<string, RateRoom>();

  const admitted: JobRow[] = [];
  const blocked: string[] = [];
  const parkedKeys = new Set<string>();
  const throttled: string[] = [];
  const waits = new Map<string, number>();
  for (const r of rows) {
    if (conc && r.ckey != null && (running.get(r.ckey) ?? 0) >= conc) {
      blocked.push(r.id);
      parkedKeys.add(r.ckey);
      continue;
    }
    if (rate) {
      const b = rateBucket(rate, r.ckey ?? null);
      const room = rooms.get(b)!;
      if (room.used >= room.free) {
        throttled.push(r.id);
        if (!waits.has(b)) waits.set(b, room.waitUs);
        continue;
      }
      room.used++;
    }
    if (conc && r.ckey != null) running.set(r.ckey, (running.get(r.ckey) ?? 0) + 1);
    admitted.push(r);
  }

  const writes: Statement[] = [];
  if (blocked.length) {
    writes.push(park(t, blocked, JobState.Blocked));
    ctx.blockedKeys.parked(queue, parkedKeys);
  }
  if (throttled.length) writes.push(park(t, throttled, JobState.Throttled));
  for (const [b, room] of rooms) if (room.used > 0) writes.push(...recordStarts(t, queue, b, room, rate!.limit));
  for (const [b, us] of waits) {
    writes.push([
      `UPDATE ${t.flow} SET \`wake_at\` = IF(\`wake_at\` IS NULL OR \`wake_at\` > DATE_ADD(UTC_TIMESTAMP(3), INTERVAL ? MICROSECOND),
        DATE_ADD(UTC_TIMESTAMP(3), INTERVAL ? MICROSECOND), \`wake_at\`) WHERE \`queue\` = ? AND \`bucket\` = ?`,
      [us, us, queue, b],
    ]);
  }
  const wakeInMs = waits.size ? Math.ceil(Math.min(...waits.values()) / 1000) : undefined;
  return { admitted, writes, wakeInMs };
}

function park(t: Tables, ids: string[], state: number): Statement {
  return [`UPDATE ${t.jobs} FORCE INDEX (PRIMARY) SET \`state\` = ${state} WHERE \`id\` IN (?)`, [ids]];
}

interface RateRoom {
  /** Ring position of the oldest start. */
  next: number;
  /** Starts allowed now: the leading ring slots that are empty or older than the period. */
  free: number;
  used: number;
  /** Microseconds until the first slot that is not free becomes free. */
  waitUs: number;
}

/** How many starts each rate bucket of these candidates allows now (their flow rows are locked). */
async function rateRooms(
  sql: Sql,
  t: Tables,
  queue: string,
  rows: JobRow[],
  rate: NonNullable<FlowLimits['rate']>,
  buckets: string[],
): Promise<Map<string, RateRoom>> {
  const state = await sql.query<
    Array<{ bucket: string; rlimit: number | null; period_ms: number | null; ring_next: number }>
  >(
    `SELECT \`bucket\`, \`rlimit\`, \`period_ms\`, \`ring_next\` FROM ${t.flow} WHERE \`queue\` = ? AND \`bucket\` IN (?)`,
    [queue, buckets],
  );
  const periodUs = rate.periodMs * 1000;
  const wanted = new Map<string, number[]>();
  const rooms = new Map<string, RateRoom>();
  for (const f of state) {
    let next = Number(f.ring_next);
    if (f.rlimit === null || Number(f.rlimit) !== rate.limit || Number(f.period_ms) !== rate.periodMs)
      next = await resizeRing(sql, t, queue, f.bucket, rate, f.rlimit === null ? 0 : Number(f.rlimit));
    const n = Math.min(rate.limit, rows.filter((r) => rateBucket(rate, r.ckey ?? null) === f.bucket).length);
    wanted.set(
      f.bucket,
      Array.from({ length: n }, (_, i) => (next + i) % rate.limit),
    );
    rooms.set(f.bucket, { next, free: n, used: 0, waitUs: periodUs });
  }
  const asked = [...wanted].filter(([, slots]) => slots.length > 0);
  if (asked.length === 0) return rooms;
  const slots = await sql.query<Array<{ bucket: string; slot: number; wait_us: number | string }>>(
    `SELECT \`bucket\`, \`slot\`, ? - TIMESTAMPDIFF(MICROSECOND, \`started_at\`, UTC_TIMESTAMP(3)) AS wait_us
      FROM ${t.flowStarts} WHERE \`queue\` = ? AND (${asked.map(() => '(`bucket` = ? AND `slot` IN (?))').join(' OR ')})`,
    [periodUs, queue, ...asked.flatMap(([b, s]) => [b, s])],
  );
  const waitOf = new Map(slots.map((s) => [`${s.bucket}/${s.slot}`, Number(s.wait_us)]));
  for (const [b, positions] of wanted) {
    const room = rooms.get(b)!;
    // The ring is in start order from `next`: the first slot still inside the window ends the run of free ones.
    const firstBusy = positions.findIndex((slot) => (waitOf.get(`${b}/${slot}`) ?? 0) > 0);
    if (firstBusy >= 0) {
      room.free = firstBusy;
      room.waitUs = waitOf.get(`${b}/${positions[firstBusy]}`)!;
    }
  }
  return rooms;
}

/** The starts admitted from a bucket's ring, written over its oldest slots, and the ring moved on. */
function recordStarts(t: Tables, queue: string, bucket: string, room: RateRoom, limit: number): Statement[] {
  const slots = Array.from({ length: room.used }, (_, i) => (room.next + i) % limit);
  return [
    [
      `INSERT INTO ${t.flowStarts} (\`queue\`, \`bucket\`, \`slot\`, \`started_at\`) VALUES ${slots.map(() => '(?, ?, ?, UTC_TIMESTAMP(3))').join(', ')}
        ON DUPLICATE KEY UPDATE \`started_at\` = VALUES(\`started_at\`)`,
      slots.flatMap((s) => [queue, bucket, s]),
    ],
    [
      `UPDATE ${t.flow} SET \`ring_next\` = ? WHERE \`queue\` = ? AND \`bucket\` = ?`,
      [(room.next + room.used) % limit, queue, bucket],
    ],
  ];
}

/**
 * A ring declared with another limit or period (a deploy changed it, or the bucket is new):
 * keeps the most recent starts that fit, oldest first from slot 0. Returns the new ring_next.
 */
async function resizeRing(
  sql: Sql,
  t: Tables,
  queue: string,
  bucket: string,
  rate: NonNullable<FlowLimits['rate']>,
  oldLimit: number,
): Promise<number> {
  let kept: Array<{ at: string }> = [];
  if (oldLimit > 0) {
    kept = await sql.query<Array<{ at: string }>>(
      `SELECT DATE_FORMAT(\`started_at\`, '%Y-%m-%d %H:%i:%s.%f') AS at FROM ${t.flowStarts}
        WHERE \`queue\` = ? AND \`bucket\` = ? ORDER BY \`started_at\` DESC LIMIT ?`,
      [queue, bucket, rate.limit],
    );
    await sql.query(`DELETE FROM ${t.flowStarts} WHERE \`queue\` = ? AND \`bucket\` = ?`, [queue, bucket]);
    kept.reverse();
  }
  if (kept.length) {
    await sql.query(`INSERT INTO ${t.flowStarts} (\`queue\`, \`bucket\`, \`slot\`, \`started_at\`) VALUES ?`, [
      kept.map((k, i) => [queue, bucket, i, k.at]),
    ]);
  }
  const next = kept.length % rate.limit;
  await sql.query(
    `UPDATE ${t.flow} SET \`rlimit\` = ?, \`period_ms\` = ?, \`ring_next\` = ? WHERE \`queue\` = ? AND \`bucket\` = ?`,
    [rate.limit, rate.periodMs, next, queue, bucket],
  );
  return next;
}

/**
 * After a settlement (or the reaper) took a step of `key` out of Leased, in the same
 * transaction: the best Blocked steps of that key, as many as now fit, become ready.
 * Returns how many. Nothing to do when no claim ever limited this key.
 */
export async function releaseKeySlot(ctx: StorageContext, sql: Sql, queue: string, key: string): Promise<number> {
  const { t } = ctx;
  const [flow] = await sql.query<Array<{ climit: number | null }>>(
    `SELECT \`climit\` FROM ${t.flow} WHERE \`queue\` = ? AND \`bucket\` = ? FOR UPDATE`,
    [queue, concurrencyBucket(key)],
  );
  if (!flow || flow.climit === null) return 0;
  const [{ n }] = await sql.query<Array<{ n: number | string }>>(
    `SELECT COUNT(*) AS n FROM ${t.jobs} FORCE INDEX (\`ix_key\`) WHERE \`queue\` = ? AND \`ckey\` = ? AND \`state\` = ${JobState.Leased}`,
    [queue, key],
  );
  const room = Number(flow.climit) - Number(n);
  if (room <= 0) return 0;
  // Waits for a held-back row someone holds for a moment (a signal, a cancel, a lease
  // renewal) rather than skip it: a skipped one would stay Blocked with its slot free.
  const res = await sql.query<WriteResult>(...promoteBlocked(t, queue, key, room));
  return res.affectedRows;
}

/**
 * Rate buckets whose window has room again: their Throttled steps, best first and at
 * most one window's worth, become ready for the next claim to admit (it checks the
 * window again, so waking a few too many only parks them again).
 *
 * Commits: the steps made ready, the bucket's next wake-up (another window later if it
 *          may hold more, else none). Locks: due flow rows, then the steps, SKIP LOCKED.
 * Crash:   idempotent; the next tick wakes what is left.
 */
export async function wakeThrottled(ctx: StorageContext, limit = 20): Promise<number> {
  const { t } = ctx;
  return ctx.client.transaction(async (sql) => {
    const due = await sql.query<
      Array<{ queue: string; bucket: string; rlimit: number | string; period_ms: number | string }>
    >(
      `SELECT \`queue\`, \`bucket\`, \`rlimit\`, \`period_ms\` FROM ${t.flow} FORCE INDEX (\`ix_wake\`)
        WHERE \`wake_at\` <= UTC_TIMESTAMP(3) ORDER BY \`wake_at\` LIMIT ? FOR UPDATE SKIP LOCKED`,
      [limit],
    );
    let woken = 0;
    for (const f of due) {
      const many = Number(f.rlimit);
      const scope = f.bucket === 'r*' ? '' : ' AND `ckey` <=> ?';
      const params: unknown[] = f.bucket === 'r*' ? [f.queue] : [f.queue, f.bucket.slice(2) || null];
      // Waits for a row someone holds for a moment rather than skip it (it would stay throttled, unwoken).
      const res = await sql.query<WriteResult>(
        `UPDATE ${t.jobs} FORCE INDEX (\`${f.bucket === 'r*' ? 'ix_claim' : 'ix_key'}\`) SET \`state\` = ${JobState.Ready}
          WHERE \`queue\` = ?${scope} AND \`state\` = ${JobState.Throttled}
          ORDER BY \`priority\`, \`run_at\`, \`id\` LIMIT ?`,
        [...params, many],
      );
      const ready = res.affectedRows;
      woken += ready;
      await sql.query(
        `UPDATE ${t.flow} SET \`wake_at\` = ${ready >= many ? 'DATE_ADD(UTC_TIMESTAMP(3), INTERVAL ? MICROSECOND)' : 'NULL'}
          WHERE \`queue\` = ? AND \`bucket\` = ?`,
        ready >= many ? [Number(f.period_ms) * 1000, f.queue, f.bucket] : [f.queue, f.bucket],
      );
    }
    return woken;
  });
}

/** The keys a batch of settlements touches, per workflow. */
export type KeysByQueue = Map<string, string[]>;

function keyedWhere(keys: KeysByQueue, column: string): [string, unknown[]] {
  const parts: string[] = [];
  const params: unknown[] = [];
  for (const [queue, list] of keys) {
    parts.push(`(\`queue\` = ? AND \`${column}\` IN (?))`);
    params.push(queue, column === 'bucket' ? list.map(concurrencyBucket) : list);
  }
  return [parts.join(' OR '), params];
}

/**
 * The fast settle path's look at the keys of its batch, after its job effects (so a step
 * that left Leased is no longer counted): the keys' flow rows locked, their limits, their
 * Leased counts and which of them have Blocked steps. Three statements, one round trip.
 */
export function keyStatements(t: Tables, keys: KeysByQueue): Statement[] {
  const [flowWhere, flowParams] = keyedWhere(keys, 'bucket');
  const [jobWhere, jobParams] = keyedWhere(keys, 'ckey');
  return [
    [
      `SELECT \`queue\`, \`bucket\`, \`climit\` FROM ${t.flow} WHERE ${flowWhere} ORDER BY \`queue\`, \`bucket\` FOR UPDATE`,
      flowParams,
    ],
    [
      `SELECT \`queue\`, \`ckey\`, COUNT(*) AS n FROM ${t.jobs} FORCE INDEX (\`ix_key\`)
        WHERE \`state\` = ${JobState.Leased} AND (${jobWhere}) GROUP BY \`queue\`, \`ckey\``,
      jobParams,
    ],
    [
      `SELECT \`queue\`, \`ckey\` FROM ${t.jobs} FORCE INDEX (\`ix_key\`)
        WHERE \`state\` = ${JobState.Blocked} AND (${jobWhere}) GROUP BY \`queue\`, \`ckey\``,
      jobParams,
    ],
  ];
}

/**
 * The one-trip form of `keyStatements`, for a batch none of whose keys was last seen with
 * steps waiting for a slot: the keys' flow rows locked, then a check that no step of them
 * is Blocked, so the batch commits in the same round trip. When one is (a claim parked it
 * since), the check fails with `KEYS_BLOCKED` (more than one row from a scalar subquery:
 * the same error on MySQL and MariaDB, told apart from the row-count guards), having
 * changed nothing: the transaction stays open, its flow rows locked, and the settlement
 * reads the key state (`keyStatements`) and frees slots as it would have.
 */
export function keysNoneBlocked(t: Tables, keys: KeysByQueue): Statement[] {
  const [flowWhere, flowParams] = keyedWhere(keys, 'bucket');
  const [jobWhere, jobParams] = keyedWhere(keys, 'ckey');
  return [
    [
      `SELECT \`queue\`, \`bucket\` FROM ${t.flow} WHERE ${flowWhere} ORDER BY \`queue\`, \`bucket\` FOR UPDATE`,
      flowParams,
    ],
    [
      `SET @wf_keys = (SELECT 1 UNION ALL (SELECT 1 FROM ${t.jobs} FORCE INDEX (\`ix_key\`)
        WHERE \`state\` = ${JobState.Blocked} AND (${jobWhere}) LIMIT 1))`,
      jobParams,
    ],
  ];
}

/** ER_SUBQUERY_NO_1_ROW: `keysNoneBlocked` found a Blocked step. */
export const KEYS_BLOCKED = 1242;

/**
 * Which keys this process last saw with Blocked steps (its claims parked some, or a
 * settlement read some), so their settlements read the key state at once rather than try
 * the one-trip form first. Only a hint: the one-trip form checks in the database.
 */
export class BlockedKeys {
  /** Keys are unbounded (one per tenant, say) and this is only a hint: past this many it starts over. */
  static readonly MAX = 10_000;
  private readonly seen = new Set<string>();
  anyOf(keys: KeysByQueue): boolean {
    for (const [queue, list] of keys) for (const key of list) if (this.seen.has(keyId(queue, key))) return true;
    return false;
  }
  /** After a settlement read the state of these keys. */
  saw(keys: KeysByQueue, state: KeyState): void {
    for (const [queue, list] of keys)
      for (const key of list) {
        const id = keyId(queue, key);
        if (state.blocked.has(id)) this.add(id);
        else this.seen.delete(id);
      }
  }
  parked(queue: string, keys: Iterable<string>): void {
    for (const key of keys) this.add(keyId(queue, key));
  }
  private add(id: string): void {
    if (this.seen.size >= BlockedKeys.MAX) this.seen.clear();
    this.seen.add(id);
  }
  get size(): number {
    return this.seen.size;
  }
}

export interface KeyState {
  limit: Map<string, number>;
  leased: Map<string, number>;
  blocked: Set<string>;
}

export const keyId = (queue: string, key: string) => `${queue}\n${key}`;

export function readKeyState(results: unknown[]): KeyState {
  const [flows, leased, blocked] = results as [
    Array<{ queue: string; bucket: string; climit: number | null }>,
    Array<{ queue: string; ckey: string; n: number | string }>,
    Array<{ queue: string; ckey: string }>,
  ];
  return {
    limit: new Map(
      flows.filter((f) => f.climit !== null).map((f) => [keyId(f.queue, f.bucket.slice(2)), Number(f.climit)]),
    ),
    leased: new Map(leased.map((l) => [keyId(l.queue, l.ckey), Number(l.n)])),
    blocked: new Set(blocked.map((b) => keyId(b.queue, b.ckey))),
  };
}

/** Up to `room` Blocked steps of one key made ready, best first (the key's flow row is locked). */
export function promoteBlocked(t: Tables, queue: string, key: string, room: number): Statement {
  return [
    `UPDATE ${t.jobs} FORCE INDEX (\`ix_key\`) SET \`state\` = ${JobState.Ready}
      WHERE \`queue\` = ? AND \`ckey\` = ? AND \`state\` = ${JobState.Blocked} ORDER BY \`priority\`, \`run_at\`, \`id\` LIMIT ?`,
    [queue, key, room],
  ];
}

/**
 * Successors that were to run in place, sent back to the queue instead: their key has
 * steps waiting for a slot. Queued as of `now`, as any successor that does not run in
 * place, so they line up behind the steps that were waiting first.
 */
export function handBack(t: Tables, ids: string[], now: number): Statement {
  return [
    `UPDATE ${t.jobs} FORCE INDEX (PRIMARY) SET \`state\` = ${JobState.Ready}, \`run_at\` = ?, \`lease_token\` = NULL,
      \`lease_until\` = NULL, \`attempts\` = 0, \`started_at\` = NULL WHERE \`id\` IN (?)`,
    [now, ids],
  ];
}

/** Whether any step of this key waits for a slot (a plain read: for a successor deciding to keep its slot). */
export async function hasBlocked(ctx: StorageContext, sql: Sql, queue: string, key: string): Promise<boolean> {
  const rows = await sql.query<unknown[]>(
    `SELECT 1 FROM ${ctx.t.jobs} FORCE INDEX (\`ix_key\`) WHERE \`queue\` = ? AND \`ckey\` = ? AND \`state\` = ${JobState.Blocked} LIMIT 1`,
    [queue, key],
  );
  return rows.length > 0;
}
