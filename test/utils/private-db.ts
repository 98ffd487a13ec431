import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import mysql from 'mysql2/promise';

const run = promisify(execFile);

/**
 * A private MariaDB server of the test's own (never the shared one), so a test may
 * stop and restart it. Data survives restarts; everything is removed by `destroy()`.
 */
export class PrivateMariaDb {
  private child?: ChildProcess;
  private constructor(
    readonly dir: string,
    readonly port: number,
  ) {}

  get url(): string {
    return `mysql://root@127.0.0.1:${this.port}/test`;
  }

  static async create(port: number): Promise<PrivateMariaDb> {
    const dir = mkdtempSync(join(tmpdir(), 'wf-mariadb-'));
    const db = new PrivateMariaDb(dir, port);
    const user = process.getuid?.() === 0 ? ['--user=root'] : [];
    await run('mariadb-install-db', [
      '--no-defaults',
      `--datadir=${join(dir, 'data')}`,
      '--auth-root-authentication-method=normal',
      '--skip-test-db',
      ...user,
    ]);
    await db.start();
    const conn = await mysql.createConnection({ host: '127.0.0.1', port, user: 'root' });
    await conn.query('CREATE DATABASE IF NOT EXISTS test');
    await conn.end();
    return db;
  }

  async start(): Promise<void> {
    const user = process.getuid?.() === 0 ? ['--user=root'] : [];
    this.child = spawn(
      'mariadbd',
      [
        '--no-defaults',
        `--datadir=${join(this.dir, 'data')}`,
        `--port=${this.port}`,
        '--bind-address=127.0.0.1',
        `--socket=${join(this.dir, 's')}`,
        `--pid-file=${join(this.dir, 'pid')}`,
        '--skip-name-resolve',
        '--innodb-buffer-pool-size=64M',
        '--max-connections=200',
        ...user,
      ],
      { stdio: 'ignore' },
    );
    const deadline = Date.now() + 30_000;
    for (;;) {
      try {
        const conn = await mysql.createConnection({ host: '127.0.0.1', port: this.port, user: 'root' });
        await conn.end();
        return;
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`private mariadbd on ${this.port} did not start: ${err}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  /** Stops the server (SIGTERM: a clean shutdown, like a restart for maintenance, or SIGKILL: a crash). */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill(signal);
    await exited;
  }

  async destroy(): Promise<void> {
    await this.stop('SIGKILL');
    rmSync(this.dir, { recursive: true, force: true });
  }
}
