import type { EntityManager } from 'typeorm';
import { ForeignEntityManagerError } from '../errors/foreign-entity-manager.error.js';
import { ulid } from '../utils/ulid.js';
import { MESSAGES } from '../workflow.messages.js';
import { CommitUnknownError, runBatch, type Sql, type WriteResult } from './sql-client.js';
import { type ClaimedJob, type Handoff, JobState, type ReserveSlot } from './storage.types.js';
import { CLAIM_COLUMNS, type JobRow, type StorageContext, toClaimed } from './tables.js';
import { lockCurrent } from './transitions.js';

export interface OutgoingSignal {
  runId: string;
  name: string;
  /** JSON text. */
  data: string;
  signalId: string;
  sentAt: number;
}

/** The `received` text of a step after a wait. Names and ids are plain ASCII (validated), data is JSON already. */
function receivedJson(s: { name: string; data: string; signalId: string; sentAt: number }): string {
  return `{"name":${JSON.stringify(s.name)},"timedOut":false,"data":${s.data},"signalId":${JSON.stringify(s.signalId)},"sentAt":${s.sentAt}}`;
}

/**
 * Wakes a parked job with the oldest unread signal of `name` in its run's mailbox, if
 * there is one: marks it read and makes the job claimable with it as `received`. Runs in
 * the caller's transaction, which holds the job row (job, run, then signal rows: the
 * global lock order).
 */
export async function takeFromMailbox(
  ctx: StorageContext,
  sql: Sql,
  jobId: string,
  runId: string,
  name: string,
  now: number,
): Promise<boolean> {
  const [oldest] = await sql.query<Array<{ signal_id: string; data: string; sent_at: number | string }>>(
    `SELECT \`signal_id\`, \`data\`, \`sent_at\` FROM ${ctx.t.signals} FORCE INDEX (\`ix_mailbox\`)
      WHERE \`run_id\` = ? AND \`name\` = ? AND \`consumed_at\` IS NULL ORDER BY \`sent_at\`, \`signal_id\` LIMIT 1 FOR UPDATE`,
    [runId, name],
  );
  if (!oldest) return false;
  await sql.query(`UPDATE ${ctx.t.signals} SET \`consumed_at\` = ? WHERE \`run_id\` = ? AND \`signal_id\` = ?`, [
    now,
    runId,
    oldest.signal_id,
  ]);
  const received = receivedJson({
    name,
    data: oldest.data,
    signalId: oldest.signal_id,
    sentAt: Number(oldest.sent_at),
  });
  await sql.query(
    `UPDATE ${ctx.t.jobs} SET \`state\` = ${JobState.Ready}, \`run_at\` = ?, \`wait_for\` = NULL, \`received\` = ?
      WHERE \`id\` = ? AND \`state\` = ${JobState.Waiting}`,
    [now, received, jobId],
  );
  return true;
}

/**
 * Stores a signal for a run and, if the run waits for that name, wakes it.
 *
 * Commits: the signal in the run's mailbox (unless its signalId is there already); if the
 *          run's job is parked on that name, the oldest unread signal of it marked read
 *          and the job made claimable with it as `received`.
 * Locks:   the run's current job row, then the run row (re-checking that the run did not
 *          move on in between), then signal rows: the global order. Rows by primary key
 *          only; an unknown run is found by a plain read first, so nothing takes a gap
 *          lock in a caller's transaction.
 * Crash:   before COMMIT, nothing is stored; after, the signal is read exactly once, by
 *          this wait or the next one of that name. A COMMIT whose reply is lost is judged
 *          by whether the signal is there.
 * False for an unknown or finished run (nothing stored), unless it is a repeat of a
 * signalId the run has stored.
 */
export async function sendSignal(
  ctx: StorageContext,
  s: OutgoingSignal,
  manager?: EntityManager,
  reserve?: ReserveSlot,
): Promise<boolean> {
  if (manager) {
    if (manager.dataSource !== ctx.client.dataSource)
      throw new ForeignEntityManagerError(MESSAGES.foreignEntityManager('signal'));
    return ctx.client.inManager(manager, (sql) => deliver(ctx, sql, s));
  }
  const offer: SlotOffer | undefined = reserve && { reserve };
  try {
    for (let lost = 0; ; lost++) {
      try {
        return await ctx.client.transaction((sql) => deliver(ctx, sql, s, offer));
      } catch (err) {
        if (!(err instanceof CommitUnknownError) || lost >= 3) throw err;
        // A lease this trip may have written is found by its token, so the step runs here and spends no attempt in vain.
        if (offer?.tried) offer.leased = await leasedTo(ctx, offer.tried.jobId, offer.tried.token, offer.received!);
        const [there] = await ctx.client.query<unknown[]>(...storedAlready(ctx, s));
        if (there) return true;
      }
    }
  } finally {
    if (offer?.hand && offer.leased) offer.hand.take(offer.leased);
    else offer?.hand?.release();
  }
}

