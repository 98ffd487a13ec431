import {
  handBack,
  hasBlocked,
  keyId,
  type KeysByQueue,
  KEYS_BLOCKED,
  keysNoneBlocked,
  keyStatements,
  promoteBlocked,
  readKeyState,
  releaseKeySlot,
} from './flow.js';
import { noHandlersGuard, queuesByWorkflow, readHandlers } from './handlers.js';
import { takeFromMailbox } from './signals.js';
import { runBatch, type Sql, type WriteResult } from './sql-client.js';
import { kindOf, Settle, type Settlement } from './settlements.js';
import {
  type ClaimedJob,
  type DeliveryRecord,
  JobKind,
  type NewJob,
  type NewRun,
  RunRowState,
  type SettleResult,
} from './storage.types.js';
import { insertRunsIn } from './submit.js';
import { countChanges } from './counts.js';
import { ulid } from '../utils/ulid.js';
import type { StorageContext } from './tables.js';
import {
  advanceRuns,
  allActive,
  countIs,
  deleteHeld,
  deleteJobs,
  deliveries,
  endRun,
  endRuns,
  GUARD_TRIPPED,
  insertDead,
  insertHistory,
  insertJobs,
  isLive,
  type LockedRun,
  lockRuns,
  releaseHeld,
  rescheduleHeld,
  rewriteAsSuccessors,
  type RunEnd,
  type Statement,
} from './transitions.js';

export interface SettleItem {
  job: ClaimedJob;
  settlement: Settlement;
  /** The delivery's history row (steps, with history on). */
  record?: DeliveryRecord;
}

/** Thrown inside the fast path's transaction to roll it back and take the careful path. */
const CAREFUL = Symbol('careful path');

/**
 * Settles many leased jobs in one transaction (group commit).
 *
 * Commits: per item, the fenced change of its job row (successor, delete, reschedule,
 *          hand-back), its run moved on or ended with one delivery per @OnTerminal
 *          handler, its dead letter.
 * Locks:   job rows (by the fenced writes), then their run rows, then dead rows.
 * Crash:   before COMMIT, every job stays leased and the reaper returns it when its
 *          lease expires; after, each transition is whole: a step's successor exists
 *          if and only if its settlement committed.
 *
 * A batch of fast kinds on jobs whose leases hold and whose runs are active takes the
 * fast path: a few multi-row statements. Anything else (a lost lease, a cancelling or
 * missing run, another kind) rolls that attempt back and applies each item with the
 * careful path, one after another in one transaction, with the same statements.
 */
export async function settleMany(ctx: StorageContext, items: SettleItem[]): Promise<SettleResult[]> {
  if (items.every(fastEligible)) {
    const fast = await ctx.client
      .transaction((sql) => settleFast(ctx, sql, items))
      .catch((err) => {
        if (err === CAREFUL || (err as { errno?: number })?.errno === GUARD_TRIPPED) return null;
        throw err;
      });
    if (fast) {
      ctx.stats.fastBatches++;
      return fast;
    }
  }
  const results = await ctx.client.transaction(async (sql) => {
    const out: SettleResult[] = [];
    for (const i of items) out.push(await settleOne(ctx, sql, i));
    return out;
  });
  ctx.stats.carefulBatches++;
  return results;
}

/**
 * A step that continues leaves its run row alone (status() reads the step from the job
 * row), which saves a row write per step. On Galera it is written all the same: there
 * the write is what makes certification order the settlement against a cancel
 * committed on another node, which only locks (node-locally) the job row.
 */
async function writesRunOnContinue(ctx: StorageContext): Promise<boolean> {
  return ctx.client.isGalera();
}

/** Step settlements that leave their run alone need the careful path's look at the run (it may be cancelling). */
function fastEligible(i: SettleItem): boolean {
  const kind = kindOf(i.settlement);
  return kind.fast && (i.job.kind === JobKind.Step ? kind.run !== 'keep' : kind.run === 'keep');
}

function runEnd(i: SettleItem): RunEnd & { priority: number; headers: string } {
  const { job, settlement } = i;
  return {
    runId: job.runId,
    stepNumber: job.stepNumber,
    attempts: job.attempts,
    priority: job.priority,
    headers: job.headers,
    ...kindOf(settlement).ending!(settlement),
  };
}

