import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** test/cluster/cluster.sh, found from this file whether it runs from the sources (jest) or from .tmp (the CLIs). */
function script(): string {
  for (let dir = dirname(fileURLToPath(import.meta.url)); ; dir = dirname(dir)) {
    const candidate = join(dir, 'test', 'cluster', 'cluster.sh');
    if (existsSync(candidate)) return candidate;
    if (dirname(dir) === dir) throw new Error('test/cluster/cluster.sh not found above ' + import.meta.url);
  }
}

/**
 * The three-node Galera cluster of test/cluster/cluster.sh, from TypeScript: the script owns
 * the processes (by their pid files), this only calls it, so a cluster started from a shell
 * and one started by a test are the same thing.
 */
export class GaleraCluster {
  constructor(
    readonly basePort = Number(process.env.CLUSTER_BASE_PORT ?? 3400),
    readonly dir = process.env.CLUSTER_DIR ?? `/tmp/wf-galera-${basePort}`,
  ) {}

  /** HAProxy's single-writer listener: node 1, nodes 2 and 3 as backups. */
  get writerUrl(): string {
    return `mysql://root@127.0.0.1:${this.basePort}/test`;
  }

  /** HAProxy's multi-primary listener: leastconn over every Synced node. */
  get spreadUrl(): string {
    return `mysql://root@127.0.0.1:${this.basePort + 9}/test`;
  }

  nodePort(n: 1 | 2 | 3): number {
    return this.basePort + n;
  }

  nodeUrl(n: 1 | 2 | 3): string {
    return `mysql://root@127.0.0.1:${this.nodePort(n)}/test`;
  }

  private async call(...args: string[]): Promise<string> {
    const { stdout } = await run('bash', [script(), ...args], {
      env: { ...process.env, CLUSTER_BASE_PORT: String(this.basePort), CLUSTER_DIR: this.dir },
      maxBuffer: 16 * 1024 * 1024,
    });
    return stdout;
  }

  /** Starts whatever is not running (all of it, from nothing, on first use) and waits until 3 nodes are Synced. */
  start(): Promise<string> {
    return this.call('start');
  }

  stop(): Promise<string> {
    return this.call('stop');
  }

  destroy(): Promise<string> {
    return this.call('destroy');
  }

  status(): Promise<string> {
    return this.call('status');
  }

  /** The node HAProxy's writer listener sends connections to now (it stays there until that node fails). */
  async currentWriter(): Promise<1 | 2 | 3> {
    const mysql = (await import('mysql2/promise')).default;
    const conn = await mysql.createConnection({ uri: this.writerUrl });
    try {
      const [rows] = await conn.query('SELECT @@wsrep_node_name AS node');
      return Number(/(\d)$/.exec((rows as Array<{ node: string }>)[0].node)![1]) as 1 | 2 | 3;
    } finally {
      await conn.end();
    }
  }

  /** SIGKILLs node n: a crash, HAProxy fails over when it is the writer. */
  killNode(n: 1 | 2 | 3): Promise<string> {
    return this.call('kill-node', String(n));
  }

  /** Starts node n again; resolves once it has rejoined (IST or SST) and is Synced. */
  startNode(n: 1 | 2 | 3): Promise<string> {
    return this.call('start-node', String(n));
  }
}
