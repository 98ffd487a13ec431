import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { type AddressInfo, createServer } from 'node:net';
import mysql from 'mysql2/promise';
import { waitFor } from './wait.js';

const run = promisify(execFile);

export interface PrivateMariaDbOptions {
  /** Extra mariadbd arguments, e.g. `['--sql-mode=NO_BACKSLASH_ESCAPES']`. */
  args?: string[];
  /**
   * Serve TLS with a throw-away CA and a server certificate for 127.0.0.1 (made with
   * `openssl`), and refuse plain TCP (`require_secure_transport`). `ca` holds the CA.
   */
  tls?: boolean;
}

/**
 * A private MariaDB server of the test's own (never the shared one), so a test may
 * stop and restart it. Data survives restarts; everything is removed by `destroy()`.
 */
export class PrivateMariaDb {
  private child?: ChildProcess;
  /** PEM of the CA that signed the server certificate (with `tls`). */
  ca?: string;
  private constructor(
    readonly dir: string,
    readonly port: number,
    private readonly args: string[],
  ) {}

  /** The running server's process id (undefined before the first start). */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  /**
   * Freezes the server (SIGSTOP) and returns once every one of its threads has stopped: the
   * signal takes effect at each thread's next scheduling point, and on a loaded machine a
   * thread may still answer a query sent just after kill() returned.
   */
  async freeze(): Promise<void> {
    const pid = this.pid!;
    process.kill(pid, 'SIGSTOP');
    const stopped = (tid: string) => {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      return /^[tT]/.test(stat.slice(stat.lastIndexOf(')') + 2));
    };
    await waitFor(
      () => readdirSync(`/proc/${pid}/task`).every(stopped),
      'every thread of the private server to stop',
      5_000,
      2,
    );
  }

  thaw(): void {
    process.kill(this.pid!, 'SIGCONT');
  }

  get url(): string {
    return `mysql://root@127.0.0.1:${this.port}/test`;
  }

  /** The server's unix socket: counts as a secure transport, so it works under `tls` too. */
  get socketPath(): string {
    return join(this.dir, 's');
  }

  /** `port` 0: a port the system says is free now (fixed from then on, across restarts). */
  static async create(port: number, options: PrivateMariaDbOptions = {}): Promise<PrivateMariaDb> {
    if (port === 0) port = await freePort();
    const dir = mkdtempSync(join(tmpdir(), 'wf-mariadb-'));
    const args = [...(options.args ?? [])];
    let ca: string | undefined;
    if (options.tls) {
      const tlsDir = join(dir, 'tls');
      ca = await makeCertificates(tlsDir);
      args.push(
        `--ssl-ca=${join(tlsDir, 'ca.pem')}`,
        `--ssl-cert=${join(tlsDir, 'server.pem')}`,
        `--ssl-key=${join(tlsDir, 'server-key.pem')}`,
        '--require-secure-transport=ON',
      );
    }
    const db = new PrivateMariaDb(dir, port, args);
    db.ca = ca;
    const user = process.getuid?.() === 0 ? ['--user=root'] : [];
    await run('mariadb-install-db', [
      '--no-defaults',
      `--datadir=${join(dir, 'data')}`,
      '--auth-root-authentication-method=normal',
      '--skip-test-db',
      ...user,
    ]);
    await db.start();
    const conn = await db.adminConnection();
    await conn.query('CREATE DATABASE IF NOT EXISTS test');
    await conn.end();
    return db;
  }

  /** A root connection over the unix socket (works whatever the TCP settings are). */
  adminConnection(): Promise<mysql.Connection> {
    return mysql.createConnection({ socketPath: this.socketPath, user: 'root' });
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
        `--socket=${this.socketPath}`,
        `--pid-file=${join(this.dir, 'pid')}`,
        '--skip-name-resolve',
        '--innodb-buffer-pool-size=64M',
        '--max-connections=200',
        ...user,
        ...this.args,
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    const child = this.child;
    // The server's last words, for the error when it does not come up.
    let stderr = '';
    child.stderr?.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-2000)));
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (child.exitCode !== null)
        throw new Error(
          `private mariadbd on ${this.port} exited with ${child.exitCode}: ${stderr.trim().split('\n').slice(-5).join(' | ')}`,
        );
      try {
        // TCP as well as the socket: clients of the tests connect over TCP.
        const conn = await mysql.createConnection({
          host: '127.0.0.1',
          port: this.port,
          user: 'root',
          ssl: this.ca ? { ca: this.ca } : undefined,
        });
        await conn.end();
        return;
      } catch (err) {
        if (Date.now() > deadline)
          throw new Error(`private mariadbd on ${this.port} did not start: ${err}`, { cause: err });
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

/** A CA and a server certificate for 127.0.0.1/localhost signed by it; returns the CA's PEM. */
async function makeCertificates(dir: string): Promise<string> {
  mkdirSync(dir, { recursive: true });
  const at = (f: string) => join(dir, f);
  writeFileSync(at('san.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  await run('openssl', [
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-days',
    '2',
    '-subj',
    '/CN=workflow test CA',
    '-keyout',
    at('ca-key.pem'),
    '-out',
    at('ca.pem'),
  ]);
  await run('openssl', [
    'req',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-subj',
    '/CN=127.0.0.1',
    '-keyout',
    at('server-key.pem'),
    '-out',
    at('server.csr'),
  ]);
  await run('openssl', [
    'x509',
    '-req',
    '-in',
    at('server.csr'),
    '-CA',
    at('ca.pem'),
    '-CAkey',
    at('ca-key.pem'),
    '-CAcreateserial',
    '-days',
    '2',
    '-extfile',
    at('san.cnf'),
    '-out',
    at('server.pem'),
  ]);
  return readFileSync(at('ca.pem'), 'utf8');
}

/** A TCP port nothing listens on right now. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
}
