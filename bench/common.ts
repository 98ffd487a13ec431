/**
 * Shared by the orchestrator (main.ts) and the child processes (child.ts): settings
 * from the environment, the chain tracker every system's runner calls, latency
 * statistics, and the message shapes children send back.
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import { performance } from 'node:perf_hooks';

/** Wall-clock milliseconds with sub-millisecond resolution, comparable across processes on one host. */
export function wallNow(): number {
  return performance.timeOrigin + performance.now();
}

export function envInt(name: string, def: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return def;
  const n = Number(raw.replace(/_/g, ''));
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a number >= 0, got ${JSON.stringify(raw)}`);
  return Math.floor(n);
}

export function envList(name: string, def: string): string[] {
  return (process.env[name] ?? def)
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}

/** Everything a child needs; built once by main.ts from the environment and passed to each child as JSON. */
export interface BenchConfig {
  mysqlUrl: string;
  pgUrl: string;
  redisUrl: string;
  runs: number;
  steps: number;
  concurrency: number;
  payloadBytes: number;
  submitBatch: number;
  pollIntervalMs: number;
  /** Optional poolSize for our module; undefined keeps the module default. */
  oursPool?: number;
  pgbossRuns: number;
  pgbossPollSeconds: number;
  floorPollMs: number;
  submitRuns: number;
  submitConcurrency: number;
  backlog: number[];
  backlogDrain: number;
  backlogInsertBatch: number;
  /** Runs parked on a signal beside the backlog, in the same queue: a claim must not notice them. */
  backlogWaiting: number;
  backlogDelayed: number;
  backlogSchedules: number;
  scale: number[];
  timeoutS: number;
  /**
   * BENCH_PREFILL=1: the chain section queues every run before any worker starts, and
   * times from the first step's start to the last ending: the backlog drain the issue
   * names ("addBulk then a worker draining it"), without submission beside it.
   */
  prefill: boolean;
  /** Set by main.ts per child when BENCH_PROFILE names it: where to write the measured window's CPU profile. */
  profileFile?: string;
}

export function loadConfig(): BenchConfig {
  const oursPool = envInt('BENCH_OURS_POOL', 0);
  return {
    mysqlUrl: process.env.BENCH_MYSQL_URL ?? process.env.WORKFLOW_DB_URL ?? 'mysql://root@127.0.0.1:3306/test',
    pgUrl: process.env.BENCH_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test',
    redisUrl: process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379',
    runs: envInt('BENCH_RUNS', 1000),
    steps: Math.max(1, envInt('BENCH_STEPS', 10)),
    concurrency: Math.max(1, envInt('BENCH_CONCURRENCY', 16)),
    payloadBytes: envInt('BENCH_PAYLOAD', 64),
    submitBatch: Math.max(1, envInt('BENCH_SUBMIT_BATCH', 500)),
    pollIntervalMs: Math.max(1, envInt('BENCH_POLL_MS', 50)),
    oursPool: oursPool > 0 ? oursPool : undefined,
    pgbossRuns: envInt('BENCH_PGBOSS_RUNS', 100),
    pgbossPollSeconds: Number(process.env.BENCH_PGBOSS_POLL_S ?? 0.5),
    floorPollMs: Math.max(1, envInt('BENCH_FLOOR_POLL_MS', 10)),
    submitRuns: envInt('BENCH_SUBMIT_RUNS', 10_000),
    submitConcurrency: Math.max(1, envInt('BENCH_SUBMIT_CONCURRENCY', 16)),
    backlog: envList('BENCH_BACKLOG', '1000,100000,1000000').map((s) => Math.floor(Number(s.replace(/_/g, '')))),
    backlogDrain: Math.max(1, envInt('BENCH_BACKLOG_DRAIN', 2000)),
    backlogInsertBatch: Math.max(1, envInt('BENCH_BACKLOG_INSERT_BATCH', 2000)),
    backlogWaiting: Math.max(0, envInt('BENCH_BACKLOG_WAITING', 0)),
    backlogDelayed: Math.max(0, envInt('BENCH_BACKLOG_DELAYED', 0)),
    backlogSchedules: Math.max(0, envInt('BENCH_BACKLOG_SCHEDULES', 0)),
    scale: envList('BENCH_SCALE', '1,2,4').map((s) => Math.max(1, Math.floor(Number(s)))),
    timeoutS: Math.max(10, envInt('BENCH_TIMEOUT_S', 900)),
    prefill: process.env.BENCH_PREFILL === '1',
  };
}

// ------------------------------------------------------------------ statistics

export interface LatencySummary {
  count: number;
  p50: number;
  p99: number;
  max: number;
  mean: number;
}

/** A growable buffer of latency samples in ms; summarised once at the end. */
export class Samples {
  private buf: Float64Array;
  private n = 0;

  constructor(capacity = 1024) {
    this.buf = new Float64Array(Math.max(16, capacity));
  }

  add(v: number): void {
    if (this.n === this.buf.length) {
      const next = new Float64Array(this.buf.length * 2);
      next.set(this.buf);
      this.buf = next;
    }
    this.buf[this.n++] = v;
  }

  addAll(values: ArrayLike<number>): void {
    for (let i = 0; i < values.length; i++) this.add(values[i]);
  }

  get count(): number {
    return this.n;
  }

  values(): number[] {
    return Array.from(this.buf.subarray(0, this.n));
  }

  summary(): LatencySummary {
    return summarize(this.buf.subarray(0, this.n));
  }
}

export function summarize(values: ArrayLike<number>): LatencySummary {
  const sorted = Float64Array.from(values).sort();
  const n = sorted.length;
  if (n === 0) return { count: 0, p50: NaN, p99: NaN, max: NaN, mean: NaN };
  let sum = 0;
  for (let i = 0; i < n; i++) sum += sorted[i];
  const at = (p: number) => sorted[Math.min(n - 1, Math.max(0, Math.ceil(p * n) - 1))];
  return { count: n, p50: at(0.5), p99: at(0.99), max: sorted[n - 1], mean: sum / n };
}

// ------------------------------------------------------------------ the chain workload

/** The payload every step hands to the next: `t` is when the runner returned, `p` pads to the wanted size. */
export interface ChainPayload {
  t: number;
  p: string;
}

export function makePad(payloadBytes: number): string {
  const base = JSON.stringify({ t: 1_732_456_789_012.123, p: '' }).length;
  return 'x'.repeat(Math.max(0, payloadBytes - base));
}

/**
 * What every system's runner calls: `started` when a step begins (records the
 * transition latency from the previous step's return, carried in the payload so it
 * works across processes), `next` to make the successor's payload at the moment the
 * runner returns, `finished` in the last step. Deliberately a few arithmetic ops, so
 * the measurement does not cost more than the thing measured.
 */
export class ChainTracker {
  readonly samples: Samples;
  executed = 0;
  completed = 0;
  lastAt = 0;
  firstStepAt = 0;
  private readonly pad: string;
  private resolveDone!: () => void;
  readonly done: Promise<void>;

  constructor(
    readonly runs: number,
    readonly steps: number,
    payloadBytes: number,
    /** How many completions resolve `done`; 0 never resolves it (scale-out workers report instead). */
    readonly target = runs,
  ) {
    this.samples = new Samples(runs * Math.max(1, steps - 1));
    this.pad = makePad(payloadBytes);
    this.done = new Promise((r) => (this.resolveDone = r));
    if (target === 0 && runs === 0) this.resolveDone();
  }

  started(stepNumber: number, payload: Partial<ChainPayload> | null | undefined): void {
    this.executed++;
    if (this.firstStepAt === 0) this.firstStepAt = wallNow();
    if (stepNumber > 0 && payload && typeof payload.t === 'number') this.samples.add(wallNow() - payload.t);
  }

  isLast(stepNumber: number): boolean {
    return stepNumber >= this.steps - 1;
  }

  next(): ChainPayload {
    return { t: wallNow(), p: this.pad };
  }

  input(): ChainPayload {
    return { t: 0, p: this.pad };
  }

  finished(): void {
    this.completed++;
    this.lastAt = wallNow();
    if (this.target > 0 && this.completed === this.target) this.resolveDone();
  }
}

/** The note of a chain run whose runs were all queued before its worker started (BENCH_PREFILL=1). */
export function prefillNote(runs: number, fillMs: number): string {
  return `${runs} runs queued first in ${fillMs.toFixed(0)} ms; timed from the first step`;
}

/** Rejects after `ms` with a message naming what was being waited for. */
export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/**
 * Starts the V8 CPU profiler in this process (only when `file` is set) and returns the
 * function that stops it and writes a .cpuprofile. Profiles the measured window only,
 * not module loading and app start-up as `node --cpu-prof` would.
 */
export async function startProfiler(file: string | undefined): Promise<() => Promise<void>> {
  if (!file) return async () => undefined;
  const session = new Session();
  session.connect();
  const post = (method: string, params: object = {}) =>
    new Promise<any>((resolve, reject) =>
      session.post(method, params, (err, res) => (err ? reject(err) : resolve(res))),
    );
  await post('Profiler.enable');
  await post('Profiler.setSamplingInterval', { interval: 250 });
  await post('Profiler.start');
  return async () => {
    const { profile } = await post('Profiler.stop');
    writeFileSync(file, JSON.stringify(profile));
    session.disconnect();
  };
}

// ------------------------------------------------------------------ CPU accounting

/** Average cores busy over a window: this process, the database servers, everything else (background load). */
export interface CpuShare {
  self: number;
  db: number;
  other: number;
  machine: number;
}

const DB_PROCESSES = new Set(['mariadbd', 'mysqld', 'redis-server', 'postgres']);
const TICK_MS = 10; // USER_HZ is 100 on Linux

function readMachineBusyMs(): number {
  try {
    const [line] = readFileSync('/proc/stat', 'utf8').split('\n', 1);
    const f = line.trim().split(/\s+/).slice(1).map(Number);
    const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
    return (total - f[3] - f[4]) * TICK_MS; // minus idle and iowait
  } catch {
    return NaN;
  }
}

function readDbMs(): number {
  let ticks = 0;
  try {
    for (const pid of readdirSync('/proc')) {
      if (!/^\d+$/.test(pid)) continue;
      try {
        const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
        const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
        if (!DB_PROCESSES.has(comm)) continue;
        const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        ticks += Number(rest[11]) + Number(rest[12]); // utime, stime (fields 14, 15)
      } catch {
        // the process ended meanwhile
      }
    }
  } catch {
    return NaN;
  }
  return ticks * TICK_MS;
}

function readPidsMs(pids: number[]): number {
  let ticks = 0;
  for (const pid of pids) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks += Number(rest[11]) + Number(rest[12]);
    } catch {
      // gone
    }
  }
  return ticks * TICK_MS;
}

/**
 * Call at the start of a measured window; the returned function gives the CPU shares
 * since then. `self` is this process, or the given pids (scale-out workers).
 */
export function cpuWindow(pids?: number[]): () => CpuShare {
  const t0 = wallNow();
  const self0 = process.cpuUsage();
  const pids0 = pids ? readPidsMs(pids) : 0;
  const machine0 = readMachineBusyMs();
  const db0 = readDbMs();
  return () => {
    const ms = wallNow() - t0;
    const u = process.cpuUsage(self0);
    const self = pids ? (readPidsMs(pids) - pids0) / ms : (u.user + u.system) / 1000 / ms;
    const machine = (readMachineBusyMs() - machine0) / ms;
    const db = (readDbMs() - db0) / ms;
    return { self, db, other: Math.max(0, machine - self - db), machine };
  };
}

export function fmtCpu(c: CpuShare | undefined): string {
  if (!c) return '–';
  return `${c.self.toFixed(2)} / ${c.db.toFixed(2)} / ${c.other.toFixed(2)}`;
}

/**
 * The result row of one chain measurement, with the figures derived the same way for
 * every system, plus a note when the tracker saw more or fewer steps than expected.
 */
export function chainResult(o: {
  system: string;
  settings: string;
  runs: number;
  steps: number;
  elapsedMs: number;
  tracker: ChainTracker;
  cpu?: CpuShare;
  serverPerStep?: Record<string, number>;
  notes: string[];
}): ChainResult {
  const expected = o.runs * o.steps;
  const notes = [...o.notes];
  if (o.tracker.executed !== expected) notes.push(`executed ${o.tracker.executed} steps (expected ${expected})`);
  return {
    section: 'chain',
    system: o.system,
    settings: o.settings,
    runs: o.runs,
    steps: o.steps,
    elapsedMs: o.elapsedMs,
    stepsPerSec: expected / (o.elapsedMs / 1000),
    runsPerSec: o.runs / (o.elapsedMs / 1000),
    latency: o.tracker.samples.summary(),
    peakRssMb: peakRssMb(),
    executed: o.tracker.executed,
    cpu: o.cpu,
    ...(o.serverPerStep ? { serverPerStep: o.serverPerStep } : {}),
    notes,
  };
}

export function peakRssMb(): number {
  return process.resourceUsage().maxRSS / 1024; // maxRSS is in KiB
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

// ------------------------------------------------------------------ results

export interface ChainResult {
  section: 'chain';
  system: string;
  settings: string;
  runs: number;
  steps: number;
  elapsedMs: number;
  stepsPerSec: number;
  runsPerSec: number;
  latency: LatencySummary;
  peakRssMb: number;
  executed: number;
  /** Cores busy during the measured window: this process / database servers / other load. */
  cpu?: CpuShare;
  /** MySQL systems: server statements per step, from SHOW GLOBAL STATUS deltas (server-wide). */
  serverPerStep?: Record<string, number>;
  notes: string[];
}

export interface SubmitResult {
  section: 'submit';
  system: string;
  settings: string;
  mode: string;
  runs: number;
  elapsedMs: number;
  runsPerSec: number;
  callLatency: LatencySummary;
  cpu?: CpuShare;
  peakRssMb: number;
  notes: string[];
}

export interface BacklogResult {
  section: 'backlog';
  system: string;
  settings: string;
  backlog: number;
  insertMs: number;
  drained: number;
  elapsedMs: number;
  stepsPerSec: number;
  claims: number;
  jobsPerClaim: number;
  claimMs: LatencySummary;
  explain: string;
  cpu?: CpuShare;
  peakRssMb: number;
  notes: string[];
}

export interface BacklogFill {
  section: 'backlog-fill';
  backlog: number;
  insertMs: number;
  explain: string;
  /** How long the server took to write back and purge after the insert, before the drain started. */
  quiet: { waitedMs: number; dirtyPages: number; history: number };
}

export interface ScaleResult {
  section: 'scale';
  system: string;
  settings: string;
  processes: number;
  runs: number;
  steps: number;
  elapsedMs: number;
  stepsPerSec: number;
  runsPerSec: number;
  latency: LatencySummary;
  conflictRetries: number | null;
  perProcessSteps: number[];
  serverDeadlocks: number | null;
  serverRowLockWaits: number | null;
  peakRssMb: number[];
  /** Cores busy from submit to the last completion: worker processes (summed) / database / other load. */
  cpu?: CpuShare;
  notes: string[];
}

export type AnyResult = ChainResult | SubmitResult | BacklogResult | ScaleResult | BacklogFill;

/** Messages from a child to main.ts over the IPC channel. */
export type ChildMessage =
  | { type: 'settings'; settings: string }
  | { type: 'result'; result: AnyResult }
  | { type: 'error'; error: string }
  // scale-out workers
  | { type: 'ready'; pid: number }
  | { type: 'progress'; completed: number; lastAt: number }
  | { type: 'submitted'; t0: number; submitMs: number }
  | {
      type: 'final';
      completed: number;
      executed: number;
      lastAt: number;
      samples: number[];
      conflictRetries: number | null;
      peakRssMb: number;
      server?: { deadlocks: number; rowLockWaits: number } | null;
    };

/** Messages from main.ts to a scale-out worker. */
export type ParentMessage = { type: 'submit' } | { type: 'stop' } | { type: 'server-before' };

export function send(msg: ChildMessage): Promise<void> {
  return new Promise((resolve) => {
    if (!process.send) return resolve();
    process.send(msg, undefined, {}, () => resolve());
  });
}

export function fmt(n: number, digits = 0): string {
  if (!Number.isFinite(n)) return '–';
  return n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

export function fmtMs(n: number): string {
  if (!Number.isFinite(n)) return '–';
  if (n >= 100) return fmt(n, 0);
  if (n >= 10) return fmt(n, 1);
  return fmt(n, 2);
}
