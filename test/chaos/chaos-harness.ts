import { appendFileSync } from 'node:fs';
import type { TestingModule } from '@nestjs/testing';
import type { Connection } from 'mysql2/promise';
import { WorkflowService } from 'nestjs-durable-workflow';
import { startApp } from '../utils/create-test-app.js';
import { DB_URL, dropTables, rawConnection } from '../utils/db.js';
import { GaleraCluster } from '../cluster/cluster.js';
import { PrivateMariaDb } from '../utils/private-db.js';
import { createJournal, startWorker, type WorkerProcess } from '../utils/processes.js';
import {
  type ChildInput,
  childId,
  DELIBERATE_FAILURE,
  grandchildInputs,
  type SpawnOptions,
  spawnAt,
  spawnOptionsToEnv,
} from './child-plan.js';

export interface ChaosOptions {
  prefix: string;
  runs: number;
  steps: number;
  workers: number;
  killEveryMs: number;
  leaseMs: number;
  stepDelayMs: number;
  /** Steps in flight per worker process. */
  concurrency: number;
  timeoutMs: number;
  /**
   * 0 (the default): the shared database, never restarted. Otherwise the whole test runs
   * on a private MariaDB of its own, and every `dbRestartEveryMs` its server is SIGKILLed
   * (a crash, not a clean stop) and started again on the same data directory, while the
   * workers keep running and being killed. The first crash comes once half the runs are
   * submitted, so the submitter meets one too.
   */
  dbRestartEveryMs?: number;
  /** Workers report event-loop stalls over this many ms (default 200; 0: none), to attribute duplicates. */
  lagTrackMs?: number;
  /** Runs per submitMany call (default 500). */
  submitBatch?: number;
  /** At most this many database restarts (default: no limit). */
  dbRestartLimit?: number;
  /** TCP port of the private MariaDB (with `dbRestartEveryMs`). */
  dbPort?: number;
  /**
   * Run on the three-node Galera cluster of test/cluster (started if it is not up), through
   * HAProxy: 'writer' is the single-writer listener (node 1, the others as backups), 'spread'
   * the multi-primary one (connections spread over all three nodes).
   */
  cluster?: 'writer' | 'spread';
  /**
   * With `cluster`: every this many ms (the first once half the runs are submitted) one node
   * is SIGKILLed, the current writer in 'writer' mode, each node in turn in 'spread' mode,
   * and started again `nodeDownMs` later (default 3000); it rejoins by IST or SST. 0: none.
   */
  nodeKillEveryMs?: number;
  /** At most this many node failures (default: no limit). */
  nodeKillLimit?: number;
  nodeDownMs?: number;
  /**
   * 0 (the default): no waits. Otherwise every step n with n % signalEvery === signalEvery - 1
   * (but the last) waits for the signal `chaos-<n + 1>`, which a signaller in this process (a
   * `worker: false` app of its own) sends while the kills go on: some before the run reaches
   * the wait (the mailbox), some twice with one signalId (dedup); the step after journals what
   * it received.
   */
  signalEvery?: number;
  /** Runs `run-<i>` with i % signalTimeoutEvery === 0 get no signal for their first wait, which times out (0: none; default 0). */
  signalTimeoutEvery?: number;
  /** The timeout of those waits (default 1000 ms). */
  signalTimeoutMs?: number;
  /** The share of signals sent before the run waits (default 0.3). */
  signalEarlyShare?: number;
  /** The share of signals sent twice with one signalId (default 0.2), half of them concurrently. */
  signalDuplicateShare?: number;
  /**
   * 0 (the default): no children. Otherwise runs `run-<i>` with i % spawnRunEvery === 0
   * spawn children at every step n with n % spawnEvery === spawnEvery - 1 (not the last,
   * not a wait), as test/chaos/child-plan.ts says; the step after each spawn journals the
   * children's outcomes it was given.
   */
  spawnEvery?: number;
  /** Which runs spawn (default 1: all). */
  spawnRunEvery?: number;
  /** Children per spawn (default 3). */
  children?: number;
  /** Steps of each child (default 3). */
  childSteps?: number;
  /** Children the first child of each spawn spawns at its step 1 (default 2). */
  grandchildren?: number;
  /** The first spawn of every m-th spawning run is a failFast group whose second child fails on purpose (0: none; default 0). */
  failFastEvery?: number;
  log?: (line: string) => void;
}

export interface ChildReport {
  /** `spawnEvery`; 0 when no run spawns. */
  every: number;
  /** Spawns planned (the spawning steps of runs and of children), and of them failFast groups. */
  spawns: number;
  failFastGroups: number;
  /** Child runs planned (grandchildren included), and the runs rows with a parent. */
  planned: number;
  created: number;
  /** Planned children whose parent was cancelled (by a failFast group) before it spawned them. */
  notSpawned: number;
  /** How the planned children ended. */
  succeeded: number;
  failed: number;
  cancelled: number;
  /** Children that fail on purpose (one per failFast group), and of them those with a dead letter (StepError.permanent). */
  deliberateFailures: number;
  deliberateDeadLetters: number;
  /** Deliveries of children's steps (duplicates included). */
  childDeliveries: number;
  /** Steps after a spawn, and how many journaled, in every delivery, every child's outcome in spawn order as the runs table has it. */
  joins: number;
  joined: number;
  /** Spawns of children that a failFast group cancelled before they resumed. */
  notResumed: number;
  /** Descendants of a run cancelled by a failFast group, and how many of them were cancelled too (the rest ended before it). */
  underCancelled: number;
  cancelledWithParent: number;
  /** Must all be 0: */
  missingChildren: number;
  unexpectedChildren: number;
  wrongLinks: number;
  wrongOutcomes: number;
  wrongJoins: number;
  missingJoins: number;
  earlyJoins: number;
  unexpectedDeadLetters: number;
  /**
   * A child that was to be cancelled (a sibling of a deliberate failure, or below a run a
   * failFast group cancelled) and did not end cancelled, yet began a step well after its
   * cancel was due (1 s after the failure for siblings, 0.5 s after the cancelled ancestor),
   * with no kill or crash in between.
   */
  ranAfterCancelDue: number;
  /** Examples of what broke, for the investigation. */
  problems: string[];
}

export interface SignalReport {
  /** `signalEvery`; 0 when no run waits. */
  every: number;
  /** Waits planned (every run's), deliberate timeouts included. */
  waits: number;
  /** Distinct signals sent (signalIds), extras not included. */
  sent: number;
  /** Of those, sent twice with the same signalId (concurrently or one after the other). */
  duplicatesSent: number;
  /** Sent before the run was seen waiting for it (the mailbox, or a race with the wait). */
  early: number;
  /** Of the early ones, stored before the step that waits had even begun: certainly read from the mailbox. */
  earlyBeforeWaitStep: number;
  /** Sent once the run was seen waiting for it. */
  late: number;
  /** Signals whose following step journaled exactly that signal (id and data), and nothing else, in every delivery. */
  read: number;
  /** signal() calls sent again after a connection error (same signalId). */
  retries: number;
  /** Waits left to time out on purpose, and how many of them the next step saw as timedOut. */
  deliberateTimeouts: number;
  timedOut: number;
  /** Signals of a name no step waits for, sent to the runs that time out: must stay unread. */
  extras: number;
  /** Must all be 0: */
  refused: number;
  unexpectedTimeouts: number;
  wrongReceived: number;
  unread: number;
  extrasConsumed: number;
  missingSignalRows: number;
  unknownSignalRows: number;
  /** A poll begun after a signal was stored still saw its run waiting for it. */
  parkedWithSignalStored: number;
  /** Jobs parked (waiting) once every run had finished. */
  waitingAtEnd: number;
  /** Examples of what broke, for the investigation. */
  problems: string[];
}

export interface ClusterReport {
  mode: 'writer' | 'spread';
  /** SIGKILLs of a node, each followed by its restart and rejoin. */
  nodeFailures: number;
  killedNodes: number[];
  /** From each SIGKILL of a node until it was Synced again. */
  nodeDowntimeMs: number[];
  /** wsrep_local_cert_failures + wsrep_local_bf_aborts, summed over the nodes and their restarts. */
  certificationFailures: number;
}

