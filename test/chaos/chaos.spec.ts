import { uniquePrefix } from '../utils/db.js';
import { runChaos } from './chaos-harness.js';

/** CI-sized chaos: 300 runs × 5 steps, 3 worker processes, one SIGKILLed every 2 s. `npm run chaos` for soaks. */
describe('chaos: SIGKILL a random worker every 2 s', () => {
  it('loses no run, runs every step, duplicates only around kills, leaves nothing claimed', async () => {
    const report = await runChaos({
      prefix: uniquePrefix('chaos'),
      runs: 300,
      steps: 5,
      workers: 3,
      killEveryMs: 2_000,
      leaseMs: 1_500,
      stepDelayMs: 150,
      concurrency: 4,
      timeoutMs: 120_000,
    });
     
    console.log(`chaos: ${JSON.stringify(report)}`);
    expect(report.kills).toBeGreaterThanOrEqual(2);
    expect(report.runsLost).toBe(0);
    expect(report.succeeded).toBe(300);
    expect(report.notSucceeded).toEqual([]);
    expect(report.missingSteps).toBe(0);
    expect(report.duplicatesWithoutKill).toBe(0);
    expect(report.runsWithoutTerminalDelivery).toBe(0);
    expect(report.leftoverJobs).toBe(0);
    expect(report.deadLetters).toBe(0);
  }, 240_000);
});
