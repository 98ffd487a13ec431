import { Inject, Injectable, Logger, type OnApplicationShutdown, type OnModuleInit } from '@nestjs/common';
import { ModuleRef, ModulesContainer } from '@nestjs/core';
import mysql2, { type PoolConnection, type PoolOptions } from 'mysql2';
import { DataSource } from 'typeorm';
import { DatabaseUnreachableError } from '../errors/database-unreachable.error.js';
import { TlsRequiredError } from '../errors/tls-required.error.js';
import { UnsafeSqlModeError } from '../errors/unsafe-sql-mode.error.js';
import { UnsupportedDatabaseError } from '../errors/unsupported-database.error.js';
import { WorkflowConfigError } from '../errors/workflow-config.error.js';
import { MESSAGES } from '../workflow.messages.js';
import { WorkflowError } from '../errors/workflow.error.js';
import type { ResolvedWorkflowConfig } from '../workflow.config.js';
import { WORKFLOW_CONFIG } from '../workflow.constants.js';
import { WorkflowRegistry } from '../workflow.registry.js';
import { type ConnectionTarget, connectionTarget } from './connection-target.js';
import { WORKFLOW_SCHEMA } from './schema/migrations.js';
import { migrate } from './schema/migrator.js';
import { SqlClient } from './sql-client.js';

/**
 * The sql_mode of every session of the module's own pool, set before its first statement.
 * mysql2 escapes values on the client with backslashes, which is only right when the
 * session does not have NO_BACKSLASH_ESCAPES; with multipleStatements on, a wrong escape
 * would let a quote in an input end the string and start a statement. Accepted as is by
 * MySQL 8 and MariaDB 10.6+ (MySQL 8's default, less ONLY_FULL_GROUP_BY).
 */
export const SESSION_SQL_MODE =
  'STRICT_TRANS_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION';

/**
 * sql_mode flags under which the driver's escaping is wrong. ANSI_QUOTES is not one: our
 * identifiers are in backticks and literals in single quotes (a run through submit,
 * steps and cancel under sql_mode ANSI passes).
 */
const UNSAFE_SQL_MODES = ['NO_BACKSLASH_ESCAPES'];

/** Server errors that say the account or database is wrong: trying again changes nothing. */
const NOT_TRANSIENT_ERRNOS = new Set([
  1044, // access denied to the database
  1045, // access denied
  1049, // unknown database
  3159, // insecure transport refused (MySQL)
]);

/** A connected, checked and migrated database. */
export interface Database {
  client: SqlClient;
  /** The server's max_allowed_packet, bytes. */
  maxAllowedPacket: number;
}

/**
 * Owns the way to the database: resolves or creates the DataSource, checks the server,
 * migrates, and hands the ready client to WorkflowStorage. Started lazily and at onModuleInit, so a
 * user's own onModuleInit may already submit. Destroys only a DataSource it created.
 */
@Injectable()
export class WorkflowConnection implements OnModuleInit, OnApplicationShutdown {
  private readonly logger = new Logger(WorkflowConnection.name);
  private starting?: Promise<Database>;
  private ownDataSource?: DataSource;
  /** A shared DataSource this module had to initialize: closed again if startup fails. */
  private initializedShared?: DataSource;
  private closed = false;
  database?: Database;

  constructor(
    @Inject(WORKFLOW_CONFIG) private readonly config: ResolvedWorkflowConfig,
    private readonly moduleRef: ModuleRef,
    private readonly registry: WorkflowRegistry,
    private readonly modules: ModulesContainer,
  ) {}

  async onModuleInit(): Promise<void> {
    await this.ready();
  }

  ready(): Promise<Database> {
    this.starting ??= this.start();
    return this.starting;
  }

  get dataSource(): DataSource | undefined {
    return this.database?.client.dataSource;
  }