/**
 * A slot of this process's worker for the step the signal wakes, asked for once per
 * send (a transaction run again keeps it), and what came of it.
 */
interface SlotOffer {
  reserve: ReserveSlot;
  asked?: boolean;
  hand?: Handoff;
  /** The lease the last trip wrote, by job id and lease token. */
  tried?: { jobId: string; token: string };
  received?: string;
  /** The step, leased to the slot by a committed trip. */
  leased?: ClaimedJob;
}

/** A locking read, so it waits for an unanswered COMMIT the server is still applying. */
async function leasedTo(ctx: StorageContext, jobId: string, token: string, received: string) {
  const [row] = await ctx.client.query<JobRow[]>(
    `SELECT ${CLAIM_COLUMNS} FROM ${ctx.t.jobs} FORCE INDEX (PRIMARY) WHERE \`id\` = ? AND \`state\` = ${JobState.Leased} AND \`lease_token\` = ? FOR UPDATE`,
    [jobId, token],
  );
  return row ? { ...toClaimed(row, token, Number(row.attempts)), received } : undefined;
}

/** Whether the run's mailbox holds this signalId (a plain read: no lock, no gap lock for a missing row). */
function storedAlready(ctx: StorageContext, s: OutgoingSignal): [string, unknown[]] {
  return [`SELECT 1 FROM ${ctx.t.signals} WHERE \`run_id\` = ? AND \`signal_id\` = ?`, [s.runId, s.signalId]];
}

/**
 * Four round trips on our own pool (the run read, its job and run rows locked, then the
 * writes with the COMMIT): the signal is stored and, when the run waits for its name,
 * consumed and the job woken, in one trip whose statements decide between themselves
 * whether this call stored it (its send key) and whether the job still waits for it.
 *
 * A job parked on a name never has an unread signal of that name in its mailbox: its wait
 * read the mailbox when it parked, under the job row's lock, and every signal since was
 * stored under that lock and woke it. So the oldest unread signal of the name, which a
 * wait takes, is this one: no need to look for another.
 */
