/**
 * `npm run bench:targets`: the performance targets of 0.2 (the issue "Faster with
 * everything on"), each measured side by side with what it is compared to, in turns,
 * BENCH_TARGET_REPEAT (3) times, and the medians of the ratios set against the targets.
 * Every measurement is a fresh process of main.js or flow.js with the settings the
 * target names, so a figure here is the figure those commands print.
 *
 * BENCH_TARGETS picks targets (default all but `waiting`, which fills 1.1 million rows):
 * chain, keyed, tracing, single, drain, scale, waiting. The report also goes to
 * .tmp/bench/results/targets-<time>.md.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BacklogResult, ChainResult, ScaleResult } from './common.js';
import { envInt, envList, fmt } from './common.js';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
const resultsDir = join(root, '.tmp', 'bench', 'results');
const repeat = Math.max(1, envInt('BENCH_TARGET_REPEAT', 3));
const ALL = ['chain', 'keyed', 'tracing', 'single', 'drain', 'scale', 'waiting'];
const picked = new Set(envList('BENCH_TARGETS', ALL.filter((t) => t !== 'waiting').join(',')));
const unknown = [...picked].filter((t) => !ALL.includes(t));
if (unknown.length) {
  console.error(`BENCH_TARGETS: unknown ${unknown.join(', ')}; known: ${ALL.join(', ')}`);
  process.exit(2);
}

function log(line: string): void {
  process.stdout.write(`${line}\n`);
}

/** Runs one bench script in a child process with `env` added; resolves to its stdout. */
function run(script: string, env: Record<string, string>, nodeArgs: string[] = []): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...nodeArgs, join(here, script)], {
      cwd: root,
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', reject);
    child.on('exit', (code) =>
      code === 0 ? resolve(out) : reject(new Error(`${script} ${JSON.stringify(env)} exited with ${code}`)),
    );
  });
}

interface MainJson {
  chain: ChainResult[];
  backlog: BacklogResult[];
  scale: ScaleResult[];
}

/** main.js with these settings; its results file, which it names on its last lines. */
async function main(env: Record<string, string>): Promise<MainJson> {
  const out = await run('main.js', env);
  const written = /written: (\S+)\.\{md,json\}/.exec(out);
  if (!written) throw new Error(`main.js ${JSON.stringify(env)} wrote no results`);
  return JSON.parse(readFileSync(join(root, `${written[1]}.json`), 'utf8')) as MainJson;
}

/** flow.js's chain section, plain and keyed, once each; `sdk` with an OpenTelemetry SDK registered. */
async function flow(sdk: boolean): Promise<{ plain: number; keyed: number }> {
  const file = join(resultsDir, `flow-${process.pid}.json`);
  mkdirSync(resultsDir, { recursive: true });
  await run(
    'flow.js',
    { BENCH_FLOW_ONLY: 'chain', BENCH_REPEAT: '1', BENCH_RUNS: '3000', BENCH_FLOW_JSON: file },
    sdk ? ['--import', join(here, 'otel-sdk.js')] : [],
  );
  const r = JSON.parse(readFileSync(file, 'utf8')) as { plain: number[]; keyed: number[] };
  rmSync(file);
  return { plain: r.plain[0], keyed: r.keyed[0] };
}

const system = (rows: ChainResult[], name: string): ChainResult => {
  const r = rows.find((c) => c.system === name);
  if (!r) throw new Error(`no ${name} row in the chain section`);
  return r;
};

