/**
 * `npm run bench:signal`: the signal round trip, from `signal()` returning to the
 * waiting run's next step starting, in the process whose worker runs it (woken at once)
 * and from a `worker: false` process (the worker notices within a poll). One run at a
 * time, so each figure is one signal's latency, not a queue's.
 *   BENCH_SIGNALS (default 200), BENCH_POLL_MS (default 50), WORKFLOW_DB_URL / BENCH_MYSQL_URL.
 */
import 'reflect-metadata';
import { Injectable, Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { type Step, StepOutcome, StepRunner, WorkflowModule, WorkflowService } from 'nestjs-durable-workflow';
import { loadConfig, Samples, wallNow } from './common.js';
import { dropWorkflowTables } from './db.js';

const PREFIX = 'bench_sig_';
const cfg = loadConfig();
const n = Number(process.env.BENCH_SIGNALS ?? 200);
const started = new Map<string, (at: number) => void>();
const parked = new Map<string, () => void>();

@Injectable()
@StepRunner('approve')
class ApproveRunner {
  runStep(step: Step) {
    if (step.stepNumber === 0) {
      setImmediate(() => parked.get(step.runId)?.());
      return StepOutcome.waitForSignal('go', null);
    }
    started.get(step.runId)?.(wallNow());
    return StepOutcome.succeed(null);
  }
}

async function app(worker: boolean) {
  @Module({
    imports: [
      WorkflowModule.forRoot({
        connection: { url: cfg.mysqlUrl },
        tablePrefix: PREFIX,
        worker: worker ? { pollIntervalMs: cfg.pollIntervalMs } : false,
        workflows: ['approve'],
      }),
    ],
    providers: worker ? [ApproveRunner] : [],
  })
  class SignalBenchModule {}
  return NestFactory.createApplicationContext(SignalBenchModule, { logger: ['error', 'warn'] });
}

async function roundTrips(
  label: string,
  submitter: WorkflowService,
  signaller: WorkflowService,
): Promise<{ trip: Samples; call: Samples }> {
  const samples = new Samples(n);
  const calls = new Samples(n);
  for (let i = 0; i < n; i++) {
    // The id is known before submit: the worker may run step 0 before submit() returns here.
    const runId = `${label}-${i}`;
    const isParked = new Promise<void>((r) => parked.set(runId, r));
    await submitter.submit('approve', { runId, input: null });
    await isParked;
    // The wait commits with the settlement that follows the step: until then a signal goes to the mailbox.
    for (let s = await submitter.status(runId); s?.state !== 'waiting'; s = await submitter.status(runId)) {
      await new Promise((r) => setTimeout(r, 1));
    }
    const ran = new Promise<number>((r) => started.set(runId, r));
    const t0 = wallNow();
    await signaller.signal(runId, 'go');
    calls.add(wallNow() - t0);
    samples.add((await ran) - t0);
    parked.delete(runId);
    started.delete(runId);
  }
  return { trip: samples, call: calls };
}

await dropWorkflowTables(cfg.mysqlUrl, PREFIX);
const worker = await app(true);
const web = await app(false);
const local = worker.get(WorkflowService);
const remote = web.get(WorkflowService);
const same = await roundTrips('same', local, local);
const other = await roundTrips('other', local, remote);
await web.close();
await worker.close();
await dropWorkflowTables(cfg.mysqlUrl, PREFIX);
const row = (label: string, r: { trip: Samples; call: Samples }) => {
  const s = r.trip.summary();
  return `| ${label} | ${n} | ${s.p50.toFixed(2)} | ${s.p99.toFixed(2)} | ${s.max.toFixed(2)} | ${r.call.summary().p50.toFixed(2)} |`;
};
process.stdout.write(
  [
    `signal round trip (signal() to the next step's start), pollIntervalMs ${cfg.pollIntervalMs}, one run at a time`,
    '| signalled from | signals | p50 ms | p99 ms | max ms | signal() p50 ms |',
    '|---|---:|---:|---:|---:|---:|',
    row('the worker’s own process', same),
    row('another process (worker: false)', other),
    '',
  ].join('\n'),
);
