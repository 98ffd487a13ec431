/**
 * BullMQ on Redis, as its users run a chain: one job per step; the processor adds the
 * next step's job before it returns, so the step completes after its successor exists.
 * Worker concurrency 16, removeOnComplete so Redis does not grow.
 */
import { Queue, Worker } from 'bullmq';
import {
  type BenchConfig,
  type ChainPayload,
  type ChainResult,
  ChainTracker,
  chainResult,
  send,
  cpuWindow,
  prefillNote,
  startProfiler,
  wallNow,
  withTimeout,
} from '../common.js';

interface StepData {
  step: number;
  payload: ChainPayload;
}

export async function bullmqChain(cfg: BenchConfig): Promise<ChainResult> {
  const url = new URL(cfg.redisUrl);
  const connection = {
    host: url.hostname,
    port: Number(url.port || 6379),
    db: url.pathname.length > 1 ? Number(url.pathname.slice(1)) : 0,
    maxRetriesPerRequest: null,
  };
  const prefix = 'bench';
  const name = 'chain';
  const jobOpts = { removeOnComplete: true, removeOnFail: 1000 };
  const settings = `Worker concurrency ${cfg.concurrency}, addBulk ×${cfg.submitBatch}, removeOnComplete, Redis ${url.host}`;
  await send({ type: 'settings', settings });

  const tracker = new ChainTracker(cfg.runs, cfg.steps, cfg.payloadBytes);
  const queue = new Queue<StepData>(name, { connection, prefix });
  await queue.waitUntilReady();
  await queue.obliterate({ force: true });

  const fill = async () => {
    for (let i = 0; i < cfg.runs; i += cfg.submitBatch) {
      const n = Math.min(cfg.submitBatch, cfg.runs - i);
      await queue.addBulk(
        Array.from({ length: n }, () => ({ name: 'step', data: { step: 0, payload: tracker.input() }, opts: jobOpts })),
      );
    }
  };
  // BENCH_PREFILL=1: everything queued before the worker exists; timed from the first step.
  let filled = '';
  if (cfg.prefill) {
    const t = wallNow();
    await fill();
    filled = prefillNote(cfg.runs, wallNow() - t);
  }
  // With a prefill the worker drains from the moment it exists: its CPU window opens first.
  const early = cfg.prefill ? cpuWindow() : undefined;
  const worker = new Worker<StepData>(
    name,
    async (job) => {
      const { step, payload } = job.data;
      tracker.started(step, payload);
      if (tracker.isLast(step)) {
        tracker.finished();
        return;
      }
      await queue.add('step', { step: step + 1, payload: tracker.next() }, jobOpts);
    },
    { connection, prefix, concurrency: cfg.concurrency },
  );
  worker.on('error', (err) => console.error('bullmq worker error:', err.message));
  await worker.waitUntilReady();

  const stopProfiler = await startProfiler(cfg.profileFile);
  const t0 = wallNow();
  const cpu = early ?? cpuWindow();
  if (!cfg.prefill) await fill();
  const submitMs = wallNow() - t0;
  await withTimeout(tracker.done, cfg.timeoutS * 1000, `${cfg.runs} BullMQ chains (${tracker.completed} done)`);
  const elapsedMs = tracker.lastAt - (cfg.prefill ? tracker.firstStepAt : t0);
  const cpuShare = cpu();
  await stopProfiler();
  await worker.close();
  const counts = await queue.getJobCounts('wait', 'active', 'delayed', 'failed');
  await queue.obliterate({ force: true }).catch(() => undefined);
  await queue.close();

  const notes = [cfg.prefill ? filled : `submit took ${submitMs.toFixed(0)} ms of it`];
  const left = Object.values(counts).reduce((a, b) => a + b, 0);
  notes.push(left === 0 ? 'verified: queue empty' : `VERIFY: jobs left ${JSON.stringify(counts)}`);
  return chainResult({
    system: 'bullmq',
    settings,
    runs: cfg.runs,
    steps: cfg.steps,
    elapsedMs,
    tracker,
    cpu: cpuShare,
    notes,
  });
}
