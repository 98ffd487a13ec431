import { WorkflowConfigError } from '../../lib/errors/index.js';
import { connectionTarget } from '../../lib/storage/connection-target.js';
import { resolveConfig } from '../../lib/workflow.config.js';

describe('resolveConfig', () => {
  const connection = { url: 'mysql://root@127.0.0.1:3306/test' };

  it('applies the documented defaults', () => {
    const c = resolveConfig({ connection });
    expect(c).toMatchObject({
      tablePrefix: 'workflow_',
      autoMigrate: true,
      worker: { concurrency: 16, pollIntervalMs: 250, leaseMs: 30_000, shutdownTimeoutMs: 30_000 },
      defaults: { maxAttempts: 3, backoff: { baseMs: 1_000, maxMs: 300_000 }, priority: 0 },
      retention: { runsMs: 7 * 24 * 3600 * 1000, deadMs: 7 * 24 * 3600 * 1000 },
      maxPayloadBytes: 16 * 1024 * 1024,
    });
  });

  it.each([
    ['neither connection nor dataSource', {}, /connection.*dataSource/],
    ['both', { connection, dataSource: 'x' }, /not both/],
    ['a bad table prefix', { connection, tablePrefix: 'x; DROP' }, /tablePrefix/],
    ['a zero concurrency', { connection, worker: { concurrency: 0 } }, /worker.concurrency/],
    ['a fractional lease', { connection, worker: { leaseMs: 1.5 } }, /worker.leaseMs/],
    ['maxMs below baseMs', { connection, defaults: { backoff: { baseMs: 10, maxMs: 5 } } }, /maxMs/],
    ['a bad workflow name', { connection, workflows: ['has space'] }, /workflow name/],
    [
      'connection.url unset and no host (an unset environment variable)',
      { connection: { url: undefined } },
      /connection\.url is not set.*connection\.host/,
    ],
    ['an empty connection.url and no host', { connection: { url: '' } }, /connection\.url is empty/],
    [
      'a connection.url that is not a URL',
      { connection: { url: 'root@localhost/test' } },
      /connection\.url is not a valid URL/,
    ],
    [
      'a connection.url of another database',
      { connection: { url: 'postgres://u@h/db' } },
      /mysql:\/\/ or mariadb:\/\//,
    ],
    ['a port out of range', { connection: { host: 'h', port: 70000 } }, /connection\.port/],
    ['?ssl= that is broken JSON', { connection: { url: 'mysql://u@h/db?ssl={"ca":' } }, /ssl parameter.*JSON/],
    ['a connection.ssl of the wrong type', { connection: { host: 'h', ssl: 1 } }, /connection\.ssl/],
    [
      'defaults.priority below the INT range it is stored in',
      { connection, defaults: { priority: -2_000_000_001 } },
      /defaults\.priority must be an integer from -2000000000 to 2000000000, got -2000000001/,
    ],
    [
      'defaults.priority above it',
      { connection, defaults: { priority: 2_000_000_001 } },
      /defaults\.priority .*got 2000000001/,
    ],
    [
      'defaults.maxAttempts over 1,000,000',
      { connection, defaults: { maxAttempts: 1_000_001 } },
      /defaults\.maxAttempts must be an integer from 1 to 1000000/,
    ],
    [
      'a backoff past 10 years',
      { connection, defaults: { backoff: { maxMs: 315_360_000_001 } } },
      /defaults\.backoff\.maxMs must be an integer from 0 to 315360000000/,
    ],
    [
      'worker.concurrency over 10,000',
      { connection, worker: { concurrency: 10_001 } },
      /worker\.concurrency must be an integer from 1 to 10000/,
    ],
    [
      'a lease past the timer range',
      { connection, worker: { leaseMs: 2 ** 31 } },
      /worker\.leaseMs must be an integer from 100 to 2147483647/,
    ],
    [
      'a poll interval past the timer range',
      { connection, worker: { pollIntervalMs: 2 ** 31 } },
      /worker\.pollIntervalMs/,
    ],
    [
      'a shutdown timeout past the timer range',
      { connection, worker: { shutdownTimeoutMs: 2 ** 31 } },
      /worker\.shutdownTimeoutMs/,
    ],
    [
      'maxPayloadBytes over 1 GiB',
      { connection, maxPayloadBytes: 2 ** 30 + 1 },
      /maxPayloadBytes must be an integer from 1 to 1073741824/,
    ],
    ['a NaN option, shown as NaN', { connection, defaults: { priority: Number.NaN } }, /got NaN/],
  ])('rejects %s with WorkflowConfigError', (_name, options, message) => {
    expect(() => resolveConfig(options as any)).toThrow(WorkflowConfigError);
    expect(() => resolveConfig(options as any)).toThrow(message);
  });
});

