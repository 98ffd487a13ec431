/**
 * `npm run bench:children`: spawn and join. A parent's step spawns N single-step children
 * (default 100) and its next step joins them; timed from the parent's submit to its
 * outcome, one parent at a time, in one worker process.
 *   BENCH_CHILDREN (100), BENCH_PARENTS (10), BENCH_CONCURRENCY (16), BENCH_POLL_MS (50).
 */
import 'reflect-metadata';
import { Injectable, Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { type Step, StepOutcome, StepRunner, WorkflowModule, WorkflowService } from 'nestjs-durable-workflow';
import { loadConfig, Samples, wallNow } from './common.js';
import { dropWorkflowTables } from './db.js';

const PREFIX = 'bench_kids_';
const cfg = loadConfig();
const children = Number(process.env.BENCH_CHILDREN ?? 100);
const parents = Number(process.env.BENCH_PARENTS ?? 10);

@Injectable()
@StepRunner('fan-out')
class FanOut {
  runStep(step: Step<{ n: number }>) {
    if (step.stepNumber === 0) {
      const specs = Array.from({ length: step.payload.n }, (_, i) => ({ workflow: 'leaf', input: { i } }));
      return StepOutcome.spawn(specs, null);
    }
    return StepOutcome.succeed(step.children!.length);
  }
}

@Injectable()
@StepRunner('leaf')
class Leaf {
  runStep(step: Step<{ i: number }>) {
    return StepOutcome.succeed(step.payload.i);
  }
}

@Module({
  imports: [
    WorkflowModule.forRoot({
      connection: { url: cfg.mysqlUrl },
      tablePrefix: PREFIX,
      worker: { concurrency: cfg.concurrency, pollIntervalMs: cfg.pollIntervalMs },
    }),
  ],
  providers: [FanOut, Leaf],
})
class ChildrenBenchModule {}

await dropWorkflowTables(cfg.mysqlUrl, PREFIX);
const app = await NestFactory.createApplicationContext(ChildrenBenchModule, { logger: ['error', 'warn'] });
const service = app.get(WorkflowService);
const samples = new Samples(parents);
for (let i = 0; i < parents; i++) {
  const t0 = wallNow();
  const { runId } = await service.submit('fan-out', { input: { n: children } });
  const outcome = await service.waitForOutcome(runId, { timeoutMs: 120_000 });
  if (outcome.result !== children) throw new Error(`parent ${runId} joined ${String(outcome.result)} children`);
  samples.add(wallNow() - t0);
}
await app.close();
await dropWorkflowTables(cfg.mysqlUrl, PREFIX);
const s = samples.summary();
process.stdout.write(
  `spawn + join of ${children} single-step children, ${parents} parents one at a time, concurrency ${cfg.concurrency}, pollIntervalMs ${cfg.pollIntervalMs}\n` +
    `| children | parents | p50 ms | p99 ms | max ms | children/s at p50 |\n|---:|---:|---:|---:|---:|---:|\n` +
    `| ${children} | ${parents} | ${s.p50.toFixed(1)} | ${s.p99.toFixed(1)} | ${s.max.toFixed(1)} | ${Math.round(children / (s.p50 / 1000))} |\n`,
);
