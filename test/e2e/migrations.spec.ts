import { Injectable } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import { DataSource } from 'typeorm';
import {
  createWorkflowMigrations,
  type Step,
  StepOutcome,
  StepRunner,
  WorkflowConfigError,
  WorkflowService,
} from 'nestjs-durable-workflow';
import { startApp } from '../utils/create-test-app.js';
import { DB_URL, dropTables, rawConnection, uniquePrefix } from '../utils/db.js';
import { waitFor } from '../utils/wait.js';

describe('schema migrations', () => {
  const apps: TestingModule[] = [];
  const prefixes: string[] = [];
  afterAll(async () => {
    await Promise.all(apps.map((a) => a.close()));
    for (const p of prefixes) await dropTables(p);
  });

  async function versions(prefix: string): Promise<number[]> {
    const conn = await rawConnection();
    try {
      const [rows] = await conn.query(`SELECT version FROM \`${prefix}migrations\` ORDER BY version`);
      return (rows as Array<{ version: number }>).map((r) => Number(r.version));
    } finally {
      await conn.end();
    }
  }

  it('N processes booting at once on an empty database apply each version exactly once', async () => {
    const prefix = uniquePrefix('migr');
    prefixes.push(prefix);
    apps.push(...(await Promise.all(Array.from({ length: 4 }, () => startApp({ prefix, worker: false })))));
    expect(await versions(prefix)).toEqual([1, 2, 3, 4]);
  });

  it('the exported TypeORM migrations create the same schema for apps that run their own (autoMigrate: false)', async () => {
    const prefix = uniquePrefix('tomig');
    prefixes.push(prefix);
    await expect(startApp({ prefix, worker: false, options: { autoMigrate: false } })).rejects.toThrow(
      WorkflowConfigError,
    );

    const ds = new DataSource({
      type: 'mysql',
      url: DB_URL,
      migrations: createWorkflowMigrations(prefix),
      migrationsTableName: `${prefix}typeorm_migrations`,
    });
    await ds.initialize();
    try {
      const applied = await ds.runMigrations();
      expect(applied.length).toBeGreaterThanOrEqual(2);
      await ds.query(`DROP TABLE \`${prefix}typeorm_migrations\``);
    } finally {
      await ds.destroy();
    }
    expect(await versions(prefix)).toEqual([1, 2, 3, 4]);
    apps.push(await startApp({ prefix, worker: false, options: { autoMigrate: false } }));
  });
});

describe('a migration cut off by a crash', () => {
  it('runs again over a half-applied version (DDL is not transactional) and completes it', async () => {
    const prefix = uniquePrefix('halfmig');
    const app = await startApp({ prefix, worker: false });
    await app.close();
    const conn = await rawConnection();
    try {
      // As if the process died after v3's first ALTER, before recording the version.
      await conn.query(`ALTER TABLE \`${prefix}runs\` DROP COLUMN \`ending\``);
      await conn.query(`DELETE FROM \`${prefix}migrations\` WHERE version = 3`);
      const again = await startApp({ prefix, worker: false });
      await again.close();
      const [cols] = await conn.query(`SHOW COLUMNS FROM \`${prefix}runs\` WHERE Field IN ('submit_key', 'ending')`);
      expect((cols as unknown[]).length).toBe(2);
      const [rows] = await conn.query(`SELECT version FROM \`${prefix}migrations\` ORDER BY version`);
      expect((rows as Array<{ version: number }>).map((r) => Number(r.version))).toEqual([1, 2, 3, 4]);
    } finally {
      await conn.end();
      await dropTables(prefix);
    }
  });
});

describe('autoMigrate: false on an older schema', () => {
  it('refuses to start, naming the missing version, instead of failing at the first statement', async () => {
    const prefix = uniquePrefix('oldschema');
    const app = await startApp({ prefix, worker: false });
    await app.close();
    const conn = await rawConnection();
    try {
      await conn.query(`DELETE FROM \`${prefix}migrations\` WHERE version = 3`);
      const err = await startApp({ prefix, worker: false, options: { autoMigrate: false } }).then(
        () => undefined,
        (e: Error) => e,
      );
      expect(err).toBeInstanceOf(WorkflowConfigError);
      expect(err?.message).toMatch(/lacks version\(s\) 3/);
    } finally {
      await conn.end();
      await dropTables(prefix);
    }
  });
});

@Injectable()
@StepRunner('seeded')
class SeededRunner {
  runStep(step: Step<{ wait: boolean }>) {
    return step.payload.wait ? StepOutcome.waitForSignal('go', step.payload) : StepOutcome.succeed(1);
  }
}

describe('version 4 on a database that already has runs', () => {
  it('counts the runs already there, once, even when it runs again after a crash', async () => {
    const prefix = uniquePrefix('seedmig');
    const app = await startApp({ prefix, providers: [SeededRunner] });
    const service = app.get(WorkflowService);
    const ids = [];
    for (const wait of [false, false, false, true])
      ids.push((await service.submit('seeded', { input: { wait } })).runId);
    await waitFor(
      async () => (await Promise.all(ids.map((id) => service.status(id)))).every((s) => s && s.state !== 'pending'),
      'the runs to succeed or wait',
    );
    await app.close();
    const conn = await rawConnection();
    try {
      const counts = async () => {
        const again = await startApp({ prefix, worker: false });
        try {
          return (await again.get(WorkflowService).countRuns()).find((c) => c.workflow === 'seeded');
        } finally {
          await again.close();
        }
      };
      // As the 0.1 schema was: runs, no counts of them.
      await conn.query(`DELETE FROM \`${prefix}counts\``);
      await conn.query(`DELETE FROM \`${prefix}migrations\` WHERE version = 4`);
      const seeded = await counts();
      expect([seeded?.states.succeeded, seeded?.states.waiting, seeded?.total]).toEqual([3, 1, 4]);
      // Cut off after the seed, before the version was recorded: the seed is not added twice.
      await conn.query(`DELETE FROM \`${prefix}migrations\` WHERE version = 4`);
      const rerun = await counts();
      expect([rerun?.states.succeeded, rerun?.states.waiting, rerun?.total]).toEqual([3, 1, 4]);
    } finally {
      await conn.end();
      await dropTables(prefix);
    }
  });
});
