/**
 * Which steps of the chaos runs spawn children, and what each child does: one pure
 * function of the run's index and the options, shared by the worker fixture (which
 * spawns) and the harness (which checks), so neither has to tell the other.
 *
 * A spawning run `run-<i>` (i % spawnRunEvery === 0) spawns at every step n with
 * n % spawnEvery === spawnEvery - 1 that is not its last and does not wait for a signal.
 * Each spawn starts `children` runs of `crashy-child`, each of `childSteps` steps; the
 * first child of every spawn spawns `grandchildren` of its own at its step 1 (when it has
 * at least 3 steps), which do not spawn and wait `grandchildDelayMs` (continueAfter) after
 * their step 0, so they are still to come when a failFast group cancels their parent. The first spawn of every `failFastEvery`-th
 * spawning run is a failFast group whose second child fails at its step 1 on purpose:
 * with `StepError.permanent` (a dead letter) in one group of two, with `StepOutcome.fail`
 * in the other. Its siblings are then cancelled, and a cancelled sibling's own children
 * with it.
 */
export interface SpawnOptions {
  steps: number;
  signalEvery: number;
  spawnEvery: number;
  spawnRunEvery: number;
  children: number;
  childSteps: number;
  grandchildren: number;
  /** Grandchildren continue after this long at their step 0. */
  grandchildDelayMs: number;
  failFastEvery: number;
}

/** A child's input, which carries its own plan. */
export interface ChildInput {
  n: number;
  steps: number;
  depth: number;
  /** Fail at this step, on purpose. */
  fail?: { at: number; how: 'permanent' | 'fail' };
  /** Spawn `spawn.count` children (depth + 1, no spawn, each first waiting `spawn.delayMs`) at step `spawn.at`. */
  spawn?: { at: number; count: number; delayMs: number };
  /** Step 0 continues after this long (continueAfter): a child that is still to come when its parent is cancelled. */
  delayMs?: number;
}

export interface PlannedSpawn {
  failFast: boolean;
  children: ChildInput[];
}

/** The message of a deliberate failure, in the run's error and the dead letter. */
export const DELIBERATE_FAILURE = 'deliberate failure (chaos failFast group)';

export function isSignalStep(o: Pick<SpawnOptions, 'steps' | 'signalEvery'>, step: number): boolean {
  return o.signalEvery > 0 && step % o.signalEvery === o.signalEvery - 1 && step + 1 < o.steps;
}

export function runIndexOf(runId: string): number {
  return Number(/^run-(\d+)$/.exec(runId)?.[1] ?? -1);
}

/** The spawn of step `step` of run `run-<runIndex>` (a top-level run), if it spawns. */
export function spawnAt(o: SpawnOptions, runIndex: number, step: number): PlannedSpawn | undefined {
  if (o.spawnEvery <= 0 || runIndex < 0 || runIndex % Math.max(1, o.spawnRunEvery) !== 0) return undefined;
  if (step % o.spawnEvery !== o.spawnEvery - 1 || step + 1 >= o.steps || isSignalStep(o, step)) return undefined;
  const q = runIndex / Math.max(1, o.spawnRunEvery);
  const firstSpawn = step === firstSpawnStep(o);
  const failFast = firstSpawn && o.failFastEvery > 0 && q % o.failFastEvery === 0 && o.children >= 2;
  const children: ChildInput[] = [];
  for (let i = 0; i < o.children; i++) {
    const child: ChildInput = { n: 0, steps: o.childSteps, depth: 1 };
    if (i === 0 && o.grandchildren > 0 && o.childSteps >= 3)
      child.spawn = { at: 1, count: o.grandchildren, delayMs: o.grandchildDelayMs };
    if (failFast && i === 1)
      child.fail = { at: Math.min(1, o.childSteps - 1), how: (q / o.failFastEvery) % 2 === 0 ? 'permanent' : 'fail' };
    children.push(child);
  }
  return { failFast, children };
}

function firstSpawnStep(o: SpawnOptions): number {
  for (let s = o.spawnEvery - 1; s + 1 < o.steps; s += o.spawnEvery) if (!isSignalStep(o, s)) return s;
  return -1;
}

/** The children a child spawns (grandchildren of the run), for its step `spawn.at`. */
export function grandchildInputs(parent: ChildInput): ChildInput[] {
  const s = parent.spawn;
  if (!s) return [];
  return Array.from({ length: s.count }, () => ({
    n: 0,
    steps: parent.steps,
    depth: parent.depth + 1,
    ...(s.delayMs > 0 ? { delayMs: s.delayMs } : {}),
  }));
}

/** A child's run id as the module derives it (spawns here give none): `<parent>-<step>-<index>`. */
export function childId(parentRunId: string, step: number, index: number): string {
  return `${parentRunId}-${step}-${index}`;
}

export function spawnOptionsFromEnv(env: NodeJS.ProcessEnv): SpawnOptions {
  const num = (name: string, fallback: number) => Number(env[name] ?? fallback);
  return {
    steps: num('STEPS', 3),
    signalEvery: num('SIGNAL_EVERY', 0),
    spawnEvery: num('SPAWN_EVERY', 0),
    spawnRunEvery: num('SPAWN_RUN_EVERY', 1),
    children: num('SPAWN_CHILDREN', 3),
    childSteps: num('CHILD_STEPS', 3),
    grandchildren: num('GRANDCHILDREN', 2),
    grandchildDelayMs: num('GRANDCHILD_DELAY_MS', 1000),
    failFastEvery: num('FAIL_FAST_EVERY', 0),
  };
}

export function spawnOptionsToEnv(o: SpawnOptions): Record<string, string> {
  return {
    SPAWN_EVERY: String(o.spawnEvery),
    SPAWN_RUN_EVERY: String(o.spawnRunEvery),
    SPAWN_CHILDREN: String(o.children),
    CHILD_STEPS: String(o.childSteps),
    GRANDCHILDREN: String(o.grandchildren),
    GRANDCHILD_DELAY_MS: String(o.grandchildDelayMs),
    FAIL_FAST_EVERY: String(o.failFastEvery),
  };
}