  private async start(): Promise<Database> {
    // Started lazily by a submit after shutdown, it would open a pool nobody closes.
    if (this.closed) throw new WorkflowError('WorkflowModule has shut down; it does not connect again.');
    this.assertImportedOnce();
    try {
      return await this.prepare(await this.resolveDataSource());
    } catch (err) {
      // A failed start must leave no pool open: it would keep the process alive.
      await this.closeWhatStartOpened();
      throw err;
    }
  }

  private async closeWhatStartOpened(): Promise<void> {
    for (const ds of [this.ownDataSource, this.initializedShared]) {
      if (ds?.isInitialized) await ds.destroy().catch(() => undefined);
    }
    this.initializedShared = undefined;
  }

  /**
   * Two WorkflowModules in one app would run two workers over one set of runners and
   * make WorkflowService ambiguous. Checked before any connection is opened.
   */
  private assertImportedOnce(): void {
    let count = 0;
    for (const module of this.modules.values()) if (module.providers.has(WorkflowConnection)) count++;
    if (count > 1) {
      throw new WorkflowConfigError(MESSAGES.importedTwice(count));
    }
  }

  private async prepare(dataSource: DataSource): Promise<Database> {
    const client = new SqlClient(dataSource, dataSource === this.ownDataSource);
    const packet = await this.checkServer(client, dataSource === this.ownDataSource);
    const prefix = this.config.tablePrefix;
    const now = () => this.config.clock.now();
    if (this.config.autoMigrate) {
      await migrate(client, prefix, now);
    } else {
      const rows = await client
        .query<Array<{ version: number | string }>>(`SELECT \`version\` FROM \`${prefix}migrations\``)
        .catch((err) => {
          throw new WorkflowConfigError(MESSAGES.missingTables(prefix, (err as Error).message));
        });
      // An older schema would fail at the first statement that needs a newer column.
      const applied = new Set(rows.map((r) => Number(r.version)));
      const missing = WORKFLOW_SCHEMA.filter((m) => !applied.has(m.version)).map((m) => m.version);
      if (missing.length) {
        throw new WorkflowConfigError(MESSAGES.schemaBehind(prefix, missing));
      }
    }
    this.database = { client, maxAllowedPacket: packet };
    return this.database;
  }

  private async resolveDataSource(): Promise<DataSource> {
    const { dataSource, connection } = this.config;
    if (typeof dataSource === 'string') {
      const { getDataSourceToken } = await import('@nestjs/typeorm');
      let found: DataSource | undefined;
      try {
        found = this.moduleRef.get<DataSource>(getDataSourceToken(dataSource) as any, { strict: false });
      } catch {
        found = undefined;
      }
      if (!found) {
        throw new WorkflowConfigError(MESSAGES.noNamedDataSource(dataSource));
      }
      return this.initialized(found);
    }
    if (dataSource) return this.initialized(dataSource);

    return this.openOwnPool(connectionTarget(connection!));
  }

  private async openOwnPool(target: ConnectionTarget): Promise<DataSource> {
    if (target.ignoredParams.length > 0) {
      this.logger.warn(`connection.url: parameters ${target.ignoredParams.join(', ')} are ignored (only ssl is read).`);
    }
    const ds = new DataSource({
      type: 'mysql',
      driver: sessionSettingDriver(this.logger),
      host: target.host,
      port: target.port,
      username: target.username,
      password: target.password,
      database: target.database,
      ssl: target.ssl,
      poolSize: target.poolSize,
      supportBigNumbers: true,
      bigNumberStrings: false,
      // Lets a settlement send its statements in one round trip. Every statement is
      // parameterized and every session's sql_mode is ours, so this widens nothing an attacker could reach.
      multipleStatements: true,
      logging: false,
    } as any);
    this.ownDataSource = ds;
    let lastError: unknown;
    for (let attempt = 1; attempt <= 3; attempt++) {
      try {
        await ds.initialize();
        return ds;
      } catch (err) {
        lastError = err;
        // A connect that failed after the pool was made leaves the pool open.
        if (!ds.isInitialized) await ds.driver.disconnect().catch(() => undefined);
        if (!isTransientConnectError(err)) break;
        if (attempt < 3) await new Promise((r) => setTimeout(r, 500 * attempt));
      }
    }
    throw connectError(lastError, target);
  }

