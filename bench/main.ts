/**
 * `npm run bench`: runs every section, each system in a fresh child process, and prints
 * one table per section. Settings come from the environment (see bench/README.md).
 * Results are also written to .tmp/bench/results/<timestamp>.{json,md}.
 */
import { type ChildProcess, execSync, fork } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { cpus, freemem, loadavg, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ChainSystem, Task } from './child.js';
import {
  type AnyResult,
  type BacklogFill,
  type BacklogResult,
  type BenchConfig,
  type ChainResult,
  type ChildMessage,
  type ScaleResult,
  type SubmitResult,
  cpuWindow,
  envInt,
  envList,
  fmt,
  fmtCpu,
  fmtMs,
  loadConfig,
  sleep,
  wallNow,
} from './common.js';
import { dropWorkflowTables } from './db.js';
import { formatProfile } from './profile.js';
import { scaleResult } from './scale.js';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
const childPath = join(here, 'child.js');
const profileDir = join(root, '.tmp', 'bench', 'profiles');
const resultsDir = join(root, '.tmp', 'bench', 'results');

const CHAIN_SYSTEMS: ChainSystem[] = ['ours', 'ours-notrace', 'bullmq', 'graphile', 'pgboss', 'floor', 'floor8'];
const SECTIONS = [...CHAIN_SYSTEMS, 'submit', 'backlog', 'scale'];
/** Run unless BENCH_ONLY says otherwise; `ours-notrace` is an extra, only when named. */
const DEFAULT_SECTIONS = SECTIONS.filter((s) => s !== 'ours-notrace');
const only = new Set(envList('BENCH_ONLY', DEFAULT_SECTIONS.join(',')));
const profile = new Set(envList('BENCH_PROFILE', ''));
const unknown = [...only, ...profile].filter((s) => !SECTIONS.includes(s));
if (unknown.length) {
  console.error(`BENCH_ONLY / BENCH_PROFILE: unknown ${unknown.join(', ')}; known: ${SECTIONS.join(', ')}`);
  process.exit(2);
}

const cfg = loadConfig();
const repeat = Math.max(1, envInt('BENCH_REPEAT', 1));
const failures: Array<{ label: string; error: string; ours: boolean }> = [];
const profiles: Array<{ label: string; file: string }> = [];

function log(line: string): void {
  process.stdout.write(`${line}\n`);
}

// ------------------------------------------------------------------ children

interface Spawned {
  child: ChildProcess;
  messages: ChildMessage[];
  exited: Promise<number | null>;
  on(fn: (m: ChildMessage) => void): void;
}