export interface ChaosReport {
  runs: number;
  steps: number;
  workers: number;
  kills: number;
  /** The shared database, or a private one that was crashed and restarted. */
  database: 'shared' | 'private' | 'cluster';
  /** SIGKILLs of the database server, each followed by a restart on the same data. */
  dbRestarts: number;
  /** From each SIGKILL of the server until it accepted a connection again. */
  dbDowntimeMs: number[];
  /** Submits (batches of `submitBatch` runs, fixed run ids) that failed with a connection error and were sent again. */
  submitRetries: number;
  /** With `cluster`. */
  cluster?: ClusterReport;
  elapsedMs: number;
  stepsPerSecond: number;
  succeeded: number;
  notSucceeded: Array<{ id: string; state: string }>;
  /** (run, step) pairs never journaled (children included: all their steps, or those before a deliberate failure, or a prefix when cancelled). */
  missingSteps: number;
  /** Steps journaled that their run does not have (past its last, or past a deliberate failure). */
  unexpectedSteps: number;
  /** Deliveries beyond the first of a (run, step), children's included. */
  duplicateDeliveries: number;
  /**
   * Duplicates whose earlier delivery's process was SIGKILLed before the next delivery
   * began (and no more than 2 s before the earlier one's journal row started on the server).
   */
  duplicatesAroundKill: number;
  /**
   * Duplicates whose earlier delivery was on a live process and was journaled before a
   * database crash that came before the next delivery (its settlement may have been lost
   * with the connection).
   */
  duplicatesAroundDbRestart: number;
  /**
   * On a cluster: duplicates whose earlier delivery began before, and the next after, the
   * start of a window in which the cluster stalls commits: from a node's SIGKILL until the
   * others evict it (evs.suspect_timeout, 5 s, plus the view change: 7 s allowed), and from
   * the node's restart until it is Synced again (its join changes the view too). A step
   * whose settlement waits longer than its lease is run again.
   */
  duplicatesAroundNodeFailure: number;
  /** The longest time from such an earlier delivery to the crash after it. */
  maxDbRestartDuplicateLeadMs: number;
  /**
   * Duplicates whose earlier delivery was on a live process (no kill of it, no database
   * crash in between) and lost its lease: the reaper's `lease-expired` record of that very
   * attempt is in the history. At-least-once redelivery, as designed, of a step whose
   * process did not renew its lease in time (an event-loop stall, no CPU, a slow database).
   */
  duplicatesAfterLeaseExpiry: number;
  /** Of those, the ones whose earlier delivery began within 5 s of its process's start (pools still filling, code still cold). */
  leaseExpiriesInFirst5s: number;
  /** Of those, the ones whose process reported an event-loop stall of a third of the lease (a renewal period) or more between the delivery's start (less a lease) and the reaping. */
  leaseExpiriesWithStall: number;
  /**
   * Examples of those: the process, its longest stall in that window, and when the lease
   * was reaped and the step delivered again, relative to the earlier delivery's journal row.
   */
  leaseExpiries: Array<{
    runId: string;
    step: number;
    pid: number;
    longestStallMs: number;
    /** How long the process had been running when the delivery began. */
    workerAgeMs: number;
    /** When the delivery was leased (its claim, or the settlement that leased it in place): negative, before its journal row. */
    leasedAfterMs: number;
    reapedAfterMs: number;
    nextAfterMs: number;
  }>;
  /** Event-loop stalls over `lagTrackMs` the workers reported: how many, the longest, how many longer than the lease. */
  eventLoopStalls: { count: number; longestMs: number; overLease: number; overThirdOfLease: number };
  /**
   * Duplicates whose earlier delivery was cut off neither by a kill of its process nor by a
   * database crash (neither happened between it and the next delivery), and did not lose its
   * lease to the reaper either: must be 0.
   */
  duplicatesWithoutKill: number;
  /**
   * Examples of those, for the investigation: deliveries as pid@journal-time#attempt, and
   * when those pids were killed (if ever) and the database crashed, relative to the first delivery.
   */
  unexplainedDuplicates: Array<{
    runId: string;
    step: number;
    deliveries: string;
    killsMs: number[];
    crashesMs: number[];
    /** With signals: the run's signals, as step:mode/duplicate@when their send completed (relative, as above). */
    signals?: string[];
    /** The earlier delivery's process: its event-loop stalls between that delivery and the next one, as ms@end (relative). */
    stalls?: string[];
  }>;
  /** Runs (children included) whose @OnTerminal handler never journaled their final state. */
  runsWithoutTerminalDelivery: number;
  leftoverJobs: number;
  /** Workflow/state pairs whose count (countRuns' totals) differs from the runs table: must be empty. */
  countsDrift: string[];
  /** All dead letters; with failFast groups, `children.deliberateDeadLetters` of them are planned. */
  deadLetters: number;
  runsLost: number;
  /** Worker processes that exited without being killed by the harness (e.g. because the database went away): must be empty. */
  unexpectedWorkerExits: Array<{ pid: number; code: number | null; signal: string | null; stderr: string }>;
  signals: SignalReport;
  children: ChildReport;
}

/** True when every signal invariant of the report holds. */
export function signalsHold(s: SignalReport): boolean {
  return (
    s.read === s.sent &&
    s.timedOut === s.deliberateTimeouts &&
    s.refused === 0 &&
    s.unexpectedTimeouts === 0 &&
    s.wrongReceived === 0 &&
    s.unread === 0 &&
    s.extrasConsumed === 0 &&
    s.missingSignalRows === 0 &&
    s.unknownSignalRows === 0 &&
    s.parkedWithSignalStored === 0 &&
    s.waitingAtEnd === 0
  );
}

/** True when every child invariant of the report holds. */
export function childrenHold(c: ChildReport): boolean {
  return (
    c.created + c.notSpawned === c.planned &&
    c.joined + c.notResumed === c.joins &&
    c.missingChildren === 0 &&
    c.unexpectedChildren === 0 &&
    c.wrongLinks === 0 &&
    c.wrongOutcomes === 0 &&
    c.wrongJoins === 0 &&
    c.missingJoins === 0 &&
    c.earlyJoins === 0 &&
    c.unexpectedDeadLetters === 0 &&
    c.ranAfterCancelDue === 0
  );
}

/** A child run the plan expects. */
interface PlannedChild {
  id: string;
  parent: string;
  step: number;
  index: number;
  input: ChildInput;
  /** Its spawn is a failFast group (it, or a sibling, fails on purpose). */
  failFast: boolean;
  /** The run whose cancel may reach it: the nearest ancestor that is itself a child in a failFast group. */
  cancellableBy?: string;
}

/** A spawn the plan expects: the parent's step `step` spawned `children`, and its step `step + 1` joins them. */
interface PlannedSpawn {
  parent: string;
  step: number;
  failFast: boolean;
  children: string[];
}

interface PlannedSignal {
  runId: string;
  /** Which wait of its run (0, 1, ...). */
  wait: number;
  /** The step that receives it (the one after the wait). */
  step: number;
  name: string;
  signalId: string;
  data: { runId: string; step: number; nonce: string };
  mode: 'early' | 'late' | 'timeout';
  duplicate: 'none' | 'concurrent' | 'sequential';
  seenParked?: boolean;
  flagged?: boolean;
  sending?: boolean;
  sent?: { doneAt: number; early: boolean };
}

const CONNECTION_ERROR_CODES =
  /^(ECONNREFUSED|ECONNRESET|EPIPE|ETIMEDOUT|EHOSTUNREACH|PROTOCOL_CONNECTION_LOST|PROTOCOL_SEQUENCE_TIMEOUT|ER_SERVER_SHUTDOWN|ER_CON_COUNT_ERROR|POOL_CLOSED|ER_CONNECTION_KILLED)$/;

/** The connection, not the statement, failed (the driver's error, or one wrapping it). */
function isConnectionError(err: unknown): boolean {
  for (let e = err as any, depth = 0; e && typeof e === 'object' && depth < 4; e = e.cause ?? e.driverError, depth++) {
    if (e.fatal === true) return true;
    if (typeof e.code === 'string' && CONNECTION_ERROR_CODES.test(e.code)) return true;
    if (e.errno === 1053 || e.errno === 2006 || e.errno === 2013 || e.errno === 1927) return true;
  }
  return false;
}

/** How long after a worker was seen dead a statement it had sent may still start on the server. */
const KILL_SLACK_MS = 2_000;

const delay = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Certification failures and brute-force aborts over the nodes. A node's counters start
 * again at 0 when it restarts, so each node's count is banked before it is killed.
 */