  private async initialized(ds: DataSource): Promise<DataSource> {
    if (!(ds instanceof DataSource) && typeof (ds as any)?.initialize !== 'function') {
      throw new WorkflowConfigError(MESSAGES.notADataSource());
    }
    // Before initializing it: no reason to connect to a database we cannot use.
    const type = (ds.options as { type?: string }).type;
    if (type !== 'mysql' && type !== 'mariadb') {
      throw new UnsupportedDatabaseError(
        `WorkflowModule needs a MySQL or MariaDB DataSource (type 'mysql' or 'mariadb'), got type '${type}'.`,
      );
    }
    if (!ds.isInitialized) {
      // The app that made it owns its lifetime: left open once we run, closed again only
      // if our startup fails (we opened it, and an open pool would keep the process alive).
      await ds.initialize();
      this.initializedShared = ds;
    }
    return ds;
  }

  /**
   * Needs FOR UPDATE SKIP LOCKED: MySQL 8.0.1+, MariaDB 10.6+; a database; a session whose escaping is right.
   * Returns max_allowed_packet.
   */
  private async checkServer(client: SqlClient, own: boolean): Promise<number> {
    const [{ version, packet, sqlMode, db }] = await client.query<
      Array<{ version: string; packet: number | string; sqlMode: string; db: string | null }>
    >('SELECT VERSION() AS version, @@max_allowed_packet AS packet, @@SESSION.sql_mode AS sqlMode, DATABASE() AS db');
    const mariadb = /mariadb/i.test(version);
    const [major, minor] = version.split(/[.-]/).map((x) => Number.parseInt(x, 10));
    const ok = mariadb ? major > 10 || (major === 10 && minor >= 6) : major >= 8;
    if (!ok) {
      throw new UnsupportedDatabaseError(
        `WorkflowModule needs MySQL 8.0+ or MariaDB 10.6+ (for FOR UPDATE SKIP LOCKED); this server is ${version}.`,
      );
    }
    const unsafe = UNSAFE_SQL_MODES.filter((m) => String(sqlMode).toUpperCase().split(',').includes(m));
    if (unsafe.length > 0) {
      throw new UnsafeSqlModeError(
        own
          ? `WorkflowModule could not set its sessions' sql_mode: it is still '${sqlMode}'. ` +
              `Check that the server accepts SET SESSION sql_mode = '${SESSION_SQL_MODE}'.`
          : `WorkflowModule refuses the shared DataSource: its sessions run with sql_mode '${sqlMode}', and under ` +
              `${unsafe.join(', ')} the driver's client-side escaping (a backslash before a quote) is wrong, so a quote ` +
              `in any input could end a string early. Remove ${unsafe.join(', ')} from the server's sql_mode (or from ` +
              "the session setup of the DataSource's connections), or give WorkflowModule `connection` instead of " +
              '`dataSource`: its own pool sets a safe sql_mode on each of its sessions.',
        unsafe,
      );
    }
    if (!db) {
      throw new WorkflowConfigError(
        own
          ? 'WorkflowModule: no database selected: set connection.database, or put the database in the path of ' +
              'connection.url (mysql://user@host:3306/database).'
          : 'WorkflowModule: the shared DataSource has no database selected: set its `database` option.',
      );
    }
    if (Number(packet) < this.config.maxPayloadBytes) {
      this.logger.warn(
        `max_allowed_packet (${packet} bytes) is not above maxPayloadBytes (${this.config.maxPayloadBytes}): ` +
          'payloads near the limit will be refused by the server. Raise max_allowed_packet or lower maxPayloadBytes.',
      );
    }
    return Number(packet);
  }

  async onApplicationShutdown(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.starting?.catch(() => undefined);
    if (this.ownDataSource?.isInitialized) await this.ownDataSource.destroy();
  }
}