/** The fenced statement that applies `effect` to these items' job rows. */
function jobEffect(
  ctx: StorageContext,
  effect: ReturnType<typeof kindOf>['job'],
  items: SettleItem[],
  now: number,
): Statement {
  switch (effect) {
    case 'successor':
      return rewriteAsSuccessors(
        ctx.t,
        items.map((i) => ({ job: i.job, next: (i.settlement as { next: NewJob }).next })),
        now,
      );
    case 'delete':
      return deleteHeld(
        ctx.t,
        items.map((i) => i.job),
      );
    case 'reschedule':
      return rescheduleHeld(
        ctx.t,
        items.map((i) => ({ job: i.job, ...(i.settlement as { runAt: number; error: string }) })),
      );
    case 'release':
      return releaseHeld(
        ctx.t,
        items.map((i) => i.job),
      );
  }
}

/**
 * The whole batch in one or two round trips. The server checks each write's row count
 * (`countIs`): if one is off (a lost lease, a run that is not active) nothing commits
 * and the careful path runs. Batches whose ending runs have @OnTerminal handlers read
 * those runs first (deliveries carry the submission time) and take a second trip, and
 * so do batches whose keys have steps waiting for a slot (they read the keys, then free
 * slots with the COMMIT).
 */
async function settleFast(ctx: StorageContext, sql: Sql, items: SettleItem[]): Promise<SettleResult[]> {
  const now = ctx.now();
  const byJob = new Map<string, SettleItem[]>();
  for (const i of items) {
    const effect = kindOf(i.settlement).job;
    byJob.set(effect, [...(byJob.get(effect) ?? []), i]);
  }
  const steps = items.filter((i) => i.job.kind === JobKind.Step);
  const moving = steps.filter((i) => kindOf(i.settlement).run === 'advance');
  const ending = steps.filter((i) => kindOf(i.settlement).run === 'end');
  const workflows = [...new Set(ending.map((e) => e.job.queue))];
  // Only a hint: with no handler known, the trip checks that none exists after all.
  const notify = workflows.some((w) => ctx.handlers.cachedFor(w) > 0);
  const keyed = items.filter((i) => i.job.keySlot !== undefined);
  const keys: KeysByQueue = new Map();
  for (const i of keyed) {
    const list = keys.get(i.job.queue) ?? [];
    if (!list.includes(i.job.keySlot!)) list.push(i.job.keySlot!);
    keys.set(i.job.queue, list);
  }

  // Successors leased in place get tokens of one prefix per batch, so one expression sets
  // them all. A token issued before (a retry after an unanswered COMMIT, which looks for
  // it) is kept.
  const prefix = ulid();
  for (const i of items) {
    const next = (i.settlement as { next?: NewJob }).next;
    if (next?.leaseToken && !next.leaseToken.includes('/')) next.leaseToken = `${prefix}/${next.id}`;
  }
  const first: Statement[] = [];
  for (const [effect, list] of byJob)
    first.push(jobEffect(ctx, effect as ReturnType<typeof kindOf>['job'], list, now), countIs(list.length));
  const recorded = items.filter((i) => i.record !== undefined) as Array<SettleItem & { record: DeliveryRecord }>;
  if (recorded.length) first.push(insertHistory(ctx.t, recorded, now));
  if (moving.length) {
    first.push(
      ...((await writesRunOnContinue(ctx))
        ? [
            advanceRuns(
              ctx.t,
              moving.map((m) => ({
                runId: m.job.runId,
                stepNumber: (m.settlement as { next: NewJob }).next.stepNumber,
              })),
              now,
            ),
            countIs(moving.length),
          ]
        : [
            allActive(
              ctx.t,
              moving.map((m) => m.job.runId),
            ),
          ]),
    );
  }
  const ends = ending.map(runEnd);
  // Every ending run was active: the fast path ends no other (countIs, or the check below).
  const counted = countChanges(
    ctx.t,
    ending.map((e, i) => ({ workflow: e.job.queue, from: RunRowState.Active, to: ends[i].status })),
    now,
  );
  if (ending.length && !notify) {
    // A child's ending counts toward its parent (the careful path): endRuns leaves it, and countIs trips.
    first.push(endRuns(ctx.t, ends, now, true), countIs(ending.length), noHandlersGuard(ctx, workflows));
    if (counted) first.push(counted);
  }
  const notifyAt = first.length;
  if (ending.length && notify)
    first.push(
      readHandlers(ctx, workflows),
      lockRuns(
        ctx.t,
        ending.map((e) => e.job.runId),
      ),
    );
  // After the job effects: a step that left Leased is no longer counted against its key.
  const keysAt = first.length;
  // Keys with no step waiting for a slot have nothing to free: checked in the same trip.
  const hopeful = keys.size > 0 && !notify && !ctx.blockedKeys.anyOf(keys);
  if (keys.size) first.push(...(hopeful ? keysNoneBlocked(ctx.t, keys) : keyStatements(ctx.t, keys)));
  const oneTrip = !notify && (keys.size === 0 || hopeful);
  let results: unknown[];
  let keyResults: unknown[];
  try {
    results = await runBatch(sql, first, oneTrip);
    if (oneTrip) return items.map((): SettleResult => 'settled');
    keyResults = results.slice(keysAt, keysAt + 3);
  } catch (err) {
    if (!hopeful || (err as { errno?: number })?.errno !== KEYS_BLOCKED) throw err;
    // Everything before the check stands and the flow rows stay locked: read the keys as the two-trip form does.
    results = [];
    keyResults = await runBatch(sql, keyStatements(ctx.t, keys));
  }

  const second: Statement[] = [];
  if (notify) {
    const runs = results[notifyAt + 1] as LockedRun[];
    const queuesFor = queuesByWorkflow(ctx, results[notifyAt] as Array<{ workflow: string; queue: string }>, workflows);
    // A child's ending also counts toward its parent: the careful path does that.
    if (runs.length !== ending.length || runs.some((r) => r.state !== RunRowState.Active || r.parent_run_id))
      throw CAREFUL;
    const byId = new Map(runs.map((r) => [r.id, r]));
    const jobs = ends.flatMap((e) => {
      const run = byId.get(e.runId)!;
      return deliveries(queuesFor(run.workflow), ctx.deliveryAttempts, e, run, now);
    });
    second.push(endRuns(ctx.t, ends, now, false));
    if (counted) second.push(counted);
    if (jobs.length) second.push(insertJobs(ctx.t, jobs, now));
  }
  let handedBack: SettleItem[] = [];
  if (keys.size) {
    const state = readKeyState(keyResults);
    ctx.blockedKeys.saw(keys, state);
    // A successor keeps its key's slot only while no step of that key waits for one.
    handedBack = keyed.filter(
      (i) => staysLeased(i.settlement) && state.blocked.has(keyId(i.job.queue, i.job.keySlot!)),
    );
    if (handedBack.length)
      second.push(
        handBack(
          ctx.t,
          handedBack.map((i) => i.job.id),
          now,
        ),
      );
    for (const [queue, list] of keys) {
      for (const key of list) {
        const id = keyId(queue, key);
        if (!state.blocked.has(id)) continue;
        const back = handedBack.filter((i) => i.job.queue === queue && i.job.keySlot === key).length;
        const room = (state.limit.get(id) ?? 0) - ((state.leased.get(id) ?? 0) - back);
        if (room > 0) second.push(promoteBlocked(ctx.t, queue, key, room));
      }
    }
  }
  if (second.length) await runBatch(sql, second, true);
  for (const i of handedBack) delete (i.settlement as { next: NewJob }).next.leaseToken;
  return items.map((): SettleResult => 'settled');
}