async function deliver(ctx: StorageContext, sql: Sql, s: OutgoingSignal, offer?: SlotOffer): Promise<boolean> {
  const { t } = ctx;
  // A trip that is run again (a deadlock, or a COMMIT that failed) leased nothing.
  if (offer) offer.leased = offer.tried = undefined;
  const current = await lockCurrent(sql, t, s.runId);
  // A repeat of a signal the run has stored is still a yes once the run has ended (often
  // because of that very signal): a webhook retried late gets the answer its first try got.
  if (!current) return (await sql.query<unknown[]>(...storedAlready(ctx, s))).length > 0;
  const { job } = current;
  // A write before a read-back (as submit does): one key per call tells our row from an older one.
  const key = ulid(s.sentAt);
  const store: [string, unknown[]] = [
    `INSERT INTO ${t.signals} (\`run_id\`, \`signal_id\`, \`name\`, \`data\`, \`sent_at\`, \`send_key\`)
      VALUES (?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE \`run_id\` = \`run_id\``,
    [s.runId, s.signalId, s.name, s.data, s.sentAt, key],
  ];
  if (!job || Number(job.state) !== JobState.Waiting || job.wait_for !== s.name) {
    // Kept in the mailbox for the run's next wait of that name. The run row is written too:
    // a step parking on another node of a cluster writes it as well, so certification
    // orders the two (without it, neither sees the other, and the wake-up is lost). On one
    // server the run row is locked already (lockCurrent): no new lock, no extra trip.
    await runBatch(
      sql,
      [
        store,
        [`UPDATE ${t.runs} SET \`updated_at\` = GREATEST(\`updated_at\` + 1, ?) WHERE \`id\` = ?`, [s.sentAt, s.runId]],
      ],
      true,
    );
    return true;
  }
  const now = ctx.now();
  const received = receivedJson({ name: s.name, data: s.data, signalId: s.signalId, sentAt: s.sentAt });
  // Each statement checks for itself that this call stored the signal (its send key): a
  // count carried from one statement to the next (ROW_COUNT()) is not to be trusted when
  // the client goes away mid-trip, and the trip would commit a signal read but no wake-up.
  const ours = `SELECT 1 FROM ${t.signals} WHERE \`run_id\` = ? AND \`signal_id\` = ? AND \`send_key\` = ?`;
  const guard = [job.id, s.name, s.runId, s.signalId, key];
  // A free slot of this process's worker: the step is leased to it here, as a claim would
  // lease it, and runs once this commits, without a claim's second transaction and commit.
  if (offer && !offer.asked) {
    offer.asked = true;
    offer.hand = offer.reserve(job.queue, job.ckey != null);
  }
  const hand = offer?.hand;
  const token = hand && `${hand.token}/${job.id}`;
  const wake: [string, unknown[]] = hand
    ? [
        `UPDATE ${t.jobs} SET \`state\` = ${JobState.Leased}, \`run_at\` = ?, \`wait_for\` = NULL, \`received\` = ?,
          \`attempts\` = \`attempts\` + 1, \`lease_token\` = ?, \`lease_until\` = DATE_ADD(UTC_TIMESTAMP(3), INTERVAL ? MICROSECOND),
          \`max_attempts\` = COALESCE(\`max_attempts\`, ?), \`started_at\` = ?
          WHERE \`id\` = ? AND \`state\` = ${JobState.Waiting} AND \`wait_for\` = ? AND EXISTS (${ours})`,
        [now, received, token, hand.leaseMs * 1000, hand.maxAttempts, now, ...guard],
      ]
    : [
        `UPDATE ${t.jobs} SET \`state\` = ${JobState.Ready}, \`run_at\` = ?, \`wait_for\` = NULL, \`received\` = ?
          WHERE \`id\` = ? AND \`state\` = ${JobState.Waiting} AND \`wait_for\` = ? AND EXISTS (${ours})`,
        [now, received, ...guard],
      ];
  if (hand) {
    offer.tried = { jobId: job.id, token: token! };
    offer.received = received;
  }
  const results = await runBatch(
    sql,
    [
      store,
      wake,
      // Read now, unless the row was there already (a repeated signalId: stored once, read once).
      [
        `UPDATE ${t.signals} SET \`consumed_at\` = ? WHERE \`run_id\` = ? AND \`signal_id\` = ? AND \`send_key\` = ? AND \`consumed_at\` IS NULL`,
        [now, s.runId, s.signalId, key],
      ],
    ],
    true,
  );
  if (hand && (results[1] as WriteResult | undefined)?.affectedRows === 1) {
    offer.leased = {
      ...toClaimed(job, token!, Number(job.attempts) + 1),
      maxAttempts: Number(job.max_attempts ?? hand.maxAttempts),
      received,
    };
  }
  return true;
}

/**
 * Wakes parked jobs whose wait timed out, with `received.timedOut`.
 *
 * Commits: the due parked rows made claimable. Locks: those rows, SKIP LOCKED (a signal
 * that holds one wins; it is then no longer parked). Crash: the next tick goes on.
 */
export async function wakeTimedOut(ctx: StorageContext, limit = 500): Promise<number> {
  return ctx.client.transaction(async (sql) => {
    const rows = await sql.query<Array<{ id: string; wait_for: string }>>(
      `SELECT \`id\`, \`wait_for\` FROM ${ctx.t.jobs} FORCE INDEX (\`ix_state\`)
        WHERE \`state\` = ${JobState.Waiting} AND \`run_at\` <= ? ORDER BY \`run_at\` LIMIT ? FOR UPDATE SKIP LOCKED`,
      [ctx.now(), limit],
    );
    for (const r of rows) {
      await sql.query(
        `UPDATE ${ctx.t.jobs} SET \`state\` = ${JobState.Ready}, \`wait_for\` = NULL, \`received\` = ? WHERE \`id\` = ?`,
        [`{"name":${JSON.stringify(r.wait_for)},"timedOut":true}`, r.id],
      );
    }
    return rows.length;
  });
}
