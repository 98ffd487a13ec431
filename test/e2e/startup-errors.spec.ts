/**
 * Startup mistakes get a WorkflowConfigError that names the option to fix, and a startup
 * that fails leaves no connection open. Connections are counted on a private MariaDB of
 * this file's own, where the only TCP clients are this file's.
 */
import { Test, type TestingModule, type TestingModuleBuilder } from '@nestjs/testing';
import type mysql from 'mysql2/promise';
import { UnsupportedDatabaseError, WorkflowConfigError, WorkflowModule } from 'nestjs-durable-workflow';
import { DataSource } from 'typeorm';
import { startupError, testBuilder, testOptions } from '../utils/create-test-app.js';
import { PrivateMariaDb } from '../utils/private-db.js';
import { waitFor } from '../utils/wait.js';

describe('startup errors', () => {
  let db: PrivateMariaDb;
  let admin: mysql.Connection;

  /** Client connections over TCP (the admin connection uses the socket and is not counted). */
  async function tcpConnections(): Promise<number> {
    const [[row]] = (await admin.query(
      `SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST WHERE HOST LIKE '127.0.0.1:%'`,
    )) as any;
    return Number(row.n);
  }

  /** Every connection a failed startup opened is closed again (polled: the server notices a close a moment later). */
  async function expectNoConnectionLeft(): Promise<void> {
    await waitFor(async () => (await tcpConnections()) === 0, 'the server to see no client connection left', 5_000);
  }

  /**
   * Like startupError(), but checks that nothing is left open BEFORE app.close(): a real
   * app whose bootstrap fails is often never closed, so the failed start must clean up itself.
   */
  async function failedStartLeavesNothingOpen(build: () => TestingModuleBuilder): Promise<Error> {
    let app: TestingModule | undefined;
    let error: Error | undefined;
    try {
      app = await build().compile();
      await app.init();
    } catch (err) {
      error = err as Error;
    }
    try {
      if (!error) throw new Error('expected the app to fail at startup, but it started');
      await expectNoConnectionLeft();
      return error;
    } finally {
      await app?.close().catch(() => undefined);
    }
  }

  beforeAll(async () => {
    db = await PrivateMariaDb.create(0);
    admin = await db.adminConnection();
  }, 60_000);
  afterAll(async () => {
    await admin?.end();
    await db?.destroy();
  });
  afterEach(async () => {
    await expectNoConnectionLeft();
  });

  it('connection.url unset (an unset environment variable) and no host: names connection.url', async () => {
    const err = await startupError(() =>
      testBuilder({ prefix: 'se_', options: { connection: { url: process.env.WF_NO_SUCH_VAR } } }),
    );
    expect(err).toBeInstanceOf(WorkflowConfigError);
    expect(err.message).toContain('connection.url');
    expect(err.message).toContain('connection.host');
    expect(err.message).not.toMatch(/No database selected/);
  });

  it('a URL without a database: names connection.database, and the pool it opened is closed', async () => {
    const err = await failedStartLeavesNothingOpen(() =>
      testBuilder({ prefix: 'se_', options: { connection: { url: `mysql://root@127.0.0.1:${db.port}` } } }),
    );
    expect(err).toBeInstanceOf(WorkflowConfigError);
    expect(err.message).toContain('connection.database');
  });

  it('a database that does not exist: names it and connection.database', async () => {
    const err = await startupError(() =>
      testBuilder({ prefix: 'se_', options: { connection: { url: `mysql://root@127.0.0.1:${db.port}/no_such_db` } } }),
    );
    expect(err).toBeInstanceOf(WorkflowConfigError);
    expect(err.message).toContain('no_such_db');
    expect(err.message).toContain('connection.database');
  });

  it('a shared DataSource the module had to initialize is closed again when startup fails', async () => {
    const dataSource = new DataSource({ type: 'mysql', url: db.url } as any);
    // autoMigrate off and no tables: a failure after the DataSource was opened.
    const err = await failedStartLeavesNothingOpen(() =>
      testBuilder({ prefix: 'se_missing_', options: { connection: undefined, dataSource, autoMigrate: false } }),
    );
    expect(err).toBeInstanceOf(WorkflowConfigError);
    expect(err.message).toMatch(/autoMigrate/);
    expect(dataSource.isInitialized).toBe(false);
  });

  it('a DataSource of another type is refused without connecting anywhere', async () => {
    const dataSource = new DataSource({ type: 'postgres', host: '127.0.0.1', port: 1 } as any);
    const err = await startupError(() =>
      testBuilder({ prefix: 'se_', options: { connection: undefined, dataSource } }),
    );
    expect(err).toBeInstanceOf(UnsupportedDatabaseError);
    expect(err).toBeInstanceOf(WorkflowConfigError);
    expect(err.message).toContain("'postgres'");
    expect(dataSource.isInitialized).toBe(false);
  });

  it('two WorkflowModule.forRoot() in one app: says to import it once, and opens no connection', async () => {
    const connection = { url: db.url };
    const err = await failedStartLeavesNothingOpen(() =>
      Test.createTestingModule({
        imports: [
          WorkflowModule.forRoot(testOptions({ prefix: 'se_one_', options: { connection } })),
          WorkflowModule.forRoot(testOptions({ prefix: 'se_two_', options: { connection } })),
        ],
      }),
    );
    expect(err).toBeInstanceOf(WorkflowConfigError);
    expect(err.message).toMatch(/imported 2 times/);
    expect(err.message).toMatch(/once/);
    expect(err.message).toMatch(/root module/);
    const [tables] = await admin.query(
      `SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'se\\_%'`,
    );
    expect(tables).toEqual([]);
  });
});