/** A continue whose successor stays leased to the same worker (runs in place). */
function staysLeased(s: Settlement): boolean {
  return s.type === 'continue' && s.next.leaseToken !== undefined;
}

/**
 * One settlement inside the caller's transaction: the fenced job statement first (zero
 * rows: the lease was lost, nothing else is written), then the run row, locked and
 * looked at: active, it takes the kind's run effect; cancelling, it ends cancelled
 * whatever the step decided; missing or finished (a hand-edited table), the step is
 * kept as a dead letter an operator can see.
 */
export async function settleOne(ctx: StorageContext, sql: Sql, given: SettleItem): Promise<SettleResult> {
  const { job, settlement } = given;
  // A successor keeps its key's slot only while no step of that key waits for one (a plain
  // read: one that starts waiting just after is let in at this run's next settlement).
  if (job.keySlot !== undefined && staysLeased(settlement) && (await hasBlocked(ctx, sql, job.queue, job.keySlot)))
    delete (settlement as { next: NewJob }).next.leaseToken;
  const result = await applyOne(ctx, sql, given);
  if (result !== 'lost' && given.record) {
    const record = result === 'cancelled' ? { ...given.record, outcome: 'cancelled' } : given.record;
    await sql.query(...insertHistory(ctx.t, [{ job, record }], ctx.now()));
  }
  // Last in the lock order: the step left Leased, so its key has a slot free.
  if (result !== 'lost' && job.keySlot !== undefined && !staysLeased(settlement))
    await releaseKeySlot(ctx, sql, job.queue, job.keySlot);
  return result;
}