function spawn(task: Task, label: string, profileKey: string): Spawned {
  if (profile.has(profileKey)) {
    mkdirSync(profileDir, { recursive: true });
    const file = join(profileDir, `${label.replace(/[^A-Za-z0-9_.-]+/g, '_')}-${Date.now()}.cpuprofile`);
    task = { ...task, cfg: { ...task.cfg, profileFile: file } };
    profiles.push({ label, file });
  }
  const child = fork(childPath, [JSON.stringify(task)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const messages: ChildMessage[] = [];
  const listeners: Array<(m: ChildMessage) => void> = [];
  child.on('message', (m: ChildMessage) => {
    messages.push(m);
    if (m.type === 'settings') log(`  ${label}: ${m.settings}`);
    for (const fn of listeners) fn(m);
  });
  const exited = new Promise<number | null>((resolve) => {
    child.on('exit', (code) => resolve(code));
    child.on('error', () => resolve(-1));
  });
  return { child, messages, exited, on: (fn) => listeners.push(fn) };
}

async function killAfter(s: Spawned, ms: number, label: string): Promise<void> {
  const timer = setTimeout(() => {
    log(`  ${label}: no result after ${ms / 1000} s; killing pid ${s.child.pid}`);
    s.child.kill('SIGKILL');
  }, ms);
  await s.exited;
  clearTimeout(timer);
}

async function runChild(task: Task, label: string, profileKey: string, ours: boolean): Promise<AnyResult[]> {
  await waitForDist();
  const s = spawn(task, label, profileKey);
  await killAfter(s, (cfg.timeoutS + 120) * 1000, label);
  const results = s.messages.filter((m) => m.type === 'result').map((m) => (m as { result: AnyResult }).result);
  const error = s.messages.find((m) => m.type === 'error') as { error: string } | undefined;
  if (error || results.length === 0) {
    const text = error?.error ?? `exited with code ${s.child.exitCode} without a result`;
    failures.push({ label, error: text.split('\n').slice(0, 3).join(' | '), ours });
    log(`  ${label}: FAILED: ${text.split('\n')[0]}`);
  }
  for (const r of results) log(`  ${label}: ${oneLiner(r)}`);
  return results;
}

/** Others rebuild dist/ (rm -rf then tsc) while tests run: wait for a complete build. */
async function waitForDist(): Promise<void> {
  const entry = join(root, 'dist', 'index.js');
  for (let i = 0; i < 600 && !existsSync(entry); i++) await sleep(100);
  if (!existsSync(entry)) throw new Error('dist/index.js missing: run `npm run build`');
}

function oneLiner(r: AnyResult): string {
  switch (r.section) {
    case 'chain':
    case 'scale':
      return (
        `${fmt(r.stepsPerSec)} steps/s, ${fmt(r.runsPerSec)} runs/s, p50 ${fmtMs(r.latency.p50)} ms, p99 ${fmtMs(r.latency.p99)} ms` +
        (r.notes.length ? ` (${r.notes.join('; ')})` : '')
      );
    case 'submit':
      return `${r.mode}: ${fmt(r.runsPerSec)} runs/s (${r.notes.join('; ')})`;
    case 'backlog-fill':
      return `${fmt(r.backlog)} steps queued in ${(r.insertMs / 1000).toFixed(1)} s; claim plan: ${r.explain}`;
    case 'backlog':
      return `backlog ${fmt(r.backlog)}: ${fmt(r.stepsPerSec)} steps/s, claim p50 ${fmtMs(r.claimMs.p50)} ms (${r.notes.join('; ')})`;
  }
}

// ------------------------------------------------------------------ scale-out

async function runScale(processes: number): Promise<ScaleResult | null> {
  await waitForDist();
  const label = `scale ×${processes}`;
  await dropWorkflowTables(cfg.mysqlUrl, 'bench_');
  const workers = Array.from({ length: processes }, (_, index) =>
    spawn({ kind: 'scale-worker', index, processes, cfg }, `${label} #${index}`, 'scale'),
  );
  const progress = new Array<number>(processes).fill(0);
  let settings = '';
  let t0 = 0;
  let submitMs = 0;
  let readyCount = 0;
  let allDone!: () => void;
  const done = new Promise<void>((r) => (allDone = r));
  let allReady!: () => void;
  const ready = new Promise<void>((r) => (allReady = r));
  workers.forEach((w, i) =>
    w.on((m) => {
      if (m.type === 'ready' && ++readyCount === processes) allReady();
      if (m.type === 'settings') settings = m.settings;
      if (m.type === 'submitted') {
        t0 = m.t0;
        submitMs = m.submitMs;
      }
      if (m.type === 'progress') {
        progress[i] = m.completed;
        if (progress.reduce((a, b) => a + b, 0) >= cfg.runs) allDone();
      }
      if (m.type === 'error') allDone();
    }),
  );
  const anyExit = Promise.race(workers.map((w) => w.exited));
  const deadline = (cfg.timeoutS + 60) * 1000;
  let deadlineTimer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'timeout'>((r) => (deadlineTimer = setTimeout(() => r('timeout'), deadline)));
  const first = await Promise.race([ready.then(() => 'ready' as const), anyExit.then(() => 'exit' as const), timeout]);
  let cpuShare: ReturnType<ReturnType<typeof cpuWindow>> | undefined;
  if (first === 'ready') {
    const cpu = cpuWindow(workers.map((w) => w.child.pid!).filter(Boolean));
    workers[0].child.send({ type: 'submit' });
    await Promise.race([done, anyExit, timeout]);
    cpuShare = cpu();
  }
  clearTimeout(deadlineTimer);
  for (const w of workers) if (w.child.connected) w.child.send({ type: 'stop' });
  await Promise.all(workers.map((w) => killAfter(w, 60_000, label)));
  const finals = workers.map((w) => w.messages.find((m) => m.type === 'final')) as Array<
    Extract<ChildMessage, { type: 'final' }> | undefined
  >;
  const errors = workers.flatMap((w) =>
    w.messages.filter((m) => m.type === 'error').map((m) => (m as { error: string }).error),
  );
  if (errors.length || finals.some((f) => !f) || t0 === 0) {
    const text =
      errors[0] ?? (first === 'ready' ? 'a worker gave no final report' : `workers did not all start (${first})`);
    failures.push({ label, error: text.split('\n').slice(0, 3).join(' | '), ours: true });
    log(`  ${label}: FAILED: ${text.split('\n')[0]}`);
    return null;
  }
  const result = scaleResult(cfg, processes, settings, t0, finals as Array<Extract<ChildMessage, { type: 'final' }>>, [
    `submit took ${submitMs.toFixed(0)} ms of it`,
  ]);
  result.cpu = cpuShare;
  log(`  ${label}: ${oneLiner(result)}, conflict retries ${result.conflictRetries ?? '?'}`);
  return result;
}

// ------------------------------------------------------------------ tables

function table(header: string[], rows: string[][], align: Array<'l' | 'r'>): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) =>
    `| ${cells.map((c, i) => (align[i] === 'r' ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join(' | ')} |`;
  const sep = `|${widths.map((w, i) => (align[i] === 'r' ? `${'-'.repeat(w + 1)}:` : `:${'-'.repeat(w + 1)}`)).join('|')}|`;
  return [line(header), sep, ...rows.map(line)].join('\n');
}