interface Row {
  target: string;
  goal: string;
  /** One reading per turn, as printed. */
  readings: string[];
  /** Median of the turns' values, and whether it meets the goal. */
  value: number;
  met: boolean;
  unit: string;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const rows: Row[] = [];

function row(
  target: string,
  goal: string,
  unit: string,
  values: number[],
  readings: string[],
  meets: (v: number) => boolean,
) {
  const value = median(values);
  rows.push({ target, goal, readings, value, met: meets(value), unit });
}

const chainEnv = { BENCH_ONLY: 'ours,bullmq', BENCH_RUNS: '5000', BENCH_STEPS: '10' };

async function measure(): Promise<void> {
  if (picked.has('chain')) {
    const ratio: number[] = [];
    const p50: number[] = [];
    const p99: number[] = [];
    const rss: number[] = [];
    const readings: string[] = [];
    for (let i = 0; i < repeat; i++) {
      const { chain } = await main(chainEnv);
      const [ours, bull] = [system(chain, 'ours'), system(chain, 'bullmq')];
      ratio.push(ours.stepsPerSec / bull.stepsPerSec);
      p50.push(ours.latency.p50);
      p99.push(ours.latency.p99);
      rss.push(ours.peakRssMb);
      readings.push(`${fmt(ours.stepsPerSec)} / ${fmt(bull.stepsPerSec)}`);
    }
    row('chain 5,000 × 10 ÷ BullMQ', '≥ 1.5×', '×', ratio, readings, (v) => v >= 1.5);
    for (const [target, goal, unit, values, digits, max] of [
      ['chain p50 step to step', '≤ 2 ms', 'ms', p50, 2, 2],
      ['chain p99 step to step', '≤ 10 ms', 'ms', p99, 1, 10],
      ['chain peak RSS', '≤ 250 MB', 'MB', rss, 0, 250],
    ] as const)
      row(
        target,
        goal,
        unit,
        [...values],
        values.map((v) => fmt(v, digits)),
        (v) => v <= max,
      );
  }
  if (picked.has('keyed') || picked.has('tracing')) {
    const keyed: number[] = [];
    const traced: number[] = [];
    const keyedReadings: string[] = [];
    const tracedReadings: string[] = [];
    for (let i = 0; i < repeat; i++) {
      const plain = await flow(false);
      keyed.push(plain.keyed / plain.plain);
      keyedReadings.push(`${fmt(plain.keyed)} / ${fmt(plain.plain)}`);
      if (!picked.has('tracing')) continue;
      const sdk = await flow(true);
      traced.push(sdk.plain / plain.plain);
      tracedReadings.push(`${fmt(sdk.plain)} / ${fmt(plain.plain)}`);
    }
    if (picked.has('keyed'))
      row('chain, 100 keys, keyConcurrency 2 ÷ unkeyed', '≥ 0.7×', '×', keyed, keyedReadings, (v) => v >= 0.7);
    if (picked.has('tracing'))
      row('chain with an OpenTelemetry SDK ÷ without', '≥ 0.85×', '×', traced, tracedReadings, (v) => v >= 0.85);
  }
  for (const [name, label, env] of [
    ['single', 'single-step 20,000 × 1, submitted while draining, ÷ BullMQ', { BENCH_RUNS: '20000' }],
    ['drain', 'single-step 100,000 × 1 queued, then drained, ÷ BullMQ', { BENCH_RUNS: '100000', BENCH_PREFILL: '1' }],
  ] as const) {
    if (!picked.has(name)) continue;
    const ratio: number[] = [];
    const readings: string[] = [];
    for (let i = 0; i < repeat; i++) {
      const { chain } = await main({ ...chainEnv, BENCH_STEPS: '1', ...env });
      const [ours, bull] = [system(chain, 'ours'), system(chain, 'bullmq')];
      ratio.push(ours.runsPerSec / bull.runsPerSec);
      readings.push(`${fmt(ours.runsPerSec)} / ${fmt(bull.runsPerSec)}`);
    }
    row(label, '≥ 1.5×', '×', ratio, readings, (v) => v >= 1.5);
  }
  if (picked.has('scale')) {
    const by = new Map<number, { ratio: number[]; readings: string[] }>([
      [2, { ratio: [], readings: [] }],
      [4, { ratio: [], readings: [] }],
    ]);
    const deadlocks: number[] = [];
    // A deadlock the runtime did not retry fails its step or its process: every run completing is the check.
    let completed = true;
    for (let i = 0; i < repeat; i++) {
      const { scale } = await main({ BENCH_ONLY: 'scale', BENCH_RUNS: '5000', BENCH_SCALE: '1,2,4' });
      const one = scale.find((s) => s.processes === 1)!;
      for (const [k, acc] of by) {
        const r = scale.find((s) => s.processes === k)!;
        acc.ratio.push(r.stepsPerSec / one.stepsPerSec);
        acc.readings.push(`${fmt(r.stepsPerSec)} / ${fmt(one.stepsPerSec)}`);
      }
      deadlocks.push(scale.reduce((n, s) => n + (s.serverDeadlocks ?? 0), 0));
      completed &&= scale.length === 3 && scale.every((s) => !s.notes.some((n) => /^(completed|executed) /.test(n)));
    }
    for (const [k, acc] of by) row(`${k} worker processes ÷ 1`, '≥ 1×', '×', acc.ratio, acc.readings, (v) => v >= 1);
    row(
      'deadlocks in the scale-out runs (server count), every run completed',
      '0 unhandled',
      '',
      deadlocks,
      deadlocks.map((n) => `${n}, ${completed ? 'all completed' : 'NOT all completed'}`),
      () => completed,
    );
  }
  if (picked.has('waiting')) {
    const ratio: number[] = [];
    const readings: string[] = [];
    const backlog = { BENCH_ONLY: 'backlog', BENCH_BACKLOG: '2000', BENCH_BACKLOG_DRAIN: '2000' };
    for (let i = 0; i < repeat; i++) {
      const empty = (await main(backlog)).backlog[0];
      const beside = (
        await main({
          ...backlog,
          BENCH_BACKLOG_WAITING: '100000',
          BENCH_BACKLOG_DELAYED: '1000000',
          BENCH_BACKLOG_SCHEDULES: '10000',
        })
      ).backlog[0];
      ratio.push(beside.claimMs.p50 / empty.claimMs.p50);
      readings.push(`${beside.claimMs.p50.toFixed(2)} / ${empty.claimMs.p50.toFixed(2)} ms`);
    }
    row(
      'claim p50 beside 1,100,000 waiting and delayed steps and 10,000 schedules ÷ empty',
      '≤ 1.5×',
      '×',
      ratio,
      readings,
      (v) => v <= 1.5,
    );
  }
}

const started = new Date();
await measure();
const fmtValue = (r: Row) =>
  r.unit === '×' ? `${r.value.toFixed(2)}×` : `${fmt(r.value, r.unit === 'ms' ? 2 : 0)} ${r.unit}`;
const report = [
  `# Targets, ${started.toISOString()}, ${repeat} turn(s) each`,
  '',
  '| target | goal | each turn | median | met? |',
  '|---|---|---|---:|---|',
  ...rows.map(
    (r) => `| ${r.target} | ${r.goal} | ${r.readings.join('; ')} | ${fmtValue(r)} | ${r.met ? 'yes' : 'no'} |`,
  ),
  '',
  '(chain and single-step readings: ours / BullMQ; keyed and tracing: the variant / the plain chain;',
  'scale-out: k processes / 1; claim: beside what waits / empty.)',
].join('\n');
log(`\n${report}`);
mkdirSync(resultsDir, { recursive: true });
const file = join(resultsDir, `targets-${started.toISOString().replace(/[:.]/g, '-')}.md`);
writeFileSync(file, `${report}\n`);
log(`written: ${file.slice(root.length + 1)}`);
