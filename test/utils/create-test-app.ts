/**
 * The one way e2e specs build a Nest app with WorkflowModule on the local database, so
 * every file runs with the same short intervals and small backoff.
 */
import type { ModuleMetadata, Provider } from '@nestjs/common';
import { Test, type TestingModule, type TestingModuleBuilder } from '@nestjs/testing';
import { WorkflowModule, type WorkflowModuleOptions } from 'nestjs-durable-workflow';
import { DB_URL } from './db.js';

export interface TestAppOptions {
  prefix: string;
  providers?: Provider[];
  imports?: ModuleMetadata['imports'];
  /** Merged over the test defaults (last wins), so a spec can swap `connection` for `dataSource`. */
  options?: Partial<WorkflowModuleOptions>;
  /** Replaces the fast test worker settings; `false` for a submit-only app. */
  worker?: WorkflowModuleOptions['worker'];
}

/** The module options of every test app: short polls and leases, so specs finish in seconds. */
export function testOptions(o: TestAppOptions): WorkflowModuleOptions {
  return {
    connection: { url: DB_URL },
    tablePrefix: o.prefix,
    maxPayloadBytes: 1024 * 1024,
    worker: o.worker === undefined ? { pollIntervalMs: 50, leaseMs: 5_000, shutdownTimeoutMs: 2_000 } : o.worker,
    defaults: { backoff: { baseMs: 20, maxMs: 200 } },
    ...o.options,
  };
}

/** The app's builder, not compiled: for overrideProvider, or to compile without init. */
export function testBuilder(o: TestAppOptions): TestingModuleBuilder {
  return Test.createTestingModule({
    imports: [WorkflowModule.forRoot(testOptions(o)), ...(o.imports ?? [])],
    providers: o.providers ?? [],
  });
}

/** The app compiled and initialized: connected, migrated, runners discovered. */
export async function startApp(o: TestAppOptions): Promise<TestingModule> {
  const moduleRef = await testBuilder(o).compile();
  await moduleRef.init();
  return moduleRef;
}

/**
 * Compiles and inits an app that is expected to fail at startup; whatever got as far as
 * opening resources is closed again, and the startup error is returned.
 */
export async function startupError(build: () => TestingModuleBuilder): Promise<Error> {
  let app: TestingModule | undefined;
  try {
    app = await build().compile();
    await app.init();
  } catch (err) {
    await app?.close().catch(() => undefined);
    return err as Error;
  }
  await app.close().catch(() => undefined);
  throw new Error('expected the app to fail at startup, but it started');
}