function ratio(x: number): string {
  return `${x < 0.1 ? x.toFixed(3) : x.toFixed(2)}×`;
}

function chainTable(rows: ChainResult[]): string {
  const ours = rows.find((r) => r.system === 'ours');
  return table(
    [
      'system',
      'settings',
      'runs×steps',
      'steps/s',
      'runs/s',
      'p50 ms',
      'p99 ms',
      'max ms',
      'peak RSS MB',
      'vs ours',
      'CPU cores self/db/other',
      'SQL stmts/step',
    ],
    rows.map((r) => [
      r.system,
      r.settings,
      `${fmt(r.runs)}×${r.steps}`,
      fmt(r.stepsPerSec),
      fmt(r.runsPerSec),
      fmtMs(r.latency.p50),
      fmtMs(r.latency.p99),
      fmtMs(r.latency.max),
      fmt(r.peakRssMb),
      ours ? ratio(r.stepsPerSec / ours.stepsPerSec) : '–',
      fmtCpu(r.cpu),
      r.serverPerStep ? r.serverPerStep.statements.toFixed(1) : '–',
    ]),
    ['l', 'l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r'],
  );
}

function submitTable(rows: SubmitResult[]): string {
  return table(
    [
      'mode',
      'runs',
      'runs/s',
      'call p50 ms',
      'call p99 ms',
      'call max ms',
      'peak RSS MB',
      'CPU cores self/db/other',
      'check',
    ],
    rows.map((r) => [
      r.mode,
      fmt(r.runs),
      fmt(r.runsPerSec),
      fmtMs(r.callLatency.p50),
      fmtMs(r.callLatency.p99),
      fmtMs(r.callLatency.max),
      fmt(r.peakRssMb),
      fmtCpu(r.cpu),
      r.notes.join('; '),
    ]),
    ['l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'l'],
  );
}

function backlogTable(rows: BacklogResult[]): string {
  return table(
    [
      'queued',
      'insert s',
      'drained',
      'steps/s',
      'claims',
      'jobs/claim',
      'claim p50 ms',
      'claim p99 ms',
      'claim max ms',
      'peak RSS MB',
      'CPU cores self/db/other',
      'EXPLAIN of the claim',
    ],
    rows.map((r) => [
      fmt(r.backlog),
      (r.insertMs / 1000).toFixed(1),
      fmt(r.drained),
      fmt(r.stepsPerSec),
      fmt(r.claims),
      r.jobsPerClaim.toFixed(1),
      fmtMs(r.claimMs.p50),
      fmtMs(r.claimMs.p99),
      fmtMs(r.claimMs.max),
      fmt(r.peakRssMb),
      fmtCpu(r.cpu),
      r.explain,
    ]),
    ['r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'l'],
  );
}

function scaleTable(rows: ScaleResult[]): string {
  const base = rows.find((r) => r.processes === 1);
  return table(
    [
      'processes',
      'steps/s',
      'runs/s',
      'vs 1 process',
      'p50 ms',
      'p99 ms',
      'max ms',
      'conflict retries',
      'server deadlocks / row-lock waits',
      'steps per process',
      'peak RSS MB each',
      'CPU cores workers/db/other',
    ],
    rows.map((r) => [
      String(r.processes),
      fmt(r.stepsPerSec),
      fmt(r.runsPerSec),
      base ? ratio(r.stepsPerSec / base.stepsPerSec) : '–',
      fmtMs(r.latency.p50),
      fmtMs(r.latency.p99),
      fmtMs(r.latency.max),
      r.conflictRetries === null ? '?' : String(r.conflictRetries),
      r.serverDeadlocks === null ? '?' : `${r.serverDeadlocks} / ${r.serverRowLockWaits}`,
      r.perProcessSteps.map((n) => fmt(n)).join(' / '),
      r.peakRssMb.map((n) => fmt(n)).join(' / '),
      fmtCpu(r.cpu),
    ]),
    ['r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'l', 'l', 'r'],
  );
}

// ------------------------------------------------------------------ main

function sh(cmd: string): string {
  try {
    return execSync(cmd, { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return '?';
  }
}

function describeSettings(c: BenchConfig): string {
  return [
    `chain: ${c.runs} runs × ${c.steps} steps, concurrency ${c.concurrency}, payload ~${c.payloadBytes} B, submit batches of ${c.submitBatch}, our pollIntervalMs ${c.pollIntervalMs}` +
      (c.oursPool ? `, our poolSize ${c.oursPool}` : ''),
    `each chain system run ${repeat} time(s)${repeat > 1 ? ', median shown' : ''}`,
    `pg-boss: ${c.pgbossRuns} runs, polling ${c.pgbossPollSeconds} s; floor idle poll ${c.floorPollMs} ms`,
    `submit: ${c.submitRuns} runs, ${c.submitConcurrency} concurrent submit() callers / submitMany ×${c.submitBatch}`,
    `backlog: ${c.backlog.join(', ')} queued, drain first ${c.backlogDrain}; scale-out: ${c.scale.join(', ')} processes`,
  ].join('\n');
}

async function main(): Promise<void> {
  const started = new Date();
  const machine = {
    date: started.toISOString(),
    commit: sh('git rev-parse --short HEAD'),
    dirty: sh('git status --porcelain -- lib | wc -l') !== '0',
    node: process.version,
    cpus: `${cpus().length} × ${cpus()[0]?.model ?? '?'}`,
    memGiB: `${(totalmem() / 2 ** 30).toFixed(1)} total, ${(freemem() / 2 ** 30).toFixed(1)} free`,
    loadavg: loadavg()
      .map((l) => l.toFixed(2))
      .join(' '),
    mysql: sh(`mysql -h127.0.0.1 -uroot -N -e 'SELECT VERSION()'`),
  };
  log(
    `nestjs-durable-workflow bench, ${machine.date}, commit ${machine.commit}${machine.dirty ? ' (lib/ has uncommitted changes)' : ''}`,
  );
  log(
    `node ${machine.node}, ${machine.cpus}, memory ${machine.memGiB} GiB, load ${machine.loadavg}, MySQL ${machine.mysql}`,
  );
  log(describeSettings(cfg));
  log(`sections: ${[...only].join(', ')}${profile.size ? `; profiling: ${[...profile].join(', ')}` : ''}\n`);

  const chain: ChainResult[] = [];
  const submit: SubmitResult[] = [];
  const backlog: BacklogResult[] = [];
  const scale: ScaleResult[] = [];

  const chainSystems = CHAIN_SYSTEMS.filter((s) => only.has(s));
  if (chainSystems.length) log('1–2. Step chains');
  for (const system of chainSystems) {
    const label =
      { floor8: 'mysql floor ×8', floor: 'mysql floor', 'ours-notrace': 'ours (trace: false)' }[system as string] ??
      system;
    const tries: ChainResult[] = [];
    for (let i = 0; i < repeat; i++) {
      tries.push(
        ...((await runChild(
          { kind: 'chain', system, cfg },
          label,
          system,
          system.startsWith('ours'),
        )) as ChainResult[]),
      );
    }
    if (tries.length === 0) continue;
    // With BENCH_REPEAT > 1 the table shows the median try by steps/s, and the spread.
    const sorted = [...tries].sort((a, b) => a.stepsPerSec - b.stepsPerSec);
    const median = sorted[Math.floor((sorted.length - 1) / 2)];
    if (tries.length > 1) {
      median.notes.unshift(
        `median of ${tries.length} tries: ${sorted.map((t) => fmt(t.stepsPerSec)).join(', ')} steps/s`,
      );
    }
    chain.push(median);
  }
  if (only.has('submit')) {
    log('3. Submission');
    submit.push(...((await runChild({ kind: 'submit', cfg }, 'submit', 'submit', true)) as SubmitResult[]));
  }
  if (only.has('backlog')) {
    log('4. Backlog');
    for (const size of cfg.backlog) {
      const t = wallNow();
      const label = `backlog ${fmt(size)}`;
      const [fill] = (await runChild(
        { kind: 'backlog-fill', size, cfg },
        `${label} fill`,
        'backlog-fill',
        true,
      )) as BacklogFill[];
      if (!fill) continue;
      backlog.push(
        ...((await runChild({ kind: 'backlog', size, fill, cfg }, label, 'backlog', true)) as BacklogResult[]),
      );
      log(`  ${label}: section took ${((wallNow() - t) / 1000).toFixed(0)} s`);
    }
  }
  if (only.has('scale')) {
    log('5. Scale-out');
    for (const k of cfg.scale) {
      const r = await runScale(k);
      if (r) scale.push(r);
    }
  }

  const out: string[] = [];
  out.push(`# Bench run ${machine.date}`);
  out.push('');
  out.push(`- commit ${machine.commit}${machine.dirty ? ' (lib/ had uncommitted changes)' : ''}, node ${machine.node}`);
  out.push(
    `- ${machine.cpus}; memory ${machine.memGiB} GiB; load average at start ${machine.loadavg}; MySQL ${machine.mysql}`,
  );
  for (const l of describeSettings(cfg).split('\n')) out.push(`- ${l}`);
  out.push(
    `- load average at end ${loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')}`,
  );
  if (chain.length) {
    out.push('', '## Step chains', '', chainTable(chain));
    const notes = chain.filter((r) => r.notes.length).map((r) => `- ${r.system}: ${r.notes.join('; ')}`);
    if (notes.length) out.push('', ...notes);
  }
  if (submit.length) out.push('', '## Submission (worker: false)', '', submitTable(submit));
  if (backlog.length) {
    out.push(
      '',
      '## Backlog (single-step runs queued in bulk, then a worker drains the first ones)',
      '',
      backlogTable(backlog),
    );
    out.push('', ...backlog.map((r) => `- ${fmt(r.backlog)}: ${r.notes.join('; ')}`));
  }
  if (scale.length) {
    out.push(
      '',
      `## Scale-out (${cfg.runs} × ${cfg.steps} chain, N worker processes, one database)`,
      '',
      scaleTable(scale),
    );
    const notes = scale.filter((r) => r.notes.length).map((r) => `- ${r.processes}: ${r.notes.join('; ')}`);
    if (notes.length) out.push('', ...notes);
  }
  if (failures.length) {
    out.push('', '## Failed or skipped', '', ...failures.map((f) => `- ${f.label}: ${f.error}`));
  }
  const report = out.join('\n');
  log(`\n${report}\n`);

  mkdirSync(resultsDir, { recursive: true });
  const stamp = machine.date.replace(/[:.]/g, '-');
  writeFileSync(join(resultsDir, `${stamp}.md`), `${report}\n`);
  writeFileSync(
    join(resultsDir, `${stamp}.json`),
    JSON.stringify({ machine, cfg, chain, submit, backlog, scale, failures }, null, 2),
  );
  log(`written: .tmp/bench/results/${stamp}.{md,json}`);

  // The backlog section can leave a million rows behind: tidy up unless asked not to.
  if (!process.env.BENCH_KEEP) await dropWorkflowTables(cfg.mysqlUrl, 'bench_').catch(() => undefined);

  for (const p of profiles) {
    if (existsSync(p.file)) log(`\n${p.label}: ${formatProfile(p.file, 25)}`);
    else
      log(
        `\n${p.label}: no profile written (${p.file}); files: ${existsSync(profileDir) ? readdirSync(profileDir).join(', ') : 'none'}`,
      );
  }
  process.exitCode = failures.some((f) => f.ours) ? 1 : 0;
}

void main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
