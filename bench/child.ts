/**
 * One measurement in a fresh process (so peak RSS is this system's alone). Started by
 * main.ts with the task as JSON in argv[2]; reports over the IPC channel. Each system
 * is imported lazily so no other system's code is loaded into this process.
 */
import 'reflect-metadata';
import { type AnyResult, type BacklogFill, type BenchConfig, send } from './common.js';

export type Task =
  | { kind: 'chain'; system: ChainSystem; cfg: BenchConfig }
  | { kind: 'submit'; cfg: BenchConfig }
  | { kind: 'backlog-fill'; size: number; cfg: BenchConfig }
  | { kind: 'backlog'; size: number; fill: BacklogFill; cfg: BenchConfig }
  | { kind: 'scale-worker'; index: number; processes: number; cfg: BenchConfig };

export type ChainSystem = 'ours' | 'ours-notrace' | 'bullmq' | 'graphile' | 'pgboss' | 'floor' | 'floor8';

async function runTask(task: Task): Promise<AnyResult[]> {
  switch (task.kind) {
    case 'chain':
      switch (task.system) {
        case 'ours':
          return [await (await import('./ours.js')).oursChain(task.cfg)];
        case 'ours-notrace':
          return [await (await import('./ours.js')).oursChain(task.cfg, 'notrace')];
        case 'bullmq':
          return [await (await import('./peers/bullmq.js')).bullmqChain(task.cfg)];
        case 'graphile':
          return [await (await import('./peers/graphile.js')).graphileChain(task.cfg)];
        case 'pgboss':
          return [await (await import('./peers/pgboss.js')).pgbossChain(task.cfg)];
        case 'floor':
          return [await (await import('./peers/mysql-floor.js')).floorChain(task.cfg, 1)];
        case 'floor8':
          return [await (await import('./peers/mysql-floor.js')).floorChain(task.cfg, 8)];
      }
      throw new Error(`unknown system ${String((task as { system: string }).system)}`);
    case 'submit':
      return (await import('./ours.js')).oursSubmit(task.cfg);
    case 'backlog-fill':
      return [await (await import('./ours.js')).oursBacklogFill(task.cfg, task.size)];
    case 'backlog':
      return [await (await import('./ours.js')).oursBacklog(task.cfg, task.size, task.fill)];
    case 'scale-worker':
      await (await import('./ours.js')).oursScaleWorker(task.cfg, task.index, task.processes);
      return [];
  }
}

async function main(): Promise<void> {
  const task = JSON.parse(process.argv[2]) as Task;
  try {
    const results = await runTask(task);
    for (const result of results) await send({ type: 'result', result });
    process.exitCode = 0;
  } catch (err) {
    await send({ type: 'error', error: (err as Error)?.stack ?? String(err) });
    process.exitCode = 1;
  }
  // Peers keep sockets and timers of their own; the figures are in, so leave now.
  process.disconnect?.();
  setTimeout(() => process.exit(), 200).unref();
}

void main();
