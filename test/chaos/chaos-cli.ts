/**
 * `npm run chaos`: the chaos test at any size, e.g.
 *   CHAOS_RUNS=20000 CHAOS_STEPS=10 CHAOS_WORKERS=3 CHAOS_KILL_EVERY_MS=2000 npm run chaos
 * With CHAOS_DB_RESTART_EVERY_MS=30000 it runs on a private MariaDB (port CHAOS_DB_PORT,
 * default a free one) that is SIGKILLed and restarted every 30 s as well
 * (CHAOS_DB_RESTARTS caps how many times).
 * With CHAOS_SIGNAL_EVERY=k (default 3; 0 turns it off) every k-th step waits for a signal
 * that the harness sends (CHAOS_SIGNAL_TIMEOUT_EVERY=m, default 50: the first wait of every
 * m-th run is left to time out).
 * With CHAOS_SPAWN_EVERY=k (default 4; 0 turns it off) every CHAOS_SPAWN_RUN_EVERY-th run
 * (default 4) spawns CHAOS_CHILDREN children (default 3, of CHAOS_CHILD_STEPS steps, default 3)
 * at every k-th step that does not wait; the first child of each spawn spawns
 * CHAOS_GRANDCHILDREN (default 2) of its own, and the first spawn of every
 * CHAOS_FAIL_FAST_EVERY-th spawning run (default 5) is a failFast group with a child that
 * fails on purpose (see child-plan.ts).
 * Workers report event-loop stalls over CHAOS_LAG_TRACK_MS (default 200; 0: none); a
 * duplicate whose earlier delivery lost its lease to the reaper on a live process counts
 * as a redelivery after lease expiry (with that process's longest stall), not as unexplained.
 * With CHAOS_CLUSTER=writer (or spread) it runs on the Galera cluster of test/cluster (started
 * if it is not up) through HAProxy's single-writer (or multi-primary) listener, and with
 * CHAOS_NODE_KILL_EVERY_MS=20000 a node (the writer, or each in turn) is SIGKILLed every 20 s
 * and restarted CHAOS_NODE_DOWN_MS later (default 3000); CHAOS_NODE_KILLS caps how many times.
 * Prints the figures; exits 1 if any invariant is broken.
 */
import { childrenHold, runChaos, signalsHold } from './chaos-harness.js';

const env = process.env;
const num = (name: string, fallback: number) => Number(env[name] ?? fallback);

const dbRestartEveryMs = num('CHAOS_DB_RESTART_EVERY_MS', 0);
const report = await runChaos({
  prefix: `chaos_${process.pid}_`,
  runs: num('CHAOS_RUNS', 2_000),
  steps: num('CHAOS_STEPS', 10),
  workers: num('CHAOS_WORKERS', 3),
  killEveryMs: num('CHAOS_KILL_EVERY_MS', 2_000),
  leaseMs: num('CHAOS_LEASE_MS', 1_500),
  stepDelayMs: num('CHAOS_STEP_DELAY_MS', 20),
  concurrency: num('CHAOS_CONCURRENCY', 16),
  timeoutMs: num('CHAOS_TIMEOUT_MS', 3_600_000),
  dbRestartEveryMs,
  dbRestartLimit: env.CHAOS_DB_RESTARTS ? Number(env.CHAOS_DB_RESTARTS) : undefined,
  dbPort: num('CHAOS_DB_PORT', 0),
  cluster: env.CHAOS_CLUSTER ? (env.CHAOS_CLUSTER as 'writer' | 'spread') : undefined,
  nodeKillEveryMs: num('CHAOS_NODE_KILL_EVERY_MS', 0),
  nodeKillLimit: env.CHAOS_NODE_KILLS ? Number(env.CHAOS_NODE_KILLS) : undefined,
  nodeDownMs: num('CHAOS_NODE_DOWN_MS', 3_000),
  signalEvery: num('CHAOS_SIGNAL_EVERY', 3),
  signalTimeoutEvery: num('CHAOS_SIGNAL_TIMEOUT_EVERY', 50),
  signalTimeoutMs: num('CHAOS_SIGNAL_TIMEOUT_MS', 1_000),
  spawnEvery: num('CHAOS_SPAWN_EVERY', 4),
  spawnRunEvery: num('CHAOS_SPAWN_RUN_EVERY', 4),
  children: num('CHAOS_CHILDREN', 3),
  childSteps: num('CHAOS_CHILD_STEPS', 3),
  grandchildren: num('CHAOS_GRANDCHILDREN', 2),
  failFastEvery: num('CHAOS_FAIL_FAST_EVERY', 5),
  lagTrackMs: num('CHAOS_LAG_TRACK_MS', 200),
  log: (line) => process.stdout.write(`${new Date().toISOString()} ${line}\n`),
});
process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
const ok =
  report.runsLost === 0 &&
  report.missingSteps === 0 &&
  report.unexpectedSteps === 0 &&
  report.duplicatesWithoutKill === 0 &&
  report.runsWithoutTerminalDelivery === 0 &&
  report.leftoverJobs === 0 &&
  report.countsDrift.length === 0 &&
  report.deadLetters === report.children.deliberateDeadLetters &&
  report.unexpectedWorkerExits.length === 0 &&
  signalsHold(report.signals) &&
  childrenHold(report.children);
// A run that asked for database restarts and got none did not test what it claims.
const restarted =
  (dbRestartEveryMs === 0 || report.dbRestarts > 0) &&
  (num('CHAOS_NODE_KILL_EVERY_MS', 0) === 0 || (report.cluster?.nodeFailures ?? 0) > 0);
process.stdout.write(ok ? 'chaos: all invariants hold\n' : 'chaos: INVARIANT BROKEN\n');
if (!restarted) process.stdout.write('chaos: no database restart or node failure happened (the runs finished first)\n');
process.exit(ok && restarted ? 0 : 1);