it('accepts every option at its bound', () => {
  const c = resolveConfig({
    connection: { url: 'mysql://root@127.0.0.1:3306/test' },
    defaults: {
      priority: -2_000_000_000,
      maxAttempts: 1_000_000,
      backoff: { baseMs: 315_360_000_000, maxMs: 315_360_000_000 },
    },
    worker: { concurrency: 10_000, leaseMs: 2 ** 31 - 1, pollIntervalMs: 2 ** 31 - 1, shutdownTimeoutMs: 2 ** 31 - 1 },
    maxPayloadBytes: 2 ** 30,
  });
  expect(c.defaults.priority).toBe(-2_000_000_000);
  expect(c.worker && c.worker.concurrency).toBe(10_000);
});

describe('connectionTarget (connection.url and the fields)', () => {
  it('reads host, port, user, password (URL-decoded) and database from the URL', () => {
    expect(connectionTarget({ url: 'mysql://app%40x:p%3Aw%2Fd@db.example:3307/my_db' })).toMatchObject({
      host: 'db.example',
      port: 3307,
      username: 'app@x',
      password: 'p:w/d',
      database: 'my_db',
      ssl: undefined,
      poolSize: 10,
    });
  });

  it('lets the fields override the parts of the URL, as documented', () => {
    expect(
      connectionTarget({
        url: 'mysql://u:p@h:1/a',
        host: 'other',
        port: 2,
        username: 'v',
        password: 'q',
        database: 'b',
      }),
    ).toMatchObject({ host: 'other', port: 2, username: 'v', password: 'q', database: 'b' });
  });

  it('leaves the database unset when the URL has no path (reported at startup, naming connection.database)', () => {
    expect(connectionTarget({ url: 'mysql://u@h:3306' }).database).toBeUndefined();
    expect(connectionTarget({ url: 'mysql://u@h:3306/' }).database).toBeUndefined();
  });

  it.each([
    ['?ssl=true', 'mysql://u@h/db?ssl=true', {}],
    ['?ssl=1', 'mysql://u@h/db?ssl=1', {}],
    ['?ssl=false', 'mysql://u@h/db?ssl=false', undefined],
    [
      'mysql2 JSON form',
      'mysql://u@h/db?ssl={"rejectUnauthorized":true,"ca":"PEM"}',
      { rejectUnauthorized: true, ca: 'PEM' },
    ],
    ['a profile name', 'mysql://u@h/db?ssl=Amazon%20RDS', 'Amazon RDS'],
  ])('honours %s in the URL', (_name, url, ssl) => {
    expect(connectionTarget({ url }).ssl).toEqual(ssl);
  });

  it('connection.ssl overrides the URL; true means TLS with verification', () => {
    expect(connectionTarget({ url: 'mysql://u@h/db?ssl=true', ssl: false }).ssl).toBeUndefined();
    expect(connectionTarget({ url: 'mysql://u@h/db', ssl: { ca: 'PEM' } }).ssl).toEqual({ ca: 'PEM' });
    expect(connectionTarget({ host: 'h', ssl: true }).ssl).toEqual({});
  });

  it('lists the URL parameters it does not pass on (names only)', () => {
    expect(connectionTarget({ url: 'mysql://u@h/db?charset=utf8mb4&ssl=true&timezone=Z' }).ignoredParams).toEqual([
      'charset',
      'timezone',
    ]);
  });
});
