/**
 * Server and session settings the module must not trust: a server whose sql_mode has
 * NO_BACKSLASH_ESCAPES (mysql2 escapes with backslashes on the client, so such a session
 * reads `\'` as a backslash and the end of the string), and a server that requires TLS.
 * Each runs on a private MariaDB of its own, started with that setting.
 */
import { Injectable } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import type mysql from 'mysql2/promise';
import {
  type Step,
  StepOutcome,
  StepRunner,
  DatabaseUnreachableError,
  UnsafeSqlModeError,
  WorkflowConfigError,
  WorkflowService,
} from 'nestjs-durable-workflow';
import { DataSource } from 'typeorm';
import { startApp, startupError, testBuilder } from '../utils/create-test-app.js';
import { PrivateMariaDb } from '../utils/private-db.js';

/** Step 0 forwards its payload through a settlement; step 1 returns what it saw. */
@Injectable()
@StepRunner('roundtrip')
class RoundTripRunner {
  runStep(step: Step) {
    if (step.stepNumber === 0) return StepOutcome.continue(step.payload);
    return StepOutcome.succeed({ payload: step.payload, headers: step.headers });
  }
}

async function tableNames(conn: mysql.Connection): Promise<string[]> {
  const [rows] = await conn.query(`SELECT table_name AS t FROM information_schema.tables WHERE table_schema = 'test'`);
  return (rows as Array<{ t: string }>).map((r) => r.t).sort();
}

describe('a server whose sql_mode has NO_BACKSLASH_ESCAPES', () => {
  let db: PrivateMariaDb;
  let admin: mysql.Connection;

  beforeAll(async () => {
    db = await PrivateMariaDb.create(0, { args: ['--sql-mode=NO_BACKSLASH_ESCAPES'] });
    admin = await db.adminConnection();
    await admin.query('CREATE TABLE test.victim (id INT PRIMARY KEY)');
  }, 60_000);
  afterAll(async () => {
    await admin?.end();
    await db?.destroy();
  });

  it('is really set on the server (so the tests below are not vacuous)', async () => {
    const [[row]] = (await admin.query('SELECT @@GLOBAL.sql_mode AS m')) as any;
    expect(row.m).toContain('NO_BACKSLASH_ESCAPES');
  });

  it('own pool: quotes, backslashes and a statement break-out round-trip exactly; no statement of theirs runs', async () => {
    const hostile = {
      quote: "it's",
      breakout: "'; DROP TABLE victim; --",
      escapedBreakout: "\\'; DROP TABLE victim; -- ",
      backslashes: 'C:\\path\\to\\ and \\\\ and \\n (not a newline) and a real\nnewline',
      doubleQuotes: 'say "hi" \\"there\\"',
      mixed: ["'", '\\', '"', '`', "\\'", "''", '%_', '\u0000', 'ok'],
    };
    const app: TestingModule = await startApp({
      prefix: 'nbe_',
      providers: [RoundTripRunner],
      options: { connection: { url: db.url } },
    });
    try {
      const service = app.get(WorkflowService);
      const headers = { note: "x'; DROP TABLE victim; --", path: 'a\\b' };
      // Concurrent submits, so several connections of the pool are opened and each must be set.
      const inputs = Array.from({ length: 12 }, (_, i) => ({ ...hostile, i }));
      const submitted = await Promise.all(inputs.map((input) => service.submit('roundtrip', { input, headers })));
      for (const [i, { runId }] of submitted.entries()) {
        const outcome = await service.waitForOutcome(runId, { timeoutMs: 15_000 });
        expect(outcome.status).toBe('succeeded');
        expect(outcome.result).toEqual({ payload: inputs[i], headers });
        expect(outcome.headers).toEqual(headers);
        expect((await service.status(runId))?.result).toEqual({ payload: inputs[i], headers });
      }
    } finally {
      await app.close();
    }
    expect(await tableNames(admin)).toEqual(expect.arrayContaining(['victim', 'nbe_jobs', 'nbe_runs', 'nbe_dead']));
  });

  it('shared DataSource: startup refuses, naming NO_BACKSLASH_ESCAPES and the fix, before writing anything', async () => {
    const dataSource = new DataSource({ type: 'mysql', url: db.url } as any);
    await dataSource.initialize();
    try {
      const err = await startupError(() =>
        testBuilder({ prefix: 'nbeshared_', options: { connection: undefined, dataSource } }),
      );
      expect(err).toBeInstanceOf(UnsafeSqlModeError);
      expect(err).toBeInstanceOf(WorkflowConfigError);
      expect((err as UnsafeSqlModeError).modes).toEqual(['NO_BACKSLASH_ESCAPES']);
      expect(err.message).toContain('NO_BACKSLASH_ESCAPES');
      expect(err.message).toContain('sql_mode');
      expect(err.message).toMatch(/connection/);
      // The app's DataSource is the app's: refused, not destroyed.
      expect(dataSource.isInitialized).toBe(true);
      expect((await tableNames(admin)).filter((t) => t.startsWith('nbeshared_'))).toEqual([]);
    } finally {
      await dataSource.destroy();
    }
  });
});

