import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { resolve } from 'node:path';
import type { Connection } from 'mysql2/promise';
import { DB_URL } from './db.js';

export interface WorkerProcess {
  child: ChildProcess;
  pid: number;
  lines: string[];
  /** Resolves with the first stdout line matching `pattern` (seen before or after the call). */
  waitForLine(pattern: RegExp, timeoutMs?: number): Promise<string>;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

const FIXTURES = resolve(process.cwd(), '.tmp/test/fixtures');

/**
 * Starts a compiled worker fixture (built by `npm test`'s pretest; `worker-process` unless
 * another is named) and waits until it is ready.
 */
export async function startWorker(env: Record<string, string>, fixture = 'worker-process'): Promise<WorkerProcess> {
  const child = spawn(process.execPath, [resolve(FIXTURES, `${fixture}.js`)], {
    env: { ...process.env, WORKFLOW_DB_URL: DB_URL, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  const waiters: Array<{ pattern: RegExp; resolve: (l: string) => void }> = [];
  createInterface({ input: child.stdout! }).on('line', (line) => {
    lines.push(line);
    for (const w of [...waiters]) {
      if (w.pattern.test(line)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(line);
      }
    }
  });
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  const exited = once(child, 'exit');
  const proc: WorkerProcess = {
    child,
    pid: child.pid!,
    lines,
    waitForLine(pattern, timeoutMs = 20_000) {
      const seen = lines.find((l) => pattern.test(l));
      if (seen) return Promise.resolve(seen);
      return new Promise((res, rej) => {
        const timer = setTimeout(
          () =>
            rej(
              new Error(`worker ${child.pid}: no line ${pattern} in ${timeoutMs} ms; stderr: ${stderr.slice(-2000)}`),
            ),
          timeoutMs,
        );
        timer.unref();
        waiters.push({ pattern, resolve: (l) => (clearTimeout(timer), res(l)) });
      });
    },
    async kill(signal = 'SIGKILL') {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill(signal);
      await exited;
    },
  };
  await proc.waitForLine(/^ready$/);
  return proc;
}

/** The table the worker fixture journals every step and terminal delivery into. */
export async function createJournal(db: Connection, prefix: string): Promise<void> {
  await db.query(`DROP TABLE IF EXISTS \`${prefix}journal\``);
  await db.query(
    `CREATE TABLE \`${prefix}journal\` (id BIGINT AUTO_INCREMENT PRIMARY KEY, run_id VARCHAR(128) NOT NULL, step_number INT NOT NULL,
      attempt INT NOT NULL, pid INT NOT NULL, kind VARCHAR(40) NOT NULL, KEY (run_id, step_number))`,
  );
}