/**
 * mysql2 with one change: every new connection of a pool it makes sets our session
 * sql_mode before anything else runs on it (commands on a connection run in the order
 * they were queued, and the pool queues this before handing the connection out).
 * Passed as TypeORM's `driver` option, so TypeORM's own first statements run under it too.
 */
function sessionSettingDriver(logger: Logger): typeof mysql2 {
  return Object.create(mysql2, {
    createPool: {
      value: (config: PoolOptions) => {
        const pool = mysql2.createPool(config);
        pool.on('connection', (conn: PoolConnection) => {
          conn.query(`SET SESSION sql_mode = '${SESSION_SQL_MODE}'`, (err: Error | null) => {
            if (!err) return;
            // A session whose sql_mode we could not set must run nothing: closing it makes the
            // statements already queued behind this one fail instead of reaching the server.
            logger.error(`Could not set the session sql_mode; dropping the connection: ${err.message}`);
            conn.destroy();
          });
        });
        return pool;
      },
    },
  });
}

function isTransientConnectError(err: unknown): boolean {
  const e = err as { code?: string; errno?: number };
  if (typeof e?.errno === 'number' && NOT_TRANSIENT_ERRNOS.has(e.errno)) return false;
  return (
    /^(ECONNREFUSED|ECONNRESET|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|ENOTFOUND|EAI_AGAIN|EPIPE|PROTOCOL_CONNECTION_LOST|ER_CON_COUNT_ERROR|ER_SERVER_SHUTDOWN)$/.test(
      e?.code ?? '',
    ) ||
    e?.errno === 1040 ||
    e?.errno === 1053
  );
}

function connectError(err: unknown, target: ConnectionTarget): WorkflowConfigError {
  const e = err as { message?: string; errno?: number; code?: string } | undefined;
  const where = `${target.host}:${target.port}`;
  const reason = e?.message ?? String(err);
  if (e?.errno === 3159 || /insecure transport|require_secure_transport/i.test(reason)) {
    return new TlsRequiredError(
      `WorkflowModule: the server at ${where} requires TLS (require_secure_transport) and refused a connection without it: ` +
        `set connection.ssl (e.g. { ca: readFileSync('ca.pem', 'utf8') }) or add ?ssl=true to connection.url. (${reason})`,
    );
  }
  if (e?.errno === 1049) {
    return new DatabaseUnreachableError(
      `WorkflowModule: the database '${target.database}' does not exist on ${where}: create it, or fix connection.database ` +
        `(or the path of connection.url). (${reason})`,
    );
  }
  if (e?.errno === 1045) {
    // MySQL reports a login without TLS to a server that requires it as 3159; MariaDB
    // (10.11 at least) as a plain 1045, indistinguishable from a wrong password.
    const tls =
      target.ssl === undefined
        ? ' The connection did not use TLS (connection.ssl is not set): if the server requires TLS ' +
          "(require_secure_transport=ON; MariaDB refuses such a login as 'Access denied'), set connection.ssl " +
          "(e.g. { ca: readFileSync('ca.pem', 'utf8') }) or add ?ssl=true to connection.url. Otherwise check"
        : ' Check';
    return new DatabaseUnreachableError(
      `WorkflowModule: the server at ${where} refused the login: ${reason}.${tls} connection.username and connection.password.`,
    );
  }
  if (/certificate|self[- ]signed|CERT_|unable to verify/i.test(`${e?.code ?? ''} ${reason}`)) {
    return new DatabaseUnreachableError(
      `WorkflowModule: the TLS certificate of ${where} was not accepted: ${reason}. Give the CA that signed it in ` +
        'connection.ssl.ca (or connection.url ?ssl={"ca":"..."}).',
    );
  }
  return new DatabaseUnreachableError(
    `WorkflowModule cannot reach MySQL/MariaDB at ${where}: ${reason}. Check WorkflowModuleOptions.connection and that the server is up.`,
  );
}
