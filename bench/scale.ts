/** Builds the scale-out row from the workers' final reports; imported by main.ts, so it stays free of Nest. */
import { type BenchConfig, type ChildMessage, type ScaleResult, summarize } from './common.js';

/** Assembles the scale-out row from the workers' final reports (called in main.ts). */
export function scaleResult(
  cfg: BenchConfig,
  processes: number,
  settings: string,
  t0: number,
  finals: Array<Extract<ChildMessage, { type: 'final' }>>,
  notes: string[],
): ScaleResult {
  const lastAt = Math.max(...finals.map((f) => f.lastAt));
  const elapsedMs = lastAt - t0;
  const completed = finals.reduce((a, f) => a + f.completed, 0);
  const executed = finals.reduce((a, f) => a + f.executed, 0);
  const retries = finals.every((f) => f.conflictRetries !== null)
    ? finals.reduce((a, f) => a + (f.conflictRetries ?? 0), 0)
    : null;
  const server = finals.find((f) => f.server)?.server ?? null;
  const all = finals.flatMap((f) => f.samples);
  if (completed !== cfg.runs) notes.push(`completed ${completed} of ${cfg.runs}`);
  if (executed !== cfg.runs * cfg.steps) notes.push(`executed ${executed} steps (expected ${cfg.runs * cfg.steps})`);
  return {
    section: 'scale',
    system: 'ours',
    settings,
    processes,
    runs: cfg.runs,
    steps: cfg.steps,
    elapsedMs,
    stepsPerSec: (cfg.runs * cfg.steps) / (elapsedMs / 1000),
    runsPerSec: cfg.runs / (elapsedMs / 1000),
    latency: summarize(all),
    conflictRetries: retries,
    perProcessSteps: finals.map((f) => f.executed),
    serverDeadlocks: server ? server.deadlocks : null,
    serverRowLockWaits: server ? server.rowLockWaits : null,
    peakRssMb: finals.map((f) => f.peakRssMb),
    notes,
  };
}