class CertificationCount {
  private readonly base = new Map<number, number>();
  private banked = 0;
  constructor(private readonly galera?: GaleraCluster) {}

  private async read(node: 1 | 2 | 3): Promise<number> {
    const conn = await rawConnection(this.galera!.nodeUrl(node));
    try {
      const [rows] = await conn.query(
        "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_local_cert_failures', 'wsrep_local_bf_aborts')",
      );
      return (rows as Array<{ Value: string }>).reduce((n, r) => n + Number(r.Value), 0);
    } finally {
      await conn.end();
    }
  }

  async start(): Promise<void> {
    if (this.base.size || !this.galera) return;
    for (const n of [1, 2, 3] as const) this.base.set(n, await this.read(n));
  }

  async beforeKill(node: 1 | 2 | 3): Promise<void> {
    this.banked += (await this.read(node)) - (this.base.get(node) ?? 0);
  }

  async afterStart(node: 1 | 2 | 3): Promise<void> {
    this.base.set(node, await this.read(node).catch(() => 0));
  }

  async total(): Promise<number> {
    if (!this.galera) return 0;
    await this.start();
    let n = this.banked;
    for (const node of [1, 2, 3] as const) n += (await this.read(node).catch(() => 0)) - (this.base.get(node) ?? 0);
    return n;
  }
}

/** The harness's own connection: reconnects on connection errors until `patienceMs`. Only for statements safe to repeat. */
class HarnessConnection {
  private conn?: Connection;
  constructor(
    private readonly url: string,
    private readonly patienceMs = 120_000,
    /** On a cluster: the harness judges what it reads, so each read waits for every write committed before it (on any node). */
    private readonly causal = false,
  ) {}

  async query<T>(sql: string): Promise<T> {
    const deadline = Date.now() + this.patienceMs;
    for (;;) {
      try {
        if (!this.conn) {
          const conn = await rawConnection(this.url);
          // An idle connection whose server dies emits 'error'; without a listener that would end the process.
          conn.on('error', () => {
            if (this.conn === conn) this.conn = undefined;
          });
          if (this.causal) await conn.query('SET SESSION wsrep_sync_wait = 1');
          this.conn = conn;
        }
        const [rows] = await this.conn.query(sql);
        return rows as T;
      } catch (err) {
        if (!isConnectionError(err) || Date.now() > deadline) throw err;
        this.conn?.destroy();
        this.conn = undefined;
        await delay(100);
      }
    }
  }

  async end(): Promise<void> {
    const conn = this.conn;
    this.conn = undefined;
    await conn?.end().catch(() => conn.destroy());
  }
}

/**
 * K real worker processes on one database, one of them SIGKILLed every few seconds and
 * replaced, while N runs of M steps go through; optionally the database server itself is
 * SIGKILLed and restarted every few seconds too. Every step journals (run, step, attempt,
 * pid, time) in its own table before returning; the verdict comes from the database.
 */