describe('a server that requires TLS (require_secure_transport, self-signed CA)', () => {
  let db: PrivateMariaDb;
  let ca: string;
  const tcp = () => ({ host: '127.0.0.1', port: db.port, username: 'root', database: 'test' });

  beforeAll(async () => {
    db = await PrivateMariaDb.create(0, { tls: true });
    ca = db.ca!;
  }, 60_000);
  afterAll(async () => {
    await db?.destroy();
  });

  async function completesARun(connection: object, prefix: string): Promise<void> {
    const app = await startApp({ prefix, providers: [RoundTripRunner], options: { connection } });
    try {
      const service = app.get(WorkflowService);
      const { runId } = await service.submit('roundtrip', { input: { tls: true } });
      const outcome = await service.waitForOutcome(runId, { timeoutMs: 15_000 });
      expect(outcome).toMatchObject({ status: 'succeeded', result: { payload: { tls: true } } });
    } finally {
      await app.close();
    }
  }

  it('connection.ssl { ca }: the pool connects over TLS and a run completes', async () => {
    await completesARun({ ...tcp(), ssl: { ca } }, 'tlsca_');
  });

  it('?ssl={"ca":...} in connection.url (mysql2 JSON form) is honoured', async () => {
    await completesARun({ url: `${db.url}?ssl=${encodeURIComponent(JSON.stringify({ ca }))}` }, 'tlsurl_');
  });

  // MariaDB refuses a login without TLS as a plain 'Access denied' (MySQL has its own
  // errno, which becomes TlsRequiredError), so the message has to name both causes.
  it('without ssl: startup fails with a WorkflowConfigError that says TLS may be required and names connection.ssl', async () => {
    const err = await startupError(() => testBuilder({ prefix: 'tlsnone_', options: { connection: tcp() } }));
    expect(err).toBeInstanceOf(DatabaseUnreachableError);
    expect(err).toBeInstanceOf(WorkflowConfigError);
    expect(err.message).toMatch(/requires TLS/);
    expect(err.message).toContain('require_secure_transport');
    expect(err.message).toContain('connection.ssl');
    expect(err.message).toContain('127.0.0.1:' + db.port);
  });

  it('?ssl=true verifies the certificate: a CA Node does not trust is refused, clearly', async () => {
    const err = await startupError(() =>
      testBuilder({ prefix: 'tlstrue_', options: { connection: { url: `${db.url}?ssl=true` } } }),
    );
    expect(err).toBeInstanceOf(DatabaseUnreachableError);
    expect(err.message).toMatch(/certificate/i);
    expect(err.message).toContain('connection.ssl.ca');
  });
});