async function applyOne(ctx: StorageContext, sql: Sql, given: SettleItem): Promise<SettleResult> {
  const now = ctx.now();
  const item = await spawnable(ctx, sql, given);
  const { job, settlement } = item;
  const kind = kindOf(settlement);
  const res = await sql.query<WriteResult>(...jobEffect(ctx, kind.job, [item], now));
  if (res.affectedRows === 0) return 'lost';
  const dead = kind.deadLetter?.(settlement);

  if (job.kind !== JobKind.Step) {
    if (dead !== undefined) await sql.query(...insertDead(ctx.t, job, dead, now));
    return 'settled';
  }

  const [run] = await sql.query<LockedRun[]>(...lockRuns(ctx.t, [job.runId]));
  const stillThere = kind.job !== 'delete';
  if (!run || !isLive(run.state)) {
    if (stillThere) await sql.query(...deleteJobs(ctx.t, [job.id]));
    await sql.query(
      ...insertDead(ctx.t, job, `run ${job.runId} is missing or already finished; step not applied`, now),
    );
    return 'settled';
  }
  if (run.state === RunRowState.Cancelling) {
    if (stillThere) await sql.query(...deleteJobs(ctx.t, [job.id]));
    await endRun(sql, ctx, run, { ...runEnd({ job, settlement: { type: 'observeCancel' } }) }, now);
    return settlement.type === 'observeCancel' ? 'settled' : 'cancelled';
  }
  if (kind.run === 'advance') {
    const next = (settlement as { next: NewJob }).next;
    if (settlement.type !== 'continue' || (await writesRunOnContinue(ctx)))
      await sql.query(...advanceRuns(ctx.t, [{ runId: job.runId, stepNumber: next.stepNumber }], now));
    if (kind.mailbox && next.waitFor !== undefined)
      await takeFromMailbox(ctx, sql, job.id, job.runId, next.waitFor, now);
    if (kind.spawn) {
      const children = (settlement as { children: NewRun[] }).children;
      // Checked just before (spawnable); one taken since makes the whole transaction fail and the step run again.
      await insertRunsIn(ctx, sql, children, (existing) => {
        if (existing.size) throw new Error(`child run ids taken meanwhile: ${[...existing.keys()].join(', ')}`);
      });
    }
  } else if (kind.run === 'end') {
    await endRun(sql, ctx, run, runEnd(item), now);
  }
  if (dead !== undefined) await sql.query(...insertDead(ctx.t, job, dead, now));
  return 'settled';
}

/**
 * A spawn whose child run ids are taken already (by runs of other inputs, or not this
 * spawn's) cannot be applied: it fails the step permanently instead, saying which.
 */
async function spawnable(ctx: StorageContext, sql: Sql, item: SettleItem): Promise<SettleItem> {
  if (item.settlement.type !== 'spawn' || item.settlement.children.length === 0) return item;
  const ids = item.settlement.children.map((c) => c.id);
  const taken = await sql.query<Array<{ id: string }>>(`SELECT \`id\` FROM ${ctx.t.runs} WHERE \`id\` IN (?)`, [ids]);
  if (taken.length === 0) return item;
  const error = `spawn: child run id(s) already taken by other runs: ${taken
    .map((t) => t.id)
    .slice(0, 10)
    .join(', ')}`;
  return { job: item.job, settlement: Settle.deadLetter(error) };
}