export async function runChaos(o: ChaosOptions): Promise<ChaosReport> {
  const log = o.log ?? (() => undefined);
  const signalEvery = o.signalEvery ?? 0;
  const signalTimeoutEvery = signalEvery > 0 ? (o.signalTimeoutEvery ?? 0) : 0;
  const spawnOpts: SpawnOptions = {
    steps: o.steps,
    signalEvery,
    spawnEvery: o.spawnEvery ?? 0,
    spawnRunEvery: o.spawnRunEvery ?? 1,
    children: o.children ?? 3,
    childSteps: o.childSteps ?? 3,
    grandchildren: o.grandchildren ?? 2,
    grandchildDelayMs: 1000,
    failFastEvery: o.failFastEvery ?? 0,
  };
  const restartEveryMs = o.dbRestartEveryMs ?? 0;
  let privateDb: PrivateMariaDb | undefined;
  const galera = o.cluster ? new GaleraCluster() : undefined;
  if (galera) {
    if (restartEveryMs > 0) throw new Error('cluster and dbRestartEveryMs do not mix: use nodeKillEveryMs');
    await galera.start();
    log(`Galera cluster up (${o.cluster} listener): ${(await galera.status()).trim().replace(/\n/g, '; ')}`);
  }
  if (restartEveryMs > 0) {
    // Sized like the shared server (128 MiB buffer pool, 96 MiB redo log), durable commits (the default).
    privateDb = await PrivateMariaDb.create(o.dbPort ?? 0, {
      args: ['--innodb-buffer-pool-size=128M', '--innodb-log-file-size=96M', '--max-connections=400'],
    });
    log(`private MariaDB on port ${privateDb.port} (pid ${privateDb.pid}), data in ${privateDb.dir}`);
  }
  const url = galera ? (o.cluster === 'spread' ? galera.spreadUrl : galera.writerUrl) : (privateDb?.url ?? DB_URL);
  const ownUrl = !!(privateDb || galera);
  const db = new HarnessConnection(url, undefined, !!galera);
  const journal = `\`${o.prefix}journal\``;
  const workers: WorkerProcess[] = [];
  /** Every worker started, killed ones included: their reported stalls are read at the end. */
  const everyWorker: WorkerProcess[] = [];
  /** When each worker reported ready, by pid. */
  const readyAt = new Map<number, number>();
  const killed = new Set<number>();
  /** When workers were SIGKILLed, by pid (a list: the system may hand a pid out again). */
  const killedAt = new Map<number, number[]>();
  const unexpectedWorkerExits: ChaosReport['unexpectedWorkerExits'] = [];
  const crashes: number[] = [];
  const dbDowntimeMs: number[] = [];
  let submitRetries = 0;
  let app: TestingModule | undefined;
  let signaller: TestingModule | undefined;
  let signalling: Promise<void> | undefined;
  let stopSignals = false;
  /** signal() calls under way. */
  const inFlight = new Set<Promise<void>>();
  const signalDb = new HarnessConnection(url, undefined, !!galera);
  const nodeCrashes: number[] = [];
  const nodeDowntimeMs: number[] = [];
  /** [from, to] of each window in which the cluster may stall commits (see duplicatesAroundNodeFailure). */
  const nodeStalls: Array<[number, number]> = [];
  const killedNodes: number[] = [];
  const certs = new CertificationCount(galera);
  await certs.start();
  let chaos: Promise<void> | undefined;
  let stop = false;
  let stopped!: () => void;
  const stopping = new Promise<void>((r) => (stopped = r));
  /** Waits `ms`, or less if the test is stopping. */
  const pause = (ms: number) =>
    new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      void stopping.then(() => (clearTimeout(timer), resolve()));
    });
  // Worker starts and database restarts never overlap: a worker's startup needs the database
  // (its connect retries last about 1.5 s by design), and a crash during it would test startup, not recovery.
  let exclusiveTail: Promise<unknown> = Promise.resolve();
  const exclusive = <T>(fn: () => Promise<T>): Promise<T> => {
    const next = exclusiveTail.then(fn);
    exclusiveTail = next.catch(() => undefined);
    return next;
  };
  try {
    await dropTables(o.prefix, url);
    await db.query(`DROP TABLE IF EXISTS ${journal}`);
    const setup = await rawConnection(url);
    try {
      await createJournal(setup, o.prefix);
      // When each delivery began, by the server's clock (the same host's as ours): places deliveries relative to crashes.
      await setup.query(`ALTER TABLE ${journal} ADD COLUMN at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)`);
      // What the step after a wait received (JSON), as the worker saw it.
      await setup.query(`ALTER TABLE ${journal} ADD COLUMN received VARCHAR(1000) NULL`);
      // What the step after a spawn was given (JSON: every child's id, status, result), as the worker saw it.
      await setup.query(`ALTER TABLE ${journal} ADD COLUMN children TEXT NULL`);
    } finally {
      await setup.end();
    }
    app = await startApp({
      prefix: o.prefix,
      worker: false,
      options: { workflows: ['crashy'], ...(ownUrl ? { connection: { url } } : {}) },
    });
    const env = {
      PREFIX: o.prefix,
      STEPS: String(o.steps),
      LEASE_MS: String(o.leaseMs),
      STEP_DELAY_MS: String(o.stepDelayMs),
      MAX_ATTEMPTS: '25',
      CONCURRENCY: String(o.concurrency),
      WORKFLOW_DB_URL: url,
      SIGNAL_EVERY: String(signalEvery),
      SIGNAL_TIMEOUT_EVERY: String(signalTimeoutEvery),
      SIGNAL_TIMEOUT_MS: String(o.signalTimeoutMs ?? 1_000),
      LAG_TRACK_MS: String(o.lagTrackMs ?? 200),
      ...spawnOptionsToEnv(spawnOpts),
    };
    const spawnWorker = () =>
      exclusive(async () => {
        const w = await startWorker(env);
        let stderr = '';
        w.child.stderr!.on('data', (d) => (stderr = (stderr + d).slice(-4000)));
        // CHAOS_WORKER_LOG=<file>: the workers' warnings and errors, for an investigation.
        const logFile = process.env.CHAOS_WORKER_LOG;
        if (logFile) {
          const keep = (d: Buffer) => {
            for (const line of String(d).split('\n'))
              if (/WARN|ERROR|Error/.test(line))
                appendFileSync(logFile, `${new Date().toISOString()} ${w.pid} ${line}\n`);
          };
          w.child.stdout!.on('data', keep);
          w.child.stderr!.on('data', keep);
        }
        w.child.once('exit', (code, signal) => {
          if (killed.has(w.pid)) return;
          const at = workers.indexOf(w);
          if (at >= 0) workers.splice(at, 1);
          unexpectedWorkerExits.push({ pid: w.pid, code, signal, stderr });
          log(`worker ${w.pid} EXITED BY ITSELF (code ${code}, signal ${signal}): ${stderr.slice(-500)}`);
        });
        workers.push(w);
        everyWorker.push(w);
        readyAt.set(w.pid, Date.now());
        return w;
      });
    for (let i = 0; i < o.workers; i++) await spawnWorker();
    const service = app.get(WorkflowService);
    // The signaller: another app on the same tables, submit-only, as a web process would be.
    signaller = await startApp({
      prefix: o.prefix,
      worker: false,
      options: { workflows: ['crashy'], ...(ownUrl ? { connection: { url } } : {}) },
    });
    const signals = signaller.get(WorkflowService);
    const ids = Array.from({ length: o.runs }, (_, i) => `run-${String(i).padStart(7, '0')}`);

    // The children every run will spawn, and theirs (the same plan the workers follow).
    const plannedChildren = new Map<string, PlannedChild>();
    const plannedSpawns: PlannedSpawn[] = [];
    const planSpawn = (
      parent: string,
      step: number,
      inputs: ChildInput[],
      failFast: boolean,
      cancellableBy?: string,
    ) => {
      const kids = inputs.map((input, index): PlannedChild => ({
        id: childId(parent, step, index),
        parent,
        step,
        index,
        input,
        failFast,
        ...(cancellableBy ? { cancellableBy } : {}),
      }));
      plannedSpawns.push({ parent, step, failFast, children: kids.map((k) => k.id) });
      for (const k of kids) {
        plannedChildren.set(k.id, k);
        // A sibling in a failFast group may be cancelled: its own children with it.
        if (k.input.spawn)
          planSpawn(k.id, k.input.spawn.at, grandchildInputs(k.input), false, failFast ? k.id : cancellableBy);
      }
    };
    ids.forEach((runId, i) => {
      for (let step = 0; step < o.steps; step++) {
        const spawn = spawnAt(spawnOpts, i, step);
        if (spawn) planSpawn(runId, step, spawn.children, spawn.failFast);
      }
    });

    // The plan: which waits get their signal early, which twice, which none (a deliberate timeout).
    const plan = new Map<string, PlannedSignal[]>();
    const byWait = new Map<string, PlannedSignal>();
    const extras = new Set<string>();
    const sig: SignalReport = {
      every: signalEvery,
      waits: 0,
      sent: 0,
      duplicatesSent: 0,
      early: 0,
      earlyBeforeWaitStep: 0,
      late: 0,
      read: 0,
      retries: 0,
      deliberateTimeouts: 0,
      timedOut: 0,
      extras: 0,
      refused: 0,
      unexpectedTimeouts: 0,
      wrongReceived: 0,
      unread: 0,
      extrasConsumed: 0,
      missingSignalRows: 0,
      unknownSignalRows: 0,
      parkedWithSignalStored: 0,
      waitingAtEnd: 0,
      problems: [],
    };
    const problem = (line: string) => {
      if (sig.problems.length < 20) sig.problems.push(line);
      log(`SIGNAL PROBLEM: ${line}`);
    };
    if (signalEvery > 0) {
      ids.forEach((runId, i) => {
        const waits: PlannedSignal[] = [];
        for (let s = signalEvery - 1, w = 0; s + 1 < o.steps; s += signalEvery, w++) {
          const timesOut = signalTimeoutEvery > 0 && i % signalTimeoutEvery === 0 && w === 0;
          const r = Math.random();
          const p: PlannedSignal = {
            runId,
            wait: w,
            step: s + 1,
            name: `chaos-${s + 1}`,
            signalId: `sig-${i}-${s + 1}`,
            data: { runId, step: s + 1, nonce: Math.random().toString(36).slice(2, 10) },
            mode: timesOut ? 'timeout' : Math.random() < (o.signalEarlyShare ?? 0.3) ? 'early' : 'late',
            duplicate:
              r < (o.signalDuplicateShare ?? 0.2) / 2
                ? 'concurrent'
                : r < (o.signalDuplicateShare ?? 0.2)
                  ? 'sequential'
                  : 'none',
          };
          waits.push(p);
          byWait.set(`${runId}|${p.name}`, p);
        }
        plan.set(runId, waits);
        sig.waits += waits.length;
      });
    }
    // At most this many signal() calls at once.
    let active = 0;
    const queued: Array<() => void> = [];
    const limited = async <T>(fn: () => Promise<T>): Promise<T> => {
      while (active >= 8) await new Promise<void>((r) => queued.push(r));
      active++;
      try {
        return await fn();
      } finally {
        active--;
        queued.shift()?.();
      }
    };
    /** signal(), sent again as is (same signalId: idempotent) after a connection error. */
    const signalOnce = async (runId: string, name: string, data: unknown, signalId: string) => {
      const deadline = Date.now() + 120_000;
      for (;;) {
        try {
          return await signals.signal(runId, name, data, { signalId });
        } catch (err) {
          if (!isConnectionError(err) || Date.now() > deadline) throw err;
          sig.retries++;
          await delay(100);
        }
      }
    };
    let signalError: unknown;
    const send = (p: PlannedSignal, early: boolean) => {
      if (p.sending || p.mode === 'timeout') return;
      p.sending = true;
      const job = limited(async () => {
        const once = () => signalOnce(p.runId, p.name, p.data, p.signalId);
        let results: boolean[];
        if (p.duplicate === 'concurrent') results = await Promise.all([once(), once()]);
        else if (p.duplicate === 'sequential') results = [await once(), await once()];
        else results = [await once()];
        p.sent = { doneAt: Date.now(), early };
        sig.sent++;
        if (p.duplicate !== 'none') sig.duplicatesSent++;
        if (early) sig.early++;
        else sig.late++;
        if (results.some((ok) => !ok)) {
          sig.refused++;
          problem(`signal ${p.signalId} to live run ${p.runId} returned ${JSON.stringify(results)}`);
        }
      }).then(
        () => void inFlight.delete(job),
        (err) => {
          inFlight.delete(job);
          signalError ??= err;
        },
      );
      inFlight.add(job);
    };
    /** Sends the signals of waits `from`, `from + 1`, ... that are planned early, up to the first that is not. */
    const sendEarly = (runId: string, from: number) => {
      const waits = plan.get(runId) ?? [];
      for (let w = from; w < waits.length && waits[w].mode === 'early'; w++) send(waits[w], true);
    };
    const sendExtra = (runId: string) => {
      const signalId = `extra-${runId}`;
      const job = limited(async () => {
        if (await signalOnce(runId, 'chaos-never', { extra: true }, signalId)) {
          extras.add(`${runId}|${signalId}`);
          sig.extras++;
        }
      }).then(
        () => void inFlight.delete(job),
        (err) => {
          inFlight.delete(job);
          signalError ??= err;
        },
      );
      inFlight.add(job);
    };
    // Polls the parked jobs; a run seen waiting gets its signal (unless it is to time out),
    // and the next waits planned early get theirs before the run reaches them.
    signalling = (async () => {
      if (signalEvery === 0) return;
      while (!stopSignals && !signalError) {
        const pollStarted = Date.now();
        const parked = await signalDb.query<Array<{ run_id: string; wait_for: string }>>(
          `SELECT run_id, wait_for FROM \`${o.prefix}jobs\` WHERE state = 3 AND wait_for IS NOT NULL`,
        );
        let fresh = 0;
        for (const row of parked) {
          const p = byWait.get(`${row.run_id}|${row.wait_for}`);
          if (!p) {
            problem(`run ${row.run_id} waits for ${row.wait_for}, which no step should`);
            continue;
          }
          if (p.sent && p.sent.doneAt < pollStarted && !p.flagged) {
            p.flagged = true;
            sig.parkedWithSignalStored++;
            problem(`run ${row.run_id} still waits for ${p.name} after ${p.signalId} was stored`);
          }
          if (p.seenParked) continue;
          p.seenParked = true;
          fresh++;
          send(p, false);
          sendEarly(p.runId, p.wait + 1);
        }
        if (fresh === 0) await delay(100);
      }
    })().catch((err) => {
      signalError ??= err;
    });
    const started = Date.now();

    let halfSubmitted!: () => void;
    const half = new Promise<void>((r) => (halfSubmitted = r));
    const restarts = (async () => {
      if (!privateDb) return;
      const server = privateDb;
      let wait: Promise<unknown> = half;
      while (!stop && crashes.length < (o.dbRestartLimit ?? Infinity)) {
        await Promise.race([wait, stopping]);
        if (stop) break;
        await exclusive(async () => {
          const down = Date.now();
          const pid = server.pid;
          await server.stop('SIGKILL');
          crashes.push(down);
          await server.start();
          dbDowntimeMs.push(Date.now() - down);
          log(
            `database SIGKILLed (pid ${pid}) and restarted (pid ${server.pid}) in ${Date.now() - down} ms (${crashes.length} restarts)`,
          );
        });
        wait = pause(restartEveryMs);
      }
    })();

    const nodeKills = (async () => {
      const every = o.nodeKillEveryMs ?? 0;
      if (!galera || every <= 0) return;
      await certs.start();
      let wait: Promise<unknown> = half;
      for (let i = 0; !stop && nodeCrashes.length < (o.nodeKillLimit ?? Infinity); i++) {
        await Promise.race([wait, stopping]);
        if (stop) break;
        const node = o.cluster === 'writer' ? await galera.currentWriter() : (((i % 3) + 1) as 1 | 2 | 3);
        // Held until HAProxy has marked the node down, so no worker starts against a node going away.
        await exclusive(async () => {
          await certs.beforeKill(node);
          await galera.killNode(node);
          nodeCrashes.push(Date.now());
          killedNodes.push(node);
          log(`node ${node} SIGKILLed (${nodeCrashes.length} node failures)`);
          await pause(1_500);
        });
        const killedAt = nodeCrashes[nodeCrashes.length - 1];
        nodeStalls.push([killedAt, killedAt + 7_000]);
        await delay(Math.max(0, (o.nodeDownMs ?? 3_000) - 1_500));
        const restartAt = Date.now();
        await galera.startNode(node);
        nodeStalls.push([restartAt, Date.now()]);
        await certs.afterStart(node);
        nodeDowntimeMs.push(Date.now() - nodeCrashes[nodeCrashes.length - 1]);
        log(`node ${node} rejoined and Synced ${nodeDowntimeMs[nodeDowntimeMs.length - 1]} ms after its kill`);
        wait = pause(every);
      }
    })();

    const kills = (async () => {
      while (!stop) {
        await pause(o.killEveryMs);
        if (stop || workers.length === 0) break;
        const victim = workers.splice(Math.floor(Math.random() * workers.length), 1)[0];
        killed.add(victim.pid);
        await victim.kill('SIGKILL');
        // When it was seen dead: no delivery of it can begin later.
        killedAt.set(victim.pid, [...(killedAt.get(victim.pid) ?? []), Date.now()]);
        log(`killed worker ${victim.pid} (${killed.size} kills)`);
        if (!stop) await spawnWorker();
      }
    })();
    let chaosError: unknown;
    chaos = Promise.all([restarts, kills, nodeKills]).then(
      () => undefined,
      (err) => {
        chaosError = err;
        stop = true;
        stopped();
      },
    );

    // Fixed run ids: a batch whose submit failed with the connection is sent again as is (idempotent).
    const batch = o.submitBatch ?? 500;
    for (let i = 0; i < o.runs; i += batch) {
      const specs = ids.slice(i, i + batch).map((runId) => ({ runId, input: { n: 0 } }));
      const deadline = Date.now() + 120_000;
      for (;;) {
        try {
          await service.submitMany('crashy', specs);
          break;
        } catch (err) {
          if (!isConnectionError(err) || Date.now() > deadline) throw err;
          submitRetries++;
          log(`submit of runs ${i}..${i + specs.length - 1} failed (${(err as Error).message}); sending it again`);
          await delay(100);
        }
      }
      for (const { runId } of specs) {
        sendEarly(runId, 0);
        if (plan.get(runId)?.[0]?.mode === 'timeout') sendExtra(runId);
      }
      if (i + batch >= o.runs / 2) halfSubmitted();
    }
    halfSubmitted();
    log(
      `submitted ${ids.length} runs of ${o.steps} steps to ${o.workers} workers` +
        (plannedChildren.size
          ? ` (they will spawn ${plannedChildren.size} children in ${plannedSpawns.length} spawns)`
          : ''),
    );

    const deadline = started + o.timeoutMs;
    let finished = 0;
    while (Date.now() < deadline && !chaosError && !signalError) {
      // Every run, and no child still going (a child of a cancelled run may still be ending).
      const rows = await db.query<Array<{ finished: number | null; live: number | null }>>(
        `SELECT SUM(state IN ('succeeded', 'failed', 'cancelled') AND parent_run_id IS NULL) AS finished,
                SUM(finished_at IS NULL) AS live FROM \`${o.prefix}runs\``,
      );
      finished = Number(rows[0].finished ?? 0);
      if (finished >= o.runs && Number(rows[0].live ?? 0) === 0) break;
      await delay(200);
    }
    const elapsedMs = Date.now() - started;
    stop = true;
    stopped();
    stopSignals = true;
    // Any restart under way completes first: the verdict is read after the final restart.
    await chaos;
    await signalling;
    await Promise.all(inFlight);
    if (chaosError) throw chaosError;
    if (signalError) throw signalError;
    log(`finished ${finished}/${o.runs} runs in ${elapsedMs} ms; judging`);
    // Let terminal deliveries in flight finish on the surviving workers before judging the queue.
    const settleDeadline = Date.now() + Math.max(10_000, o.leaseMs * 4);
    let leftoverJobs = 0;
    while (Date.now() < settleDeadline) {
      const rows = await db.query<Array<{ n: number }>>(`SELECT COUNT(*) AS n FROM \`${o.prefix}jobs\``);
      leftoverJobs = Number(rows[0].n);
      if (leftoverJobs === 0) break;
      await delay(200);
    }
    // The counts kept by the transactions that moved the runs, against the runs themselves.
    const tally = async (sql: string) =>
      new Map((await db.query<Array<{ k: string; n: number }>>(sql)).map((r) => [r.k, Number(r.n)]));
    const kept = await tally(
      `SELECT CONCAT(workflow, '/', state) AS k, SUM(n) AS n FROM \`${o.prefix}counts\` GROUP BY k HAVING SUM(n) <> 0`,
    );
    const real = await tally(
      `SELECT CONCAT(workflow, '/', state) AS k, COUNT(*) AS n FROM \`${o.prefix}runs\` GROUP BY k`,
    );
    const countsDrift = [...new Set([...kept.keys(), ...real.keys()])]
      .filter((k) => kept.get(k) !== real.get(k))
      .map((k) => `${k}: counted ${kept.get(k) ?? 0}, in runs ${real.get(k) ?? 0}`);

    const runRows = await db.query<
      Array<{
        id: string;
        workflow: string;
        state: string;
        result: string | null;
        error: string | null;
        finished_at: number | null;
        parent_run_id: string | null;
        parent_step: number | null;
        child_index: number | null;
      }>
    >(
      `SELECT id, workflow, state, result, error, finished_at, parent_run_id, parent_step, child_index FROM \`${o.prefix}runs\``,
    );
    const rowOf = new Map(runRows.map((r) => [r.id, r]));
    const parentIds = new Set(ids);
    const notSucceeded = runRows
      .filter((r) => parentIds.has(r.id))
      .filter((r) => r.state !== 'succeeded' || JSON.parse(r.result ?? 'null')?.n !== o.steps)
      .map((r) => ({ id: r.id, state: r.state }));
    await db.query('SET SESSION group_concat_max_len = 1048576');
    const steps = await db.query<Array<{ run_id: string; step_number: number; deliveries: string }>>(
      `SELECT run_id, step_number,
              GROUP_CONCAT(CONCAT(pid, '@', CAST(ROUND(UNIX_TIMESTAMP(at) * 1000) AS UNSIGNED), '#', attempt) ORDER BY id) AS deliveries
         FROM ${journal} WHERE kind = 'step' GROUP BY run_id, step_number`,
    );
    // The reaper's record of every delivery whose lease expired, and each worker's event-loop stalls.
    const reaped = new Map(
      (
        await db.query<
          Array<{ run_id: string; step_number: number; attempt: number; started_at: number; finished_at: number }>
        >(
          `SELECT run_id, step_number, attempt, started_at, finished_at FROM \`${o.prefix}history\` WHERE outcome = 'lease-expired'`,
        )
      ).map((r) => [
        `${r.run_id}|${r.step_number}|${r.attempt}`,
        { leasedAt: Number(r.started_at), at: Number(r.finished_at) },
      ]),
    );
    const stallsOf = new Map<number, Array<{ from: number; to: number; ms: number }>>();
    const eventLoopStalls = { count: 0, longestMs: 0, overLease: 0, overThirdOfLease: 0 };
    for (const w of everyWorker) {
      for (const line of w.lines) {
        const m = /^stall (\d+) (\d+)$/.exec(line);
        if (!m) continue;
        const [to, ms] = [Number(m[1]), Number(m[2])];
        stallsOf.set(w.pid, [...(stallsOf.get(w.pid) ?? []), { from: to - ms, to, ms }]);
        eventLoopStalls.count++;
        eventLoopStalls.longestMs = Math.max(eventLoopStalls.longestMs, ms);
        if (ms > o.leaseMs) eventLoopStalls.overLease++;
        if (ms >= o.leaseMs / 3) eventLoopStalls.overThirdOfLease++;
      }
    }
    let duplicatesAfterLeaseExpiry = 0;
    let leaseExpiriesWithStall = 0;
    let leaseExpiriesInFirst5s = 0;
    const leaseExpiries: ChaosReport['leaseExpiries'] = [];
    let duplicateDeliveries = 0;
    let duplicatesWithoutKill = 0;
    let duplicatesAroundKill = 0;
    let duplicatesAroundDbRestart = 0;
    let duplicatesAroundNodeFailure = 0;
    const stalled = (from: number, to: number) => nodeStalls.some(([a, b]) => a <= to && b >= from);
    let maxDbRestartDuplicateLeadMs = 0;
    const unexplainedDuplicates: ChaosReport['unexplainedDuplicates'] = [];
    for (const s of steps) {
      const deliveries = String(s.deliveries)
        .split(',')
        .map((d) => d.split(/[@#]/).map(Number) as [number, number, number]);
      duplicateDeliveries += deliveries.length - 1;
      // Every delivery but the last must have been cut off: by a kill of its process, or by a
      // database crash, either of them after it began and before the next delivery began.
      for (let i = 0; i < deliveries.length - 1; i++) {
        const [pid, at] = deliveries[i];
        const nextAt = deliveries[i + 1][1];
        // A statement the process sent just before it died can still start on the server after
        // we saw it dead (a loaded server reads its socket late): hence the slack before `at`.
        if ((killedAt.get(pid) ?? []).some((kill) => kill >= at - KILL_SLACK_MS && kill <= nextAt)) {
          duplicatesAroundKill++;
          continue;
        }
        if (stalled(at, nextAt)) {
          duplicatesAroundNodeFailure++;
          continue;
        }
        const crash = crashes.find((c) => c >= at && c <= nextAt);
        if (crash !== undefined) {
          duplicatesAroundDbRestart++;
          maxDbRestartDuplicateLeadMs = Math.max(maxDbRestartDuplicateLeadMs, crash - at);
          continue;
        }
        const reaping = reaped.get(`${s.run_id}|${s.step_number}|${deliveries[i][2]}`);
        if (reaping !== undefined) {
          const reapedAt = reaping.at;
          duplicatesAfterLeaseExpiry++;
          // The lease ran out if no renewal landed for a whole lease before the reaping.
          const longestStallMs = Math.max(
            0,
            ...(stallsOf.get(pid) ?? [])
              .filter((st) => st.to >= at - o.leaseMs && st.from <= reapedAt)
              .map((st) => st.ms),
          );
          if (longestStallMs >= o.leaseMs / 3) leaseExpiriesWithStall++;
          const workerAgeMs = at - (readyAt.get(pid) ?? at);
          if (workerAgeMs < 5_000) leaseExpiriesInFirst5s++;
          if (leaseExpiries.length < 10 || (duplicatesAfterLeaseExpiry % 25 === 0 && leaseExpiries.length < 30))
            leaseExpiries.push({
              runId: s.run_id,
              step: s.step_number,
              pid,
              longestStallMs,
              workerAgeMs,
              leasedAfterMs: reaping.leasedAt - at,
              reapedAfterMs: reapedAt - at,
              nextAfterMs: nextAt - at,
            });
          continue;
        }
        duplicatesWithoutKill++;
        if (unexplainedDuplicates.length < 20) {
          const first = deliveries[0][1];
          unexplainedDuplicates.push({
            runId: s.run_id,
            step: s.step_number,
            deliveries: String(s.deliveries),
            killsMs: deliveries.flatMap(([p]) => killedAt.get(p) ?? []).map((k) => k - first),
            crashesMs: [...crashes, ...nodeCrashes].map((c) => c - first),
            stalls: (stallsOf.get(pid) ?? [])
              .filter((st) => st.to >= at - o.leaseMs && st.from <= nextAt)
              .map((st) => `${st.ms}@${st.to - first}`),
            ...(signalEvery > 0
              ? {
                  signals: (plan.get(s.run_id) ?? []).map(
                    (p) => `${p.step}:${p.mode}/${p.duplicate}@${p.sent ? p.sent.doneAt - first : '-'}`,
                  ),
                }
              : {}),
          });
        }
      }
    }
    if (signalEvery > 0) {
      // When the first delivery of each step began: was an early signal stored before its wait step began?
      const firstAt = new Map<string, number>();
      for (const s of steps)
        firstAt.set(`${s.run_id}|${s.step_number}`, Number(String(s.deliveries).split(/[@#,]/)[1]));
      const receivedRows = await db.query<Array<{ run_id: string; step_number: number; received: string | null }>>(
        `SELECT run_id, step_number, received FROM ${journal} WHERE kind = 'step' AND (received IS NOT NULL OR step_number % ${signalEvery} = 0) AND step_number > 0`,
      );
      const seen = new Map<string, Array<string | null>>();
      for (const r of receivedRows) {
        const key = `${r.run_id}|${r.step_number}`;
        seen.set(key, [...(seen.get(key) ?? []), r.received]);
      }
      const expected = new Set<string>();
      for (const waits of plan.values()) {
        for (const p of waits) {
          const key = `${p.runId}|${p.step}`;
          expected.add(key);
          const got = (seen.get(key) ?? []).map((r) => (r === null ? null : (JSON.parse(r) as Record<string, any>)));
          if (p.mode === 'timeout') {
            sig.deliberateTimeouts++;
            if (got.length > 0 && got.every((g) => g?.timedOut === true && g.name === p.name)) sig.timedOut++;
            else
              problem(
                `run ${p.runId} step ${p.step} should have timed out waiting for ${p.name}: ${JSON.stringify(got)}`,
              );
            continue;
          }
          if (p.sent?.early && p.sent.doneAt < (firstAt.get(`${p.runId}|${p.step - 1}`) ?? 0))
            sig.earlyBeforeWaitStep++;
          if (got.some((g) => g?.timedOut === true)) sig.unexpectedTimeouts++;
          const right = (g: Record<string, any> | null) =>
            g?.timedOut === false &&
            g.name === p.name &&
            g.signalId === p.signalId &&
            g.data?.nonce === p.data.nonce &&
            g.data?.step === p.step;
          if (p.sent && got.length > 0 && got.every(right)) sig.read++;
          else {
            sig.wrongReceived++;
            problem(
              `run ${p.runId} step ${p.step}: sent ${p.sent ? JSON.stringify(p.data) : 'nothing'} as ${p.signalId}, journaled ${JSON.stringify(got)}`,
            );
          }
        }
      }
      for (const [key, got] of seen) {
        if (expected.has(key) || got.every((g) => g === null)) continue;
        sig.wrongReceived++;
        problem(`step ${key} is after no wait but journaled ${JSON.stringify(got)}`);
      }
      const signalRows = await db.query<Array<{ run_id: string; signal_id: string; consumed_at: number | null }>>(
        `SELECT run_id, signal_id, consumed_at FROM \`${o.prefix}signals\``,
      );
      const sentIds = new Map<string, PlannedSignal>();
      for (const p of byWait.values()) if (p.sent) sentIds.set(`${p.runId}|${p.signalId}`, p);
      const stored = new Set<string>();
      for (const r of signalRows) {
        const key = `${r.run_id}|${r.signal_id}`;
        stored.add(key);
        if (extras.has(key)) {
          if (r.consumed_at !== null) {
            sig.extrasConsumed++;
            problem(`extra signal ${key} was read`);
          }
        } else if (sentIds.has(key)) {
          if (r.consumed_at === null) {
            sig.unread++;
            problem(`signal ${key} was never read`);
          }
        } else {
          sig.unknownSignalRows++;
          problem(`signals row ${key} was never sent`);
        }
      }
      for (const key of [...sentIds.keys(), ...extras]) {
        if (stored.has(key)) continue;
        sig.missingSignalRows++;
        problem(`signal ${key} was sent but is not stored`);
      }
      const parkedRows = await db.query<Array<{ n: number }>>(
        `SELECT COUNT(*) AS n FROM \`${o.prefix}jobs\` WHERE state = 3`,
      );
      sig.waitingAtEnd = Number(parkedRows[0].n);
    }
    // Which (run, step) pairs were journaled, and when each delivery began.
    const deliveriesOf = new Map<string, Array<[pid: number, at: number, attempt: number]>>();
    for (const st of steps) {
      deliveriesOf.set(
        `${st.run_id}|${st.step_number}`,
        String(st.deliveries)
          .split(',')
          .map((d) => d.split(/[@#]/).map(Number) as [number, number, number]),
      );
    }
    const stepsOf = new Map<string, number[]>();
    for (const st of steps) stepsOf.set(st.run_id, [...(stepsOf.get(st.run_id) ?? []), Number(st.step_number)]);
    /** A worker was killed, or the database crashed, between these two times. */
    const killOrCrashBetween = (from: number, to: number) =>
      [...killedAt.values()].some((ks) => ks.some((k) => k >= from - KILL_SLACK_MS && k <= to)) ||
      crashes.some((c) => c >= from && c <= to) ||
      stalled(from, to);

    // Every run journals each of its steps; a run that ends early (a deliberate failure, a
    // cancel) journals a prefix of them; none journals a step it does not have.
    let missingSteps = 0;
    let unexpectedSteps = 0;
    const stepProblems: string[] = [];
    const expectSteps = (runId: string, total: number, mustRunAll: number | 'prefix') => {
      const seen = new Set(stepsOf.get(runId) ?? []);
      const last = seen.size ? Math.max(...seen) : -1;
      const want = mustRunAll === 'prefix' ? last + 1 : mustRunAll;
      for (let n = 0; n < want; n++) if (!seen.has(n)) missingSteps++;
      for (const n of seen) {
        if (n < total && (mustRunAll === 'prefix' || n < mustRunAll)) continue;
        unexpectedSteps++;
        if (stepProblems.length < 10) stepProblems.push(`run ${runId} journaled step ${n}, beyond its ${want} steps`);
      }
    };
    for (const id of ids) expectSteps(id, o.steps, o.steps);

    const kids: ChildReport = {
      every: spawnOpts.spawnEvery,
      spawns: plannedSpawns.length,
      failFastGroups: plannedSpawns.filter((p) => p.failFast).length,
      planned: plannedChildren.size,
      created: runRows.filter((r) => r.parent_run_id !== null).length,
      notSpawned: 0,
      succeeded: 0,
      failed: 0,
      cancelled: 0,
      deliberateFailures: 0,
      deliberateDeadLetters: 0,
      childDeliveries: 0,
      joins: plannedSpawns.length,
      joined: 0,
      notResumed: 0,
      underCancelled: 0,
      cancelledWithParent: 0,
      missingChildren: 0,
      unexpectedChildren: 0,
      wrongLinks: 0,
      wrongOutcomes: 0,
      wrongJoins: 0,
      missingJoins: 0,
      earlyJoins: 0,
      unexpectedDeadLetters: 0,
      ranAfterCancelDue: 0,
      problems: [],
    };
    const childProblem = (line: string) => {
      if (kids.problems.length < 20) kids.problems.push(line);
      log(`CHILD PROBLEM: ${line}`);
    };
    for (const r of runRows) {
      if (r.parent_run_id === null || plannedChildren.has(r.id)) continue;
      kids.unexpectedChildren++;
      childProblem(`child run ${r.id} of ${r.parent_run_id} (step ${r.parent_step}) was not planned`);
    }
    const failingOf = new Map<string, PlannedChild>(); // spawn key -> its failing child
    for (const c of plannedChildren.values()) if (c.input.fail) failingOf.set(`${c.parent}|${c.step}`, c);
    const permanent = new Set<string>();
    const spawnOf = new Map<string, PlannedSpawn>();
    for (const p of plannedSpawns) for (const id of p.children) spawnOf.set(id, p);
    for (const c of plannedChildren.values()) {
      const row = rowOf.get(c.id);
      for (const n of stepsOf.get(c.id) ?? []) kids.childDeliveries += deliveriesOf.get(`${c.id}|${n}`)?.length ?? 0;
      if (!row) {
        // A failFast group may cancel a child before its own spawn: then none of that spawn's children exist.
        const none = spawnOf.get(c.id)!.children.every((id) => !rowOf.has(id));
        if (none && rowOf.get(c.parent)?.state === 'cancelled') {
          kids.notSpawned++;
          continue;
        }
        kids.missingChildren++;
        childProblem(`child ${c.id} was never created`);
        continue;
      }
      if (
        row.workflow !== 'crashy-child' ||
        row.parent_run_id !== c.parent ||
        Number(row.parent_step) !== c.step ||
        Number(row.child_index) !== c.index
      ) {
        kids.wrongLinks++;
        childProblem(
          `child ${c.id}: ${row.workflow} of ${row.parent_run_id} step ${row.parent_step} #${row.child_index}, planned crashy-child of ${c.parent} step ${c.step} #${c.index}`,
        );
      }
      if (row.state === 'succeeded') kids.succeeded++;
      else if (row.state === 'failed') kids.failed++;
      else if (row.state === 'cancelled') kids.cancelled++;
      // Who may have cancelled it, and since when: a failFast group's failing child, or a cancelled ancestor.
      let cancelledSince: number | undefined;
      const failing = c.failFast && !c.input.fail ? failingOf.get(`${c.parent}|${c.step}`) : undefined;
      const failedAt = failing ? rowOf.get(failing.id)?.finished_at : undefined;
      if (failedAt != null) cancelledSince = Number(failedAt);
      const ancestor = c.cancellableBy ? rowOf.get(c.cancellableBy) : undefined;
      if (ancestor?.state === 'cancelled' && ancestor.finished_at != null) {
        kids.underCancelled++;
        if (row.state === 'cancelled') kids.cancelledWithParent++;
        cancelledSince = Math.min(cancelledSince ?? Infinity, Number(ancestor.finished_at));
      }
      let expected: string[];
      if (c.input.fail) {
        kids.deliberateFailures++;
        if (c.input.fail.how === 'permanent') {
          kids.deliberateDeadLetters++;
          permanent.add(c.id);
        }
        expected = ['failed'];
        expectSteps(c.id, c.input.steps, c.input.fail.at + 1);
      } else if (c.failFast || ancestor?.state === 'cancelled') {
        expected = ['succeeded', 'cancelled'];
        expectSteps(c.id, c.input.steps, row.state === 'succeeded' ? c.input.steps : 'prefix');
      } else {
        expected = ['succeeded'];
        expectSteps(c.id, c.input.steps, c.input.steps);
      }
      const result = JSON.parse(row.result ?? 'null') as { n?: number; id?: string } | null;
      const resultRight = row.state !== 'succeeded' || (result?.n === c.input.steps && result.id === c.id);
      const errorRight = row.state !== 'failed' || row.error === DELIBERATE_FAILURE;
      if (!expected.includes(row.state) || !resultRight || !errorRight) {
        kids.wrongOutcomes++;
        childProblem(
          `child ${c.id} ended ${row.state} (${row.result ?? row.error}), planned ${expected.join(' or ')}${c.input.fail ? ` (${c.input.fail.how} at step ${c.input.fail.at})` : ''}`,
        );
      }
      // Once its cancel was due (the failing sibling ended, or the ancestor was cancelled), a
      // run starts no step: maintenance cancels a failFast group's siblings within a poll, and
      // a cancelled run's children right after it. A kill or a crash in between excuses a delay.
      if (cancelledSince !== undefined && row.state !== 'cancelled') {
        const slack = failing && cancelledSince === Number(failedAt) ? 1000 : 500;
        for (const n of stepsOf.get(c.id) ?? []) {
          const late = (deliveriesOf.get(`${c.id}|${n}`) ?? []).find(
            ([, at]) => at > cancelledSince! + slack && !killOrCrashBetween(cancelledSince!, at),
          );
          if (!late) continue;
          kids.ranAfterCancelDue++;
          childProblem(
            `child ${c.id} ran step ${n} ${late[1] - cancelledSince}ms after its cancel was due (${failing ? `sibling ${failing.id} failed` : `parent ${c.cancellableBy} cancelled`}) and ended ${row.state}`,
          );
          break;
        }
      }
    }

    // Every spawn's parent resumes once all its children have ended, with every outcome in spawn order.
    const joinRows = await db.query<Array<{ run_id: string; step_number: number; children: string | null }>>(
      `SELECT run_id, step_number, children FROM ${journal} WHERE kind = 'step' AND children IS NOT NULL`,
    );
    const joinSeen = new Map<string, Array<string | null>>();
    for (const r of joinRows) {
      const key = `${r.run_id}|${r.step_number}`;
      joinSeen.set(key, [...(joinSeen.get(key) ?? []), r.children]);
    }
    for (const p of plannedSpawns) {
      const key = `${p.parent}|${p.step + 1}`;
      const deliveries = deliveriesOf.get(key) ?? [];
      const parentRow = rowOf.get(p.parent);
      if (deliveries.length === 0) {
        // A child that spawns and is then cancelled may never resume; every other parent must.
        if (parentRow?.state === 'cancelled') kids.notResumed++;
        else {
          kids.missingJoins++;
          childProblem(`${p.parent} never resumed after its spawn at step ${p.step} (it ended ${parentRow?.state})`);
        }
        continue;
      }
      const want = p.children.map((id) => {
        const row = rowOf.get(id);
        return { id, status: row?.state, result: row?.result == null ? undefined : JSON.parse(row.result) };
      });
      const got = joinSeen.get(key) ?? [];
      const right = (text: string | null) => {
        if (text === null) return false;
        const list = JSON.parse(text) as Array<{ id: string; status: string; result?: unknown }>;
        return (
          list.length === want.length &&
          list.every(
            (g, i) =>
              g.id === want[i].id &&
              g.status === want[i].status &&
              JSON.stringify(g.result) === JSON.stringify(want[i].result),
          )
        );
      };
      if (got.length === deliveries.length && got.every(right)) kids.joined++;
      else {
        kids.wrongJoins++;
        childProblem(
          `${p.parent} step ${p.step + 1}: ${deliveries.length} deliveries journaled ${JSON.stringify(got)}, its children are ${JSON.stringify(want)}`,
        );
      }
      const lastEnd = Math.max(...p.children.map((id) => Number(rowOf.get(id)?.finished_at ?? Infinity)));
      const firstAt = Math.min(...deliveries.map(([, at]) => at));
      if (firstAt < lastEnd) {
        kids.earlyJoins++;
        childProblem(`${p.parent} resumed at step ${p.step + 1} ${lastEnd - firstAt}ms before its last child ended`);
      }
    }

    const terminalRows = await db.query<Array<{ run_id: string; kind: string }>>(
      `SELECT DISTINCT run_id, kind FROM ${journal} WHERE kind LIKE 'terminal:%'`,
    );
    const delivered = new Set(terminalRows.map((r) => `${r.run_id}|${r.kind}`));
    const deadRows = await db.query<Array<{ run_id: string; last_error: string }>>(
      `SELECT run_id, last_error FROM \`${o.prefix}dead\``,
    );
    for (const d of deadRows) {
      if (permanent.has(d.run_id) && d.last_error.includes(DELIBERATE_FAILURE)) continue;
      kids.unexpectedDeadLetters++;
      childProblem(`dead letter of run ${d.run_id}: ${d.last_error.slice(0, 200)}`);
    }
    for (const id of permanent) {
      if (deadRows.filter((d) => d.run_id === id).length === 1) continue;
      kids.unexpectedDeadLetters++;
      childProblem(
        `deliberate failure ${id} has ${deadRows.filter((d) => d.run_id === id).length} dead letters, not 1`,
      );
    }
    const withoutTerminal = runRows.filter((r) => !delivered.has(`${r.id}|terminal:${r.state}`)).length;
    const idSet = new Set(runRows.map((r) => r.id));
    for (const line of stepProblems) log(`STEP PROBLEM: ${line}`);
    return {
      runs: o.runs,
      steps: o.steps,
      workers: o.workers,
      kills: killed.size,
      database: galera ? 'cluster' : privateDb ? 'private' : 'shared',
      dbRestarts: crashes.length,
      dbDowntimeMs,
      submitRetries,
      ...(galera
        ? {
            cluster: {
              mode: o.cluster!,
              nodeFailures: nodeCrashes.length,
              killedNodes,
              nodeDowntimeMs,
              certificationFailures: await certs.total(),
            },
          }
        : {}),
      elapsedMs,
      stepsPerSecond: Math.round((o.runs * o.steps + kids.childDeliveries) / (elapsedMs / 1000)),
      succeeded: ids.filter((id) => idSet.has(id)).length - notSucceeded.length,
      notSucceeded: notSucceeded.slice(0, 20),
      missingSteps,
      unexpectedSteps,
      duplicateDeliveries,
      duplicatesAroundKill,
      duplicatesAroundDbRestart,
      duplicatesAroundNodeFailure,
      maxDbRestartDuplicateLeadMs,
      duplicatesAfterLeaseExpiry,
      leaseExpiriesWithStall,
      leaseExpiriesInFirst5s,
      leaseExpiries,
      eventLoopStalls,
      duplicatesWithoutKill,
      unexplainedDuplicates,
      runsWithoutTerminalDelivery: withoutTerminal + ids.filter((id) => !idSet.has(id)).length + kids.missingChildren,
      leftoverJobs,
      countsDrift,
      deadLetters: deadRows.length,
      runsLost: ids.filter((id) => !idSet.has(id)).length + notSucceeded.length + kids.missingChildren,
      unexpectedWorkerExits,
      signals: sig,
      children: kids,
    };
  } finally {
    stop = true;
    stopped();
    // A replacement worker or a restart under way finishes first, so nothing is left behind.
    await chaos;
    for (const w of workers) killed.add(w.pid);
    await Promise.all(workers.map((w) => w.kill('SIGKILL')));
    stopSignals = true;
    await signalling;
    await Promise.all(inFlight);
    await signaller?.close();
    await signalDb.end();
    await app?.close();
    if (privateDb) {
      await db.end();
      await privateDb.destroy();
    } else if (galera) {
      await db.query(`DROP TABLE IF EXISTS ${journal}`).catch(() => undefined);
      await db.end();
      await dropTables(o.prefix, galera.writerUrl).catch(() => undefined);
    } else {
      await db.query(`DROP TABLE IF EXISTS ${journal}`).catch(() => undefined);
      await db.end();
      await dropTables(o.prefix, url);
    }
  }
}
