import { type ModuleMetadata, type Provider } from '@nestjs/common';
import { Test, type TestingModule } from '@nestjs/testing';
import { WorkflowModule, type WorkflowModuleOptions } from 'nestjs-durable-workflow';
import { DB_URL } from './db.js';

export interface TestAppOptions {
  prefix: string;
  providers?: Provider[];
  imports?: ModuleMetadata['imports'];
  options?: Partial<WorkflowModuleOptions>;
  worker?: WorkflowModuleOptions['worker'];
}

/** A real Nest app with WorkflowModule on the local database, started (init) and ready. */
export async function startApp(o: TestAppOptions): Promise<TestingModule> {
  const moduleRef = await Test.createTestingModule({
    imports: [
      WorkflowModule.forRoot({
        connection: { url: DB_URL },
        tablePrefix: o.prefix,
        maxPayloadBytes: 1024 * 1024,
        worker: o.worker === undefined ? { pollIntervalMs: 50, leaseMs: 5_000, shutdownTimeoutMs: 2_000 } : o.worker,
        defaults: { backoff: { baseMs: 20, maxMs: 200 } },
        ...o.options,
      }),
      ...(o.imports ?? []),
    ],
    providers: o.providers ?? [],
  }).compile();
  await moduleRef.init();
  return moduleRef;
}
