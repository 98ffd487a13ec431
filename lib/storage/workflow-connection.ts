import { Inject, Injectable, Logger, type OnApplicationShutdown, type OnModuleInit } from '@nestjs/common';
import { ModuleRef } from '@nestjs/core';
import { DataSource } from 'typeorm';
import { WorkflowConfigError } from '../errors/workflow-config.error.js';
import type { ResolvedWorkflowConfig } from '../workflow.config.js';
import { WORKFLOW_CONFIG } from '../workflow.constants.js';
import { WorkflowRegistry } from '../workflow.registry.js';
import { migrate } from './schema/migrator.js';
import { SqlClient } from './sql-client.js';
import { WorkflowStorage } from './workflow.storage.js';

/**
 * Owns the way to the database: resolves or creates the DataSource, checks the server,
 * migrates, and hands out the storage. Started lazily and at onModuleInit, so a
 * user's own onModuleInit may already submit. Destroys only a DataSource it created.
 */
@Injectable()
export class WorkflowConnection implements OnModuleInit, OnApplicationShutdown {
  private readonly logger = new Logger('WorkflowModule');
  private starting?: Promise<WorkflowStorage>;
  private ownDataSource?: DataSource;
  private closed = false;
  storage?: WorkflowStorage;

  constructor(
    @Inject(WORKFLOW_CONFIG) private readonly config: ResolvedWorkflowConfig,
    private readonly moduleRef: ModuleRef,
    private readonly registry: WorkflowRegistry,
  ) {}

  async onModuleInit(): Promise<void> {
    await this.ready();
  }

  ready(): Promise<WorkflowStorage> {
    this.starting ??= this.start();
    return this.starting;
  }

  get dataSource(): DataSource | undefined {
    return this.storage?.client.dataSource;
  }

  private async start(): Promise<WorkflowStorage> {
    const dataSource = await this.resolveDataSource();
    try {
      return await this.prepare(dataSource);
    } catch (err) {
      // A failed start must not leave our own pool open (it would keep the process alive).
      if (this.ownDataSource?.isInitialized) await this.ownDataSource.destroy().catch(() => undefined);
      throw err;
    }
  }

  private async prepare(dataSource: DataSource): Promise<WorkflowStorage> {
    const type = (dataSource.options as { type?: string }).type;
    if (type !== 'mysql' && type !== 'mariadb') {
      throw new WorkflowConfigError(
        `WorkflowModule needs a MySQL or MariaDB DataSource (type 'mysql' or 'mariadb'), got type '${type}'.`,
      );
    }
    const client = new SqlClient(dataSource, dataSource === this.ownDataSource);
    await this.checkServer(client);
    const prefix = this.config.tablePrefix;
    const now = () => this.config.clock.now();
    if (this.config.autoMigrate) {
      await migrate(client, prefix, now);
    } else {
      await client.query(`SELECT 1 FROM \`${prefix}jobs\` LIMIT 0`).catch((err) => {
        throw new WorkflowConfigError(
          `autoMigrate is off and the workflow tables ("${prefix}jobs"...) are missing (${(err as Error).message}). ` +
            'Run the migrations from createWorkflowMigrations(tablePrefix) / WORKFLOW_MIGRATIONS, or set autoMigrate: true.',
        );
      });
    }
    this.storage = new WorkflowStorage(client, prefix, now, this.registry);
    return this.storage;
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
        throw new WorkflowConfigError(
          `WorkflowModule: no TypeORM DataSource named "${dataSource}". Register it with TypeOrmModule.forRoot({ name: '${dataSource}', ... }) ` +
            'or pass the DataSource object.',
        );
      }
      return this.initialized(found);
    }
    if (dataSource) return this.initialized(dataSource);

    const c = connection!;
    const ds = new DataSource({
      type: 'mysql',
      url: c.url,
      host: c.host ?? (c.url ? undefined : '127.0.0.1'),
      port: c.port ?? (c.url ? undefined : 3306),
      username: c.username ?? (c.url ? undefined : 'root'),
      password: c.password,
      database: c.database,
      poolSize: c.poolSize ?? 10,
      supportBigNumbers: true,
      bigNumberStrings: false,
      // Lets a settlement send its statements in one round trip. Every statement is
      // parameterized, so this widens nothing an attacker could reach.
      multipleStatements: true,
      logging: false,
    } as any);
    let lastError: unknown;
    for (let attempt = 1; attempt <= 3; attempt++) {
      try {
        await ds.initialize();
        this.ownDataSource = ds;
        return ds;
      } catch (err) {
        lastError = err;
        if (attempt < 3) await new Promise((r) => setTimeout(r, 500 * attempt));
      }
    }
    const where = c.url ? c.url.replace(/\/\/([^:@/]*):[^@/]*@/, '//$1:***@') : `${c.host ?? '127.0.0.1'}:${c.port ?? 3306}`;
    throw new WorkflowConfigError(
      `WorkflowModule cannot reach MySQL/MariaDB at ${where}: ${(lastError as Error)?.message}. Check WorkflowModuleOptions.connection and that the server is up.`,
    );
  }

  private async initialized(ds: DataSource): Promise<DataSource> {
    if (!(ds instanceof DataSource) && typeof (ds as any)?.initialize !== 'function') {
      throw new WorkflowConfigError('WorkflowModule: `dataSource` must be a TypeORM DataSource or the name of one.');
    }
    if (!ds.isInitialized) {
      // Not ours to destroy: the app that made it owns its lifetime.
      await ds.initialize();
    }
    return ds;
  }

  /** Needs FOR UPDATE SKIP LOCKED: MySQL 8.0.1+, MariaDB 10.6+. */
  private async checkServer(client: SqlClient): Promise<void> {
    const [{ version, packet }] = await client.query<Array<{ version: string; packet: number | string }>>(
      'SELECT VERSION() AS version, @@max_allowed_packet AS packet',
    );
    const mariadb = /mariadb/i.test(version);
    const [major, minor] = version.split(/[.-]/).map((x) => Number.parseInt(x, 10));
    const ok = mariadb ? major > 10 || (major === 10 && minor >= 6) : major >= 8;
    if (!ok) {
      throw new WorkflowConfigError(
        `WorkflowModule needs MySQL 8.0+ or MariaDB 10.6+ (for FOR UPDATE SKIP LOCKED); this server is ${version}.`,
      );
    }
    if (Number(packet) < this.config.maxPayloadBytes) {
      this.logger.warn(
        `max_allowed_packet (${packet} bytes) is not above maxPayloadBytes (${this.config.maxPayloadBytes}): ` +
          'payloads near the limit will be refused by the server. Raise max_allowed_packet or lower maxPayloadBytes.',
      );
    }
  }

  async onApplicationShutdown(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.starting?.catch(() => undefined);
    if (this.ownDataSource?.isInitialized) await this.ownDataSource.destroy();
  }
}
