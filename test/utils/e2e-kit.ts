/**
 * Extra helpers for the module / cancel / lifecycle e2e files. Kept apart from
 * app.ts, db.ts and wait.ts so those stay untouched.
 */
import type { ModuleMetadata, Provider } from '@nestjs/common';
import { Test, type TestingModule, type TestingModuleBuilder } from '@nestjs/testing';
import { WorkflowModule, type WorkflowModuleOptions } from 'nestjs-durable-workflow';
import { DB_URL, dropTables, rawConnection, uniquePrefix } from './db.js';

export interface KitAppOptions {
  prefix: string;
  providers?: Provider[];
  imports?: ModuleMetadata['imports'];
  options?: Partial<WorkflowModuleOptions>;
  worker?: WorkflowModuleOptions['worker'];
}

/** The options startApp() uses, so apps built here behave like the rest of the suite. */
export function kitOptions(o: KitAppOptions): WorkflowModuleOptions {
  return {
    connection: { url: DB_URL },
    tablePrefix: o.prefix,
    maxPayloadBytes: 1024 * 1024,
    worker: o.worker === undefined ? { pollIntervalMs: 50, leaseMs: 5_000, shutdownTimeoutMs: 2_000 } : o.worker,
    defaults: { backoff: { baseMs: 20, maxMs: 200 } },
    ...o.options,
  };
}

/** A testing-module builder (not compiled), for overrideProvider and compile-without-init. */
export function kitBuilder(o: KitAppOptions): TestingModuleBuilder {
  return Test.createTestingModule({
    imports: [WorkflowModule.forRoot(kitOptions(o)), ...(o.imports ?? [])],
    providers: o.providers ?? [],
  });
}

/** Every prefix a file used, so afterAll can drop them all. */
export class Prefixes {
  private readonly all: string[] = [];
  constructor(private readonly name: string) {}
  next(): string {
    const p = uniquePrefix(this.name);
    this.all.push(p);
    return p;
  }
  async dropAll(): Promise<void> {
    for (const p of this.all) await dropTables(p);
  }
}

/**
 * Asserts that `check` stays truthy for the whole window, polling it; fails as soon as
 * it turns falsy. The way to prove that something does NOT happen within a bounded time.
 */
export async function holdsFor(check: () => boolean | Promise<boolean>, ms: number, what: string, everyMs = 20): Promise<void> {
  const until = Date.now() + ms;
  for (;;) {
    if (!(await check())) throw new Error(`Expected to hold for ${ms} ms, but stopped holding: ${what}`);
    if (Date.now() >= until) return;
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export interface JobRowView {
  id: string;
  queue: string;
  kind: number;
  state: number;
  step_number: number;
  attempts: number;
  lease_token: string | null;
  /** ms from now (database clock) until the lease ends; null when not leased. */
  lease_left_ms: number | null;
}

/** The live queue rows of one run, straight from the table. */
export async function jobRows(prefix: string, runId: string): Promise<JobRowView[]> {
  const conn = await rawConnection();
  try {
    const [rows] = await conn.query(
      `SELECT id, queue, kind, state, step_number, attempts, lease_token,
              TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(3), lease_until) / 1000 AS lease_left_ms
         FROM \`${prefix}jobs\` WHERE run_id = ? ORDER BY id`,
      [runId],
    );
    return (rows as any[]).map((r) => ({
      ...r,
      kind: Number(r.kind),
      state: Number(r.state),
      step_number: Number(r.step_number),
      attempts: Number(r.attempts),
      lease_left_ms: r.lease_left_ms === null ? null : Number(r.lease_left_ms),
    }));
  } finally {
    await conn.end();
  }
}

/** Dead-letter rows of one run, straight from the table. */
export async function deadRows(prefix: string, runId: string): Promise<Array<{ job_id: string; attempts: number }>> {
  const conn = await rawConnection();
  try {
    const [rows] = await conn.query(`SELECT job_id, attempts FROM \`${prefix}dead\` WHERE run_id = ?`, [runId]);
    return (rows as any[]).map((r) => ({ job_id: r.job_id, attempts: Number(r.attempts) }));
  } finally {
    await conn.end();
  }
}

/** Runs `fn` and returns the error it throws (fails the test when it does not throw). */
export async function thrownBy(fn: () => Promise<unknown>): Promise<Error> {
  try {
    await fn();
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected the call to throw, but it resolved');
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
